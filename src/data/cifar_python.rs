//! The official CIFAR-10 and CIFAR-100 python releases. CIFAR-10 (`cifar-10-batches-py/`): each
//! batch is a pickled dict with `data` (a numpy uint8 array, one planar 3072-byte image per row)
//! and `labels` (a list of ints); `batches.meta` holds `label_names`. CIFAR-100
//! (`cifar-100-python/`): `train` and `test` hold `data`, `fine_labels` and `coarse_labels`;
//! `meta` holds `fine_label_names` and `coarse_label_names`.
//!
//! The pickle reader understands what these files need: Python 2 cPickle protocol 2 as in the
//! official files, and protocols 2-5 as Python 3 writes the same dicts.

use std::collections::HashMap;

use super::cifar_binary::{IMAGE_BYTES, NamedBytes, ReleaseLayout, push_planar_record};
use super::{CIFAR10_CLASSES, DataFormat, FileError, ImageSet, Result};

pub const CIFAR10_PYTHON: ReleaseLayout = ReleaseLayout {
    format: DataFormat::CifarPython,
    name: "CIFAR-10",
    train_batches: &["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
    test_batches: &["test_batch"],
    meta_names: ["batches.meta"; 2],
    default_classes: Some(&CIFAR10_CLASSES),
    read_class_names: |meta, _| read_label_names(meta, "label_names"),
    decode_batch: |batch, set, num_classes, _| decode_pickled_batch(batch, set, num_classes, "labels"),
};

pub const CIFAR100_PYTHON: ReleaseLayout = ReleaseLayout {
    format: DataFormat::Cifar100Python,
    name: "CIFAR-100",
    train_batches: &["train"],
    test_batches: &["test"],
    meta_names: ["meta"; 2],
    default_classes: None,
    read_class_names: |meta, labels| read_label_names(meta, &format!("{}_label_names", labels.name())),
    decode_batch: |batch, set, num_classes, labels| decode_pickled_batch(batch, set, num_classes, &format!("{}_labels", labels.name())),
};

/// The pickled dict of a batch or meta file.
fn unpickle_dict(file: &NamedBytes) -> Result<Vec<(Value, Value)>> {
    match unpickle(&file.bytes).map_err(|message| FileError::invalid(&file.path, message))? {
        Value::Dict(items) => Ok(items),
        other => Err(FileError::invalid(&file.path, format!("expected a pickled dict, found {}", other.kind()))),
    }
}

/// Appends the images of a batch pickle, labelled by its list `labels_key`.
fn decode_pickled_batch(batch: &NamedBytes, set: &mut ImageSet, num_classes: usize, labels_key: &str) -> Result<()> {
    let invalid = |message: String| FileError::invalid(&batch.path, message);
    let batch_dict = unpickle_dict(batch)?;
    let data = match dict_get(&batch_dict, "data") {
        Some(Value::Array(array)) => array,
        Some(other) => return Err(invalid(format!("`data`: expected a numpy uint8 array, found {}", other.kind()))),
        None => return Err(invalid("missing key `data`".into())),
    };
    let labels = int_list(&batch_dict, labels_key).map_err(invalid)?;
    if !matches!(data.dtype.as_str(), "u1" | "uint8") || data.fortran_order {
        return Err(invalid(format!("`data`: expected a C-ordered uint8 array, found dtype {}", data.dtype)));
    }
    let count = labels.len();
    if data.shape != [count, IMAGE_BYTES] || data.bytes.len() != count * IMAGE_BYTES {
        return Err(invalid(format!(
            "`data` has shape {:?} ({} bytes), expected ({count}, {IMAGE_BYTES}) for {count} labels",
            data.shape,
            data.bytes.len()
        )));
    }
    set.pixels.reserve(data.bytes.len());
    for (index, (planar, &label)) in data.bytes.chunks_exact(IMAGE_BYTES).zip(&labels).enumerate() {
        push_planar_record(set, &batch.path, index, label, planar, num_classes)?;
    }
    Ok(())
}

/// The class names in the list `key` of a meta pickle.
fn read_label_names(meta: &NamedBytes, key: &str) -> Result<Vec<String>> {
    let meta_dict = unpickle_dict(meta)?;
    let invalid = |message: String| FileError::invalid(&meta.path, message);
    let Some(Value::List(names)) = dict_get(&meta_dict, key) else {
        return Err(invalid(format!("missing list `{key}`")));
    };
    names.iter().map(|name| name.as_text().ok_or_else(|| invalid(format!("`{key}`: expected strings, found {}", name.kind())))).collect()
}

/// The ints of the list `key` in `dict`.
fn int_list(dict: &[(Value, Value)], key: &str) -> std::result::Result<Vec<i64>, String> {
    let Some(Value::List(items)) = dict_get(dict, key) else {
        return Err(format!("missing list `{key}`"));
    };
    items
        .iter()
        .map(|item| match item {
            Value::Int(v) => Ok(*v),
            other => Err(format!("`{key}`: expected ints, found {}", other.kind())),
        })
        .collect()
}

/// The value under the string key `key` (a byte string under Python 2, text under Python 3).
fn dict_get<'a>(dict: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    dict.iter().find(|(k, _)| k.as_text().as_deref() == Some(key)).map(|(_, v)| v)
}

/// The objects these pickles are made of.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A reference to a Python function or class, to be called by REDUCE.
    Global {
        module: String,
        name: String,
    },
    Dtype(String),
    Array(NdArray),
}

#[derive(Clone, Debug, Default, PartialEq)]
struct NdArray {
    shape: Vec<usize>,
    dtype: String,
    fortran_order: bool,
    bytes: Vec<u8>,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Bytes(_) => "bytes",
            Value::Text(_) => "a string",
            Value::List(_) => "a list",
            Value::Tuple(_) => "a tuple",
            Value::Dict(_) => "a dict",
            Value::Global { .. } => "a class or function",
            Value::Dtype(_) => "a numpy dtype",
            Value::Array(_) => "a numpy array",
        }
    }

    fn as_text(&self) -> Option<String> {
        match self {
            Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::Text(text) => Some(text.clone()),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
}

type PickleResult<T> = std::result::Result<T, String>;

/// Reads one pickled object.
fn unpickle(bytes: &[u8]) -> PickleResult<Value> {
    Unpickler { bytes, position: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
}

struct Unpickler<'a> {
    bytes: &'a [u8],
    position: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    /// Copies of memoized objects: enough here, as these files never change an object after
    /// fetching it back from the memo.
    memo: HashMap<u32, Value>,
}

impl Unpickler<'_> {
    fn run(mut self) -> PickleResult<Value> {
        loop {
            let at = self.position;
            let opcode = self.take(1)?[0];
            match opcode {
                // PROTO (version), FRAME (a length hint)
                0x80 => _ = self.take(1)?,
                0x95 => _ = self.take(8)?,
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    // INT, text: Python 2 writes booleans as "01"/"00"
                    let line = self.line()?;
                    let value = match line.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        text => Value::Int(text.parse().map_err(|_| format!("bad INT {text:?} at byte {at}"))?),
                    };
                    self.stack.push(value);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()))
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = usize::from(self.take(1)?[0]);
                    if n > 8 {
                        return Err(format!("integer of {n} bytes at byte {at} is too large"));
                    }
                    let digits = self.take(n)?;
                    let mut buffer = if digits.last().is_some_and(|&b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buffer[..n].copy_from_slice(digits);
                    self.stack.push(Value::Int(i64::from_le_bytes(buffer)));
                }
                b'U' | b'C' => {
                    // SHORT_BINSTRING (Python 2 str), SHORT_BINBYTES
                    let n = usize::from(self.take(1)?[0]);
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                b'T' | b'B' => {
                    // BINSTRING (Python 2 str), BINBYTES
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                0x8e | 0x96 => {
                    // BINBYTES8, BYTEARRAY8
                    let n = self.length_u64()?;
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                0x8c => {
                    let n = usize::from(self.take(1)?[0]);
                    self.push_text(n, at)?
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    self.push_text(n, at)?
                }
                0x8d => {
                    let n = self.length_u64()?;
                    self.push_text(n, at)?
                }
                b'c' => {
                    // GLOBAL: "module\nname\n"
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Text(module), Value::Text(name)) = (module, name) else {
                        return Err(format!("STACK_GLOBAL at byte {at} expects two strings"));
                    };
                    self.stack.push(Value::Global { module, name });
                }
                b'q' => {
                    let key = self.take(1)?[0];
                    self.memoize(key.into())?
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.memoize(key)?
                }
                0x94 => self.memoize(self.memo.len() as u32)?,
                b'h' => {
                    let key = self.take(1)?[0];
                    self.fetch_memo(key.into(), at)?
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.fetch_memo(key, at)?
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    // TUPLE1, TUPLE2, TUPLE3
                    let n = usize::from(opcode - 0x84);
                    let start = self.stack.len().checked_sub(n).ok_or_else(|| self.underflow())?;
                    let items = self.stack.split_off(start);
                    self.stack.push(Value::Tuple(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item], at)?
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    self.extend_list(items, at)?
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![key, value], at)?
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    self.extend_dict(items, at)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = call(callable, args).map_err(|e| format!("{e} (REDUCE at byte {at})"))?;
                    self.stack.push(result);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.stack.last_mut().ok_or_else(|| format!("BUILD at byte {at} on an empty stack"))?;
                    build(target, state).map_err(|e| format!("{e} (BUILD at byte {at})"))?;
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
            }
        }
    }

    fn take(&mut self, n: usize) -> PickleResult<&[u8]> {
        let end =
            self.position.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
                format!("truncated pickle: needs {n} bytes at byte {} but the file has {}", self.position, self.bytes.len())
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> PickleResult<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn length_u64(&mut self) -> PickleResult<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| format!("length {n} at byte {} is too large", self.position))
    }

    fn line(&mut self) -> PickleResult<String> {
        let rest = &self.bytes[self.position..];
        let length = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle: unterminated line")?;
        let text = String::from_utf8_lossy(&rest[..length]).into_owned();
        self.position += length + 1;
        Ok(text)
    }

    fn push_text(&mut self, n: usize, at: usize) -> PickleResult<()> {
        let text = std::str::from_utf8(self.take(n)?).map_err(|_| format!("invalid UTF-8 string at byte {at}"))?.to_string();
        self.stack.push(Value::Text(text));
        Ok(())
    }

    fn underflow(&self) -> String {
        format!("corrupt pickle: stack underflow at byte {}", self.position)
    }

    fn pop(&mut self) -> PickleResult<Value> {
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn pop_to_mark(&mut self) -> PickleResult<Vec<Value>> {
        let mark = self.marks.pop().filter(|&m| m <= self.stack.len()).ok_or_else(|| self.underflow())?;
        Ok(self.stack.split_off(mark))
    }

    fn memoize(&mut self, key: u32) -> PickleResult<()> {
        let top = self.stack.last().ok_or_else(|| self.underflow())?.clone();
        self.memo.insert(key, top);
        Ok(())
    }

    fn fetch_memo(&mut self, key: u32, at: usize) -> PickleResult<()> {
        let value = self.memo.get(&key).ok_or_else(|| format!("corrupt pickle: memo {key} at byte {at} was never stored"))?;
        self.stack.push(value.clone());
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<Value>, at: usize) -> PickleResult<()> {
        let Some(Value::List(list)) = self.stack.last_mut() else {
            return Err(format!("corrupt pickle: APPEND at byte {at} without a list"));
        };
        list.extend(items);
        Ok(())
    }

    fn extend_dict(&mut self, items: Vec<Value>, at: usize) -> PickleResult<()> {
        let Some(Value::Dict(dict)) = self.stack.last_mut() else {
            return Err(format!("corrupt pickle: SETITEM at byte {at} without a dict"));
        };
        if !items.len().is_multiple_of(2) {
            return Err(format!("corrupt pickle: odd number of items for SETITEMS at byte {at}"));
        }
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            dict.push((key, value));
        }
        Ok(())
    }
}

/// REDUCE: the few callables that numpy arrays and Python 3's protocol-2 bytes are made with.
fn call(callable: Value, args: Value) -> PickleResult<Value> {
    let (Value::Global { module, name }, Value::Tuple(mut args)) = (callable, args) else {
        return Err("REDUCE expects a class or function and a tuple".into());
    };
    let bad_args = || format!("unexpected arguments to {module}.{name}");
    match (module.as_str(), name.as_str()) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Ok(Value::Array(NdArray::default())),
        ("numpy", "dtype") => args.first().and_then(Value::as_text).map(Value::Dtype).ok_or_else(bad_args),
        ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => {
            // _frombuffer(buffer, dtype, shape, order)
            if args.len() != 4 {
                return Err(bad_args());
            }
            let order = args.pop().and_then(|o| o.as_text());
            let shape = args.pop().and_then(|s| shape(&s)).ok_or_else(bad_args)?;
            let (Some(Value::Dtype(dtype)), Some(Value::Bytes(bytes))) = (args.pop(), args.pop()) else {
                return Err(bad_args());
            };
            Ok(Value::Array(NdArray { shape, dtype, fortran_order: order.as_deref() == Some("F"), bytes }))
        }
        ("_codecs", "encode") => {
            // Python 3 writes bytes in protocol 2 as encode(text, "latin1").
            let Some(Value::Text(text)) = args.first() else { return Err(bad_args()) };
            text.chars().map(|c| u8::try_from(c).map_err(|_| bad_args())).collect::<PickleResult<_>>().map(Value::Bytes)
        }
        _ => Err(format!("unsupported object {module}.{name}")),
    }
}

/// BUILD: sets the state of a numpy array made by `_reconstruct`; dtype state is not needed
/// for uint8.
fn build(target: &mut Value, state: Value) -> PickleResult<()> {
    match (target, state) {
        (Value::Dtype(_), _) => Ok(()),
        (Value::Array(target), Value::Tuple(mut state)) if state.len() >= 4 => {
            // (version, shape, dtype, is_fortran, raw data), version optional
            let bytes = state.pop();
            let fortran_order = state.pop().and_then(|f| f.as_int()).map(|f| f != 0);
            let dtype = state.pop();
            let shape = state.pop().and_then(|s| shape(&s));
            let (Some(Value::Bytes(bytes)), Some(fortran_order), Some(Value::Dtype(dtype)), Some(shape)) =
                (bytes, fortran_order, dtype, shape)
            else {
                return Err("unexpected numpy array state (not a plain numeric array?)".into());
            };
            *target = NdArray { shape, dtype, fortran_order, bytes };
            Ok(())
        }
        (target, _) => Err(format!("cannot set the state of {}", target.kind())),
    }
}

fn shape(value: &Value) -> Option<Vec<usize>> {
    let Value::Tuple(dims) = value else { return None };
    dims.iter().map(|d| d.as_int().and_then(|d| usize::try_from(d).ok())).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::CIFAR10_CLASSES;
    use crate::data::archive::Source;
    use crate::data::archive::tests::{write_folder, write_tar_gz};
    use crate::data::cifar_binary::load_release;
    use crate::data::cifar_binary::tests::{
        assert_synthetic_release, assert_synthetic_release100, cifar100_names, synthetic_fine_label, synthetic_image, synthetic_label,
    };
    use crate::data::{Dataset, LabelLevel};

    /// Writes pickles in the byte layout of Python 2's cPickle, protocol 2, as the official
    /// files have it.
    struct Py2Pickler {
        out: Vec<u8>,
        next_memo: u32,
    }

    impl Py2Pickler {
        fn new() -> Self {
            Self { out: vec![0x80, 2], next_memo: 0 }
        }

        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.out.extend_from_slice(bytes);
            self
        }

        /// BINPUT / LONG_BINPUT of the top of the stack.
        fn put(&mut self) -> &mut Self {
            let key = self.next_memo;
            self.next_memo += 1;
            match u8::try_from(key) {
                Ok(key) => self.op(&[b'q', key]),
                Err(_) => self.op(b"r").op(&key.to_le_bytes()),
            }
        }

        fn string(&mut self, bytes: &[u8]) -> &mut Self {
            match u8::try_from(bytes.len()) {
                Ok(n) => self.op(&[b'U', n]),
                Err(_) => self.op(b"T").op(&(bytes.len() as u32).to_le_bytes()),
            };
            self.op(bytes).put()
        }

        fn int(&mut self, value: u32) -> &mut Self {
            match (u8::try_from(value), u16::try_from(value)) {
                (Ok(v), _) => self.op(&[b'K', v]),
                (_, Ok(v)) => self.op(b"M").op(&v.to_le_bytes()),
                _ => self.op(b"J").op(&value.to_le_bytes()),
            }
        }

        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes()).put()
        }

        /// A list, appended in runs of 1000 as cPickle does.
        fn list(&mut self, items: &[Vec<u8>], mut write_item: impl FnMut(&mut Self, &[u8])) -> &mut Self {
            self.op(b"]").put();
            for run in items.chunks(1000) {
                self.op(b"(");
                for item in run {
                    write_item(self, item);
                }
                self.op(b"e");
            }
            self
        }

        /// A numpy uint8 array of `rows` x `columns`, as numpy's `__reduce__` pickles it.
        fn uint8_array(&mut self, rows: u32, columns: u32, data: &[u8]) -> &mut Self {
            self.global("numpy.core.multiarray", "_reconstruct").global("numpy", "ndarray");
            self.int(0).op(&[0x85]).string(b"b").op(&[0x87, b'R']).put();
            self.op(b"(").int(1).int(rows).int(columns).op(&[0x86]);
            self.global("numpy", "dtype").string(b"u1").int(0).int(1).op(&[0x87, b'R']).put();
            self.op(b"(").int(3).string(b"|").op(b"NNN").op(b"J").op(&(-1i32).to_le_bytes());
            self.op(b"J").op(&(-1i32).to_le_bytes()).int(0).op(b"t").put().op(b"b");
            self.op(&[0x89]).string(data).op(b"t").put().op(b"b")
        }

        fn finish(&mut self) -> Vec<u8> {
            self.op(b"u.");
            std::mem::take(&mut self.out)
        }
    }

    /// A CIFAR-10 batch pickle: `{"data": array, "labels": [...], "batch_label": ..., "filenames": [...]}`.
    fn batch_pickle(labels: &[u8], planar_rows: &[u8]) -> Vec<u8> {
        labelled_batch_pickle(&[("labels", labels)], planar_rows)
    }

    /// A batch pickle with one label list per (key, labels), e.g. CIFAR-100's `fine_labels` and
    /// `coarse_labels`.
    fn labelled_batch_pickle(label_lists: &[(&str, &[u8])], planar_rows: &[u8]) -> Vec<u8> {
        let count = label_lists[0].1.len();
        let mut pickler = Py2Pickler::new();
        pickler.op(b"}").put().op(b"(");
        pickler.string(b"data").uint8_array(count as u32, IMAGE_BYTES as u32, planar_rows);
        for (key, labels) in label_lists {
            let label_items: Vec<Vec<u8>> = labels.iter().map(|&l| vec![l]).collect();
            pickler.string(key.as_bytes()).list(&label_items, |p, item| _ = p.int(item[0].into()));
        }
        pickler.string(b"batch_label").string(b"synthetic batch");
        let names: Vec<Vec<u8>> = (0..count).map(|i| format!("image_{i}.png").into_bytes()).collect();
        pickler.string(b"filenames").list(&names, |p, name| _ = p.string(name));
        pickler.finish()
    }

    /// A meta pickle with one name list per (key, names).
    fn meta_pickle<S: AsRef<str>>(name_lists: &[(&str, &[S])]) -> Vec<u8> {
        let mut pickler = Py2Pickler::new();
        pickler.op(b"}").put().op(b"(");
        for (key, names) in name_lists {
            let names: Vec<Vec<u8>> = names.iter().map(|n| n.as_ref().as_bytes().to_vec()).collect();
            pickler.string(key.as_bytes()).list(&names, |p, name| _ = p.string(name));
        }
        pickler.string(b"num_cases_per_batch").int(10000);
        pickler.finish()
    }

    fn dict_items(value: &Value) -> &[(Value, Value)] {
        match value {
            Value::Dict(items) => items,
            other => panic!("expected a dict, found {}", other.kind()),
        }
    }

    /// The python twin of `cifar_binary::tests::binary_release`.
    pub(crate) fn python_release(records: usize) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = CIFAR10_PYTHON
            .batch_names()
            .enumerate()
            .map(|(batch, name)| {
                let labels: Vec<u8> = (0..records).map(|r| synthetic_label(batch, r)).collect();
                let rows: Vec<u8> = (0..records).flat_map(|r| synthetic_image(batch, r)).collect();
                (name.to_string(), batch_pickle(&labels, &rows))
            })
            .collect();
        files.push(("batches.meta".into(), meta_pickle(&[("label_names", &CIFAR10_CLASSES)])));
        files
    }

    /// The python twin of `cifar_binary::tests::binary_release100`.
    pub(crate) fn python_release100(records: usize) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = CIFAR100_PYTHON
            .batch_names()
            .enumerate()
            .map(|(batch, name)| {
                let fine: Vec<u8> = (0..records).map(|r| synthetic_fine_label(batch, r)).collect();
                let coarse: Vec<u8> = fine.iter().map(|l| l / 5).collect();
                let rows: Vec<u8> = (0..records).flat_map(|r| synthetic_image(batch, r)).collect();
                (name.to_string(), labelled_batch_pickle(&[("fine_labels", &fine), ("coarse_labels", &coarse)], &rows))
            })
            .collect();
        let (fine, coarse) = (cifar100_names(LabelLevel::Fine), cifar100_names(LabelLevel::Coarse));
        files.push(("meta".into(), meta_pickle(&[("fine_label_names", &fine), ("coarse_label_names", &coarse)])));
        files
    }

    fn load(source: &Source) -> Result<Dataset> {
        load_release(source, &CIFAR10_PYTHON, LabelLevel::Fine)
    }

    #[test]
    fn loads_python2_release_from_folder_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let files = python_release(3);
        write_folder(dir.path(), &files);
        let dataset = load(&Source::new(dir.path())).unwrap();
        assert_eq!(dataset.format, DataFormat::CifarPython);
        assert_synthetic_release(&dataset, 3);

        let archive = dir.path().join("cifar-10-python.tar.gz");
        let in_archive: Vec<_> = files.iter().map(|(n, b)| (format!("cifar-10-batches-py/{n}"), b.clone())).collect();
        write_tar_gz(&archive, &[], &in_archive);
        assert_eq!(load(&Source::new(&archive).subfolder("cifar-10-batches-py")).unwrap(), dataset);
    }

    #[test]
    fn cifar100_python_reads_fine_or_coarse_labels_like_the_binary_release() {
        let dir = tempfile::tempdir().unwrap();
        let files = python_release100(4);
        write_folder(&dir.path().join("folder"), &files);
        let archive = dir.path().join("cifar-100-python.tar.gz");
        let in_archive: Vec<_> = files.iter().map(|(n, b)| (format!("cifar-100-python/{n}"), b.clone())).collect();
        write_tar_gz(&archive, &[], &in_archive);
        for labels in [LabelLevel::Fine, LabelLevel::Coarse] {
            let dataset = load_release(&Source::new(dir.path().join("folder")), &CIFAR100_PYTHON, labels).unwrap();
            assert_eq!(dataset.format, DataFormat::Cifar100Python);
            assert_synthetic_release100(&dataset, 4, labels);
            let packed = Source::new(&archive).subfolder("cifar-100-python");
            assert_eq!(load_release(&packed, &CIFAR100_PYTHON, labels).unwrap(), dataset);
        }
    }

    #[test]
    fn cifar100_python_errors_name_the_file_and_key() {
        let load_error = |files: &[(String, Vec<u8>)], labels| {
            let dir = tempfile::tempdir().unwrap();
            write_folder(dir.path(), files);
            load_release(&Source::new(dir.path()), &CIFAR100_PYTHON, labels).unwrap_err().to_string()
        };
        let mut files = python_release100(2);
        let half = files[0].1.len() / 2;
        files[0].1.truncate(half);
        let err = load_error(&files, LabelLevel::Fine);
        assert!(err.contains("train") && err.contains("truncated pickle"), "{err}");

        let mut files = python_release100(2);
        files[1].1 = rename_key(files[1].1.clone(), b"coarse_labels", b"coarse_lbels");
        let err = load_error(&files, LabelLevel::Coarse);
        assert!(err.contains("test") && err.contains("missing list `coarse_labels`"), "{err}");

        let mut files = python_release100(2);
        files[2].1 = meta_pickle(&[("fine_label_names", &cifar100_names(LabelLevel::Fine))]);
        let err = load_error(&files, LabelLevel::Coarse);
        assert!(err.contains("meta") && err.contains("missing list `coarse_label_names`"), "{err}");

        let mut files = python_release100(2);
        files.retain(|(name, _)| name != "meta");
        let err = load_error(&files, LabelLevel::Fine);
        assert!(err.contains("meta") && err.contains("missing or empty") && err.contains("fine classes"), "{err}");
    }

    #[test]
    fn reads_long_lists_and_memo_keys() {
        // Over 256 memo entries (LONG_BINPUT) and 1000 labels (several APPENDS runs).
        let labels: Vec<u8> = (0..1200).map(|i| (i % 10) as u8).collect();
        let rows = vec![7u8; labels.len() * IMAGE_BYTES];
        let value = unpickle(&batch_pickle(&labels, &rows)).unwrap();
        let dict = dict_items(&value);
        assert_eq!(int_list(dict, "labels").unwrap(), labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>());
        let Some(Value::Array(array)) = dict_get(dict, "data") else { panic!("no array") };
        assert_eq!((array.shape.as_slice(), array.bytes.len()), ([1200, IMAGE_BYTES].as_slice(), rows.len()));
    }

    /// `pickle.dumps({b"labels": [1, 9], b"data": np.arange(24, dtype=np.uint8).reshape(2, 12),
    /// "batch_label": "x"}, protocol=N)` by Python 3.11 with numpy 2.4.
    const PYTHON3_PICKLES: [&[u8]; 4] = [
        b"\x80\x02}q\x00(c_codecs\x0aencode\x0aq\x01X\x06\x00\x00\x00labelsq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05]q\x06(K\x01K\x09eh\x01X\x04\x00\x00\x00dataq\x07h\x03\x86q\x08Rq\x09cnumpy._core.multiarray\x0a_reconstruct\x0aq\x0acnumpy\x0andarray\x0aq\x0bK\x00\x85q\x0ch\x01X\x01\x00\x00\x00bq\x0dh\x03\x86q\x0eRq\x0f\x87q\x10Rq\x11(K\x01K\x02K\x0c\x86q\x12cnumpy\x0adtype\x0aq\x13X\x02\x00\x00\x00u1q\x14\x89\x88\x87q\x15Rq\x16(K\x03X\x01\x00\x00\x00|q\x17NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x18b\x89h\x01X\x18\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17q\x19h\x03\x86q\x1aRq\x1btq\x1cbX\x0b\x00\x00\x00batch_labelq\x1dX\x01\x00\x00\x00xq\x1eu.",
        b"\x80\x03}q\x00(C\x06labelsq\x01]q\x02(K\x01K\x09eC\x04dataq\x03cnumpy._core.multiarray\x0a_reconstruct\x0aq\x04cnumpy\x0andarray\x0aq\x05K\x00\x85q\x06C\x01bq\x07\x87q\x08Rq\x09(K\x01K\x02K\x0c\x86q\x0acnumpy\x0adtype\x0aq\x0bX\x02\x00\x00\x00u1q\x0c\x89\x88\x87q\x0dRq\x0e(K\x03X\x01\x00\x00\x00|q\x0fNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x10b\x89C\x18\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17q\x11tq\x12bX\x0b\x00\x00\x00batch_labelq\x13X\x01\x00\x00\x00xq\x14u.",
        b"\x80\x04\x95\xd1\x00\x00\x00\x00\x00\x00\x00}\x94(C\x06labels\x94]\x94(K\x01K\x09eC\x04data\x94\x8c\x16numpy._core.multiarray\x94\x8c\x0c_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b\x94\x87\x94R\x94(K\x01K\x02K\x0c\x86\x94h\x07\x8c\x05dtype\x94\x93\x94\x8c\x02u1\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b\x89C\x18\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x94t\x94b\x8c\x0bbatch_label\x94\x8c\x01x\x94u.",
        b"\x80\x05\x95\xbc\x00\x00\x00\x00\x00\x00\x00}\x94(C\x06labels\x94]\x94(K\x01K\x09eC\x04data\x94\x8c\x13numpy._core.numeric\x94\x8c\x0b_frombuffer\x94\x93\x94(\x96\x18\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x94\x8c\x05numpy\x94\x8c\x05dtype\x94\x93\x94\x8c\x02u1\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94bK\x02K\x0c\x86\x94\x8c\x01C\x94t\x94R\x94\x8c\x0bbatch_label\x94\x8c\x01x\x94u.",
    ];

    #[test]
    fn reads_python3_pickles_of_protocols_2_to_5() {
        for (protocol, bytes) in (2..).zip(PYTHON3_PICKLES) {
            let value = unpickle(bytes).unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));
            let dict = dict_items(&value);
            assert_eq!(int_list(dict, "labels").unwrap(), [1, 9], "protocol {protocol}");
            let Some(Value::Array(array)) = dict_get(dict, "data") else { panic!("protocol {protocol}: no array") };
            assert_eq!(array.shape, [2, 12], "protocol {protocol}");
            assert_eq!(array.dtype, "u1", "protocol {protocol}");
            assert_eq!(array.bytes, (0..24).collect::<Vec<u8>>(), "protocol {protocol}");
            assert_eq!(dict_get(dict, "batch_label").and_then(Value::as_text).as_deref(), Some("x"));
        }
    }

    fn load_error(files: &[(String, Vec<u8>)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), files);
        load(&Source::new(dir.path())).unwrap_err().to_string()
    }

    #[test]
    fn corrupt_pickles_are_named() {
        let mut files = python_release(1);
        let half = files[1].1.len() / 2;
        files[1].1.truncate(half);
        let err = load_error(&files);
        assert!(err.contains("data_batch_2") && err.contains("truncated"), "{err}");

        let mut files = python_release(1);
        files[0].1[2] = 0xff;
        let err = load_error(&files);
        assert!(err.contains("data_batch_1") && err.contains("opcode 0xff"), "{err}");

        let mut files = python_release(1);
        files[6].1 = b"\x80\x02]q\x00.".to_vec();
        let err = load_error(&files);
        assert!(err.contains("batches.meta") && err.contains("expected a pickled dict"), "{err}");
    }

    #[test]
    fn missing_keys_and_bad_contents_are_named() {
        let rows = synthetic_image(0, 0);
        let cases = [
            (rename_key(batch_pickle(&[1], &rows), b"data", b"dat_"), "missing key `data`"),
            (rename_key(batch_pickle(&[1], &rows), b"labels", b"labelz"), "missing list `labels`"),
            (batch_pickle(&[10], &rows), "label 10 of record 0 is outside 0..=9"),
        ];
        for (bytes, expected) in cases {
            let mut files = python_release(1);
            files[4].1 = bytes;
            let err = load_error(&files);
            assert!(err.contains("data_batch_5") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn array_size_must_match_labels() {
        let rows = synthetic_image(0, 0);
        let mut two_labels_one_image = batch_pickle(&[1], &rows);
        // Give the labels list a second element: "K\x01e" -> "K\x01K\x02e".
        let at = two_labels_one_image.windows(3).position(|w| w == b"K\x01e").unwrap();
        two_labels_one_image.splice(at + 2..at + 2, *b"K\x02");
        let mut files = python_release(1);
        files[5].1 = two_labels_one_image;
        let err = load_error(&files);
        assert!(err.contains("test_batch") && err.contains("expected (2, 3072) for 2 labels"), "{err}");
    }

    /// Renames a dict key in a pickle (to a name of the same length).
    fn rename_key(mut pickle: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = pickle.windows(from.len()).position(|w| w == from).unwrap();
        pickle[at..at + to.len()].copy_from_slice(to);
        pickle
    }
}
