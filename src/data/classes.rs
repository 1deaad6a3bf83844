//! The classes of a model's outputs, by label: each one's id as its data set spells it (a class
//! folder, a Tiny ImageNet WordNet id) and the readable name that reports, confusion matrices and
//! `predict` print ("goldfish" for n01443537).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::Dataset;

/// Class identifiers (e.g. WordNet ids) and readable names, by class index.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassNames {
    pub ids: Vec<String>,
    pub names: Vec<String>,
}

impl ClassNames {
    /// Names that are their own ids (a data set's class folders).
    pub fn from_names(names: &[String]) -> Self {
        Self { ids: names.to_vec(), names: names.to_vec() }
    }

    /// The classes of `dataset` (see [`ClassNames::described`]).
    pub fn of(dataset: &Dataset) -> Self {
        Self::described(&dataset.classes, &dataset.class_descriptions)
    }

    /// `ids` named by the first synonym of their description (Tiny ImageNet's `words.txt` line
    /// "goldfish, Carassius auratus" gives "goldfish", as torchvision's ImageNet categories do);
    /// an id without a description is its own name.
    pub fn described(ids: &[String], descriptions: &[String]) -> Self {
        let name = |(index, id): (usize, &String)| {
            let synonym = descriptions.get(index).and_then(|d| d.split(',').next()).map(str::trim);
            synonym.filter(|s| !s.is_empty()).unwrap_or(id).to_string()
        };
        Self { ids: ids.to_vec(), names: ids.iter().enumerate().map(name).collect() }
    }

    /// Reads a class table: a TSV with a header naming `index`, `wnid` (or `id`) and `name`
    /// columns (as `imagenet-1k-classes.tsv`), or a text file with one class name per line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read class table", path.display()))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let Some(first) = lines.next() else { bail!("{}: class table is empty", path.display()) };
        let header: Vec<&str> = first.split('\t').map(str::trim).collect();
        let column = |names: &[&str]| header.iter().position(|h| names.contains(&h.to_ascii_lowercase().as_str()));
        let (Some(id_col), Some(name_col)) = (column(&["wnid", "id"]), column(&["name"])) else {
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            return Ok(Self::from_names(&names));
        };
        let index_col = column(&["index"]);
        let mut ids = Vec::new();
        let mut names = Vec::new();
        for (row, line) in lines.enumerate() {
            let fields: Vec<&str> = line.split('\t').collect();
            let field = |col: usize| {
                fields
                    .get(col)
                    .map(|f| f.trim().to_string())
                    .with_context(|| format!("{}: line {}: expected {} tab-separated columns", path.display(), row + 2, header.len()))
            };
            if let Some(col) = index_col {
                let index: usize =
                    field(col)?.parse().with_context(|| format!("{}: line {}: index is not a number", path.display(), row + 2))?;
                if index != row {
                    bail!("{}: line {}: expected index {row}, found {index} (rows must be in index order)", path.display(), row + 2);
                }
            }
            ids.push(field(id_col)?);
            names.push(field(name_col)?);
        }
        Ok(Self { ids, names })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Class `index` as a report line names it: the readable name, with the id after it where
    /// the two differ ("goldfish (n01443537)").
    pub fn label(&self, index: usize) -> String {
        match (&self.names[index], &self.ids[index]) {
            (name, id) if name == id => name.clone(),
            (name, id) => format!("{name} ({id})"),
        }
    }

    /// The class a file is named after: the part of its name before the first `_` (or the stem),
    /// matched against ids, then names.
    pub fn from_file_name(&self, file: &str) -> Option<usize> {
        let base = file.rsplit('/').next().unwrap_or(file);
        let stem = base.split('.').next().unwrap_or(base);
        let key = stem.split('_').next().unwrap_or(stem);
        self.ids.iter().position(|id| id == key).or_else(|| self.names.iter().position(|n| n == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_give_readable_names_and_the_ids_stay() {
        let ids: Vec<String> = ["n01443537", "n02123045", "n09999999"].map(String::from).to_vec();
        let descriptions: Vec<String> = ["goldfish, Carassius auratus", " tabby, tabby cat", ""].map(String::from).to_vec();
        let classes = ClassNames::described(&ids, &descriptions);
        assert_eq!(classes.ids, ids);
        assert_eq!(classes.names, ["goldfish", "tabby", "n09999999"]);
        assert_eq!(classes.label(0), "goldfish (n01443537)");
        assert_eq!(classes.label(2), "n09999999");
        // A data set without descriptions (class folders): names are the ids.
        let folders = ClassNames::described(&ids[..2], &[]);
        assert_eq!((folders.names.as_slice(), folders.label(1).as_str()), (&ids[..2], "n02123045"));
        assert_eq!(folders, ClassNames::from_names(&ids[..2]));
    }

    #[test]
    fn tsv_class_tables_and_plain_lists_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("classes.tsv");
        std::fs::write(&tsv, "index\twnid\tname\tsynonyms\n0\tn01440764\ttench\ttench, Tinca tinca\n1\tn01443537\tgoldfish\tgoldfish\n")
            .unwrap();
        let classes = ClassNames::read(&tsv).unwrap();
        assert_eq!(classes.ids, ["n01440764", "n01443537"]);
        assert_eq!(classes.names, ["tench", "goldfish"]);
        assert_eq!(classes.from_file_name("imagenet-samples/n01443537_goldfish.JPEG"), Some(1));
        assert_eq!(classes.from_file_name("n99999999_x.JPEG"), None);

        let list = dir.path().join("classes.txt");
        std::fs::write(&list, "cat\ndog\n").unwrap();
        let classes = ClassNames::read(&list).unwrap();
        assert_eq!(classes.names, ["cat", "dog"]);
        assert_eq!(classes.from_file_name("dog_0001.png"), Some(1));

        let bad = dir.path().join("bad.tsv");
        std::fs::write(&bad, "index\twnid\tname\n0\tn1\ta\n5\tn2\tb\n").unwrap();
        let err = ClassNames::read(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.tsv") && err.contains("line 3") && err.contains("expected index 1"), "{err}");
    }
}
