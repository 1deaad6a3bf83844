//! A model's parameters by path, as burn's visitor names them: struct fields and Vec indices
//! joined by `.` (`net.ImageNetResNet.stem.bn.running_mean`). Every walk over a model that needs
//! the path goes through [`visit_with_paths`] or [`map_with_paths`].

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

/// Sees every float parameter (BatchNorm running statistics included) and training flag with its path.
pub trait PathVisitor {
    fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>);

    fn visit_flag(&mut self, _path: &str, _flag: &Param<Flag>) {}
}

/// Replaces float parameters (and training flags), knowing their paths.
pub trait PathMapper {
    fn map_float<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>>;

    fn map_flag(&mut self, _path: &str, flag: Param<Flag>) -> Param<Flag> {
        flag
    }
}

/// Tracks the path while burn walks the module tree.
struct WithPath<T> {
    path: Vec<String>,
    inner: T,
}

impl<T> WithPath<T> {
    fn new(inner: T) -> Self {
        Self { path: Vec::new(), inner }
    }
}

impl<V: PathVisitor> ModuleVisitor for WithPath<V> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.inner.visit_float(&self.path.join("."), param);
    }
    fn visit_flag(&mut self, flag: &Param<Flag>) {
        self.inner.visit_flag(&self.path.join("."), flag);
    }
}

impl<M: PathMapper> ModuleMapper for WithPath<M> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.inner.map_float(&self.path.join("."), param)
    }
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        self.inner.map_flag(&self.path.join("."), flag)
    }
}

/// A parameter path as `summary` names it: without `net.<Family>.` (`head.` paths stay).
pub fn summary_path(path: &str) -> &str {
    match path.strip_prefix("net.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, p)| p),
        None => path,
    }
}

/// Walks `model` with `visitor` and gives the visitor back.
pub fn visit_with_paths<M: Module, V: PathVisitor>(model: &M, visitor: V) -> V {
    let mut walk = WithPath::new(visitor);
    model.visit(&mut walk);
    walk.inner
}

/// Maps `model` with `mapper`; returns the new model and the mapper.
pub fn map_with_paths<M: Module, P: PathMapper>(model: M, mapper: P) -> (M, P) {
    let mut walk = WithPath::new(mapper);
    let model = model.map(&mut walk);
    (model, walk.inner)
}

/// A parameter (or a module's training flag) with its path.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedParam {
    pub path: String,
    pub id: ParamId,
    /// The tensor shape; `None` for a training flag (BatchNorm's `training`).
    pub shape: Option<Vec<usize>>,
}

/// Every float parameter and training flag of a module, in visiting order, without initializing
/// lazy parameters.
pub fn named_params<M: Module>(model: &M) -> Vec<NamedParam> {
    struct Collect(Vec<NamedParam>);
    impl PathVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            self.0.push(NamedParam { path: path.to_string(), id: param.id, shape: Some(param.lazy_shape().to_vec()) });
        }
        fn visit_flag(&mut self, path: &str, flag: &Param<Flag>) {
            self.0.push(NamedParam { path: path.to_string(), id: flag.id, shape: None });
        }
    }
    visit_with_paths(model, Collect(Vec::new())).0
}

/// `model` with every parameter id derived from the parameter's path instead of drawn at random:
/// checkpoints of two runs with one seed are then identical byte for byte, ids included.
pub fn with_stable_ids<M: Module>(model: M) -> M {
    struct StableIds;
    impl PathMapper for StableIds {
        fn map_float<const D: usize>(&mut self, path: &str, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.id = stable_id(path, "float");
            param
        }
        fn map_flag(&mut self, path: &str, mut flag: Param<Flag>) -> Param<Flag> {
            flag.id = stable_id(path, "flag");
            flag
        }
    }
    map_with_paths(model, StableIds).0
}

/// FNV-1a of `kind` and `path`: fixed across runs, builds and platforms.
pub(super) fn stable_id(path: &str, kind: &str) -> ParamId {
    let hash =
        kind.bytes().chain([0]).chain(path.bytes()).fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    ParamId::from(hash)
}

/// Trainable parameters counted the way torchvision counts them: BatchNorm running statistics are
/// buffers, not parameters (burn visits them like parameters, so they are skipped by name).
pub fn trainable_params<M: Module>(model: &M) -> usize {
    named_params(model)
        .into_iter()
        .filter(|p| !is_running_statistic(&p.path))
        .filter_map(|p| p.shape.map(|s| s.iter().product::<usize>()))
        .sum()
}

/// A model's parameters counted as torchvision counts them, split by whether they train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    pub trainable: usize,
    /// Frozen parameters (`requires_grad = False`): a fine-tune's fixed backbone.
    pub frozen: usize,
}

/// Trainable and frozen parameters of a model on an autodiff device (where freezing is recorded
/// on the tensors), BatchNorm running statistics excluded. Initializes lazy parameters.
pub fn param_counts<M: Module>(model: &M) -> ParamCounts {
    struct Count(ParamCounts);
    impl PathVisitor for Count {
        fn visit_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            if is_running_statistic(path) {
                return;
            }
            let tensor = param.val();
            let n = tensor.shape().num_elements();
            if tensor.is_require_grad() { self.0.trainable += n } else { self.0.frozen += n }
        }
    }
    visit_with_paths(model, Count(ParamCounts::default())).0
}

/// BatchNorm's running mean and variance: buffers in PyTorch, parameters to burn's visitor.
fn is_running_statistic(path: &str) -> bool {
    path.rsplit('.').next().is_some_and(|leaf| leaf.starts_with("running_"))
}

/// `1234567` as `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
