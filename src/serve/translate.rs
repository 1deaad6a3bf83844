//! Class names in other languages, offline: a table generated from the Open Multilingual Wordnet
//! ships inside the binary (`labels/translations.tsv`, attribution in `labels/NOTICE.md`) for the
//! ImageNet-1k, Tiny ImageNet-200 and CIFAR-10 classes; users add tables of their own. A class
//! with no word in a language keeps its English name, and callers can tell (`Label::translated`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::data::classes::ClassNames;
use crate::error::FileError;

/// The shipped table: `id`, `sets`, `en` and one column per language (empty: no word).
const SHIPPED: &str = include_str!("labels/translations.tsv");

/// A language of the shipped table and the Open Multilingual Wordnet file it is generated from.
pub struct Language {
    /// ISO 639-1 code, as `--lang` takes it.
    pub code: &'static str,
    pub name: &'static str,
    /// Path inside `omw/`.
    pub omw_file: &'static str,
}

pub const LANGUAGES: &[Language] = &[
    Language { code: "ca", name: "Catalan", omw_file: "mcr/wn-data-cat.tab" },
    Language { code: "de", name: "German", omw_file: "wikt/wn-wikt-deu.tab" },
    Language { code: "es", name: "Spanish", omw_file: "wikt/wn-wikt-spa.tab" },
    Language { code: "fr", name: "French", omw_file: "fra/wn-data-fra.tab" },
    Language { code: "it", name: "Italian", omw_file: "ita/wn-data-ita.tab" },
    Language { code: "ja", name: "Japanese", omw_file: "wikt/wn-wikt-jpn.tab" },
    Language { code: "nl", name: "Dutch", omw_file: "nld/wn-data-nld.tab" },
    Language { code: "pl", name: "Polish", omw_file: "pol/wn-data-pol.tab" },
    Language { code: "pt", name: "Portuguese", omw_file: "por/wn-data-por.tab" },
    Language { code: "ru", name: "Russian", omw_file: "wikt/wn-wikt-rus.tab" },
    Language { code: "zh", name: "Chinese (Mandarin)", omw_file: "cow/wn-data-cmn.tab" },
];

/// CIFAR-10's classes (its folder names, in label order) and the WordNet noun synsets they name.
pub const CIFAR10_SYNSETS: [(&str, &str); 10] = [
    ("airplane", "n02691156"),
    ("automobile", "n02958343"),
    ("bird", "n01503061"),
    ("cat", "n02121808"),
    ("deer", "n02430045"),
    ("dog", "n02084071"),
    ("frog", "n01639765"),
    ("horse", "n02374451"),
    ("ship", "n04194289"),
    ("truck", "n04490091"),
];

/// The class sets of the shipped table, by the letter its `sets` column uses.
pub const CLASS_SETS: [(char, &str); 3] = [('i', "ImageNet-1k"), ('t', "Tiny ImageNet-200"), ('c', "CIFAR-10")];

/// A class name in the language asked for, or the English one where that language has no word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub text: String,
    pub english: String,
    pub translated: bool,
}

/// How many classes have a word in a language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    pub translated: usize,
    pub total: usize,
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.translated as f64 / self.total.max(1) as f64;
        write!(f, "{}/{} ({pct:.1}%)", self.translated, self.total)
    }
}

/// An unknown `--lang` / `lang=`, with the codes there are.
#[derive(Debug, thiserror::Error)]
#[error("unknown language `{asked}`; available: {}", available.join(", "))]
pub struct UnknownLanguage {
    pub asked: String,
    pub available: Vec<String>,
}

/// One row of the shipped table.
struct Row {
    id: String,
    sets: String,
    english: String,
}

/// Translated class names by language, looked up by class id (a WordNet id) or English name.
pub struct Translations {
    rows: Vec<Row>,
    /// The ids of `rows`.
    ids: HashSet<String>,
    /// language code -> its words.
    words: BTreeMap<String, Words>,
}

/// One language's words: a user's (class id or name -> label) before the shipped ones (by id,
/// and by English name for classes that are not ids of the table, such as CIFAR-10's folders).
#[derive(Default)]
struct Words {
    own: HashMap<String, String>,
    by_id: HashMap<String, String>,
    by_name: HashMap<String, String>,
}

impl Translations {
    /// The table that ships with ferrovision.
    pub fn shipped() -> Self {
        Self::parse(SHIPPED).expect("the shipped translation table parses (checked by a test)")
    }

    /// Reads the shipped table's format (see [`generate`]).
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty());
        let header: Vec<&str> = lines.next().context("no header")?.split('\t').collect();
        if header.get(..3) != Some(&["id", "sets", "en"][..]) {
            bail!("header must start with id, sets, en");
        }
        let mut words: BTreeMap<String, Words> = header[3..].iter().map(|code| (code.to_string(), Words::default())).collect();
        let mut rows = Vec::new();
        for line in lines {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != header.len() {
                bail!("row `{line}`: expected {} columns", header.len());
            }
            for (code, word) in header[3..].iter().zip(&fields[3..]).filter(|(_, w)| !w.is_empty()) {
                let table = words.get_mut(*code).expect("a column of the header");
                table.by_id.insert(fields[0].to_string(), word.to_string());
                // ImageNet has two "crane"s: the first class of a name gives its word.
                table.by_name.entry(fields[2].to_string()).or_insert_with(|| word.to_string());
            }
            rows.push(Row { id: fields[0].into(), sets: fields[1].into(), english: fields[2].into() });
        }
        let ids = rows.iter().map(|r| r.id.clone()).collect();
        Ok(Self { rows, ids, words })
    }

    /// Adds a user's table for `lang` (a new code, or one of the shipped languages, whose words
    /// it overrides): a TSV of `class id or name <TAB> label`, with `#` comments and blank lines.
    pub fn add_table(&mut self, lang: &str, path: &Path) -> Result<()> {
        if lang.is_empty() || lang == "en" || !lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("{}: language code `{lang}` must be letters, digits, `-` or `_` (and not `en`)", path.display());
        }
        let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, e))?;
        let mut own = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))) {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |message: String| FileError::invalid(path, format!("line {number}: {message}"));
            let Some((key, label)) = line.split_once('\t') else {
                return Err(invalid("expected `class id or name<TAB>label`".into()).into());
            };
            let (key, label) = (key.trim(), label.trim());
            if key.is_empty() || label.is_empty() || label.contains('\t') {
                return Err(invalid("expected two non-empty tab-separated columns".into()).into());
            }
            if own.insert(key.to_string(), label.to_string()).is_some() {
                return Err(invalid(format!("class `{key}` is listed twice")).into());
            }
        }
        if own.is_empty() {
            return Err(FileError::invalid(path, "no labels (expected lines of `class id or name<TAB>label`)").into());
        }
        self.words.entry(lang.to_string()).or_default().own.extend(own);
        Ok(())
    }

    /// The language codes there are, `en` first.
    pub fn languages(&self) -> Vec<String> {
        std::iter::once("en".to_string()).chain(self.words.keys().cloned()).collect()
    }

    /// `lang` when there is such a language.
    pub fn check(&self, lang: &str) -> Result<(), UnknownLanguage> {
        match lang == "en" || self.words.contains_key(lang) {
            true => Ok(()),
            false => Err(UnknownLanguage { asked: lang.to_string(), available: self.languages() }),
        }
    }

    /// Class `index` of `classes` in `lang`: its word for the class id, else for the English
    /// name, else the English name itself.
    pub fn label(&self, lang: &str, classes: &ClassNames, index: usize) -> Label {
        let english = classes.names.get(index).cloned().unwrap_or_else(|| index.to_string());
        let id = classes.ids.get(index).cloned().unwrap_or_default();
        let word = self.words.get(lang).and_then(|words| {
            let shipped_by_name = || if self.ids.contains(&id) { None } else { words.by_name.get(&english) };
            words.own.get(&id).or_else(|| words.own.get(&english)).or_else(|| words.by_id.get(&id)).or_else(shipped_by_name).cloned()
        });
        match word {
            Some(text) => Label { text, english, translated: true },
            None => Label { text: english.clone(), english, translated: lang == "en" },
        }
    }

    /// How many of `classes` have a word in `lang`.
    pub fn coverage(&self, lang: &str, classes: &ClassNames) -> Coverage {
        let translated = (0..classes.len()).filter(|&i| self.label(lang, classes, i).translated).count();
        Coverage { translated, total: classes.len() }
    }

    /// The classes of the set marked `letter` in the `sets` column ([`CLASS_SETS`]), in table
    /// order; for ImageNet-1k (`i`) that is the standard class index order.
    pub fn class_set(&self, letter: char) -> ClassNames {
        let rows = self.rows.iter().filter(|r| r.sets.contains(letter));
        let (ids, names) = rows.map(|r| (r.id.clone(), r.english.clone())).unzip();
        ClassNames { ids, names }
    }
}

/// One class to translate: its WordNet id, the sets it belongs to and its English name.
pub struct ClassToTranslate {
    pub id: String,
    pub sets: String,
    pub english: String,
}

/// The noun lemmas of an Open Multilingual Wordnet tab file, by WordNet id (`n02084071`), in file
/// order. Types are `LANG:lemma` or plain `lemma` (OpenWN-PT); definitions and examples are left
/// out, and so are headers (`#`) and blank lines.
pub fn read_omw(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, e))?;
    let mut lemmas: HashMap<String, Vec<String>> = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(synset), Some(kind), Some(word)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(FileError::invalid(path, format!("line {}: expected `offset-pos<TAB>type<TAB>word`", number + 1)).into());
        };
        let is_lemma = kind == "lemma" || kind.ends_with(":lemma");
        let (word, Some(offset)) = (word.trim(), synset.strip_suffix("-n")) else { continue };
        if is_lemma && !word.is_empty() {
            lemmas.entry(format!("n{offset}")).or_default().push(word.replace('_', " "));
        }
    }
    Ok(lemmas)
}

/// The shipped table's text for `classes` from each language's lemmas (`omw`, in [`LANGUAGES`]
/// order). A class gets its language's first lemma that is not one of its English synonyms (so
/// Latin names such as "Carassius auratus" give way to a common word), else its first lemma.
pub fn generate(
    classes: &[ClassToTranslate],
    english_synonyms: &HashMap<String, Vec<String>>,
    omw: &[HashMap<String, Vec<String>>],
) -> String {
    let mut text = String::from(
        "# Class names in other languages, generated from the Open Multilingual Wordnet (omw-data f75be19)\n\
         # by `cargo run --release --example translations -- ../shared/data`; see NOTICE.md for the sources\n\
         # and their licences. sets: i = ImageNet-1k (rows in class index order), t = Tiny ImageNet-200, c = CIFAR-10.\n",
    );
    let codes: Vec<&str> = LANGUAGES.iter().map(|l| l.code).collect();
    text.push_str(&format!("id\tsets\ten\t{}\n", codes.join("\t")));
    for class in classes {
        let synonyms: Vec<String> =
            english_synonyms.get(&class.id).map(|s| s.iter().map(|w| w.to_lowercase()).collect()).unwrap_or_default();
        let words = omw.iter().map(|lemmas| {
            let candidates = lemmas.get(&class.id).map(Vec::as_slice).unwrap_or_default();
            let own = candidates.iter().find(|w| !synonyms.contains(&w.to_lowercase()));
            own.or(candidates.first()).cloned().unwrap_or_default()
        });
        let words: Vec<String> = words.collect();
        text.push_str(&format!("{}\t{}\t{}\t{}\n", class.id, class.sets, class.english, words.join("\t")));
    }
    text
}

/// The coverage of each language over each class set of `translations`, as a Markdown table.
pub fn coverage_table(translations: &Translations) -> String {
    let sets: Vec<(ClassNames, &str)> = CLASS_SETS.iter().map(|&(letter, name)| (translations.class_set(letter), name)).collect();
    let mut table = format!(
        "| language | code | {} |\n|---|---|{}\n",
        sets.iter().map(|s| s.1).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(sets.len())
    );
    for language in LANGUAGES {
        let cells: Vec<String> = sets.iter().map(|(classes, _)| translations.coverage(language.code, classes).to_string()).collect();
        table.push_str(&format!("| {} | `{}` | {} |\n", language.name, language.code, cells.join(" | ")));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ids: &[&str], names: &[&str]) -> ClassNames {
        ClassNames { ids: ids.iter().map(|s| s.to_string()).collect(), names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn omw_files_with_their_quirks_give_noun_lemmas_and_the_table_prefers_native_words() {
        let dir = tempfile::tempdir().unwrap();
        let fra = dir.path().join("fra.tab");
        std::fs::write(
            &fra,
            "# WOLF\tfra\thttp://x\tCeCILL-C\n01443537-n\tfra:lemma\tCarassius auratus\n01443537-n\tfra:lemma\tpoisson_rouge\n\
             01443537-n\tfra:def\t0\tun poisson\n01443537-v\tfra:lemma\tdorer\n\n02084071-n\tfra:lemma\tchien\n",
        )
        .unwrap();
        let por = dir.path().join("por.tab");
        std::fs::write(&por, "# OpenWN-PT\tpor\thttp://x\tCC BY-SA\n02084071-n\tlemma\tcachorro\n").unwrap();
        let (fra, por) = (read_omw(&fra).unwrap(), read_omw(&por).unwrap());
        assert_eq!(fra["n01443537"], ["Carassius auratus", "poisson rouge"], "lemmas only, nouns only, `_` is a space");
        assert_eq!(por["n02084071"], ["cachorro"], "plain `lemma` type (OpenWN-PT)");
        assert_eq!(fra.len(), 2);

        let broken = dir.path().join("broken.tab");
        std::fs::write(&broken, "02084071-n\tfra:lemma\tchien\n02084071-n only one column\n").unwrap();
        let err = read_omw(&broken).unwrap_err().to_string();
        assert!(err.contains("broken.tab") && err.contains("line 2"), "{err}");
        assert!(read_omw(&dir.path().join("absent.tab")).unwrap_err().to_string().contains("absent.tab"));

        let classes = [
            ClassToTranslate { id: "n01443537".into(), sets: "it".into(), english: "goldfish".into() },
            ClassToTranslate { id: "n02084071".into(), sets: "c".into(), english: "dog".into() },
        ];
        let synonyms = HashMap::from([("n01443537".to_string(), vec!["goldfish".to_string(), "Carassius auratus".to_string()])]);
        let mut omw = vec![HashMap::new(); LANGUAGES.len()];
        let column = |code: &str| LANGUAGES.iter().position(|l| l.code == code).unwrap();
        omw[column("fr")] = fra;
        omw[column("pt")] = por;
        let table = Translations::parse(&generate(&classes, &synonyms, &omw)).unwrap();
        let both = names(&["n01443537", "n02084071"], &["goldfish", "dog"]);
        assert_eq!(table.label("fr", &both, 0).text, "poisson rouge", "the Latin English synonym gives way");
        assert_eq!(table.label("pt", &both, 1).text, "cachorro");
        assert_eq!(table.label("pt", &both, 0), Label { text: "goldfish".into(), english: "goldfish".into(), translated: false });
        assert_eq!(table.class_set('c').names, ["dog"]);
        assert_eq!(table.class_set('t').ids, ["n01443537"]);
    }

    #[test]
    fn labels_fall_back_to_english_and_coverage_counts_the_words() {
        let table = Translations::shipped();
        // Tiny ImageNet-like classes (ids), CIFAR-10-like ones (names only) and one unknown.
        let classes = names(&["n01443537", "n02084071", "dog", "my_widget"], &["goldfish", "dog", "dog", "my_widget"]);
        assert_eq!(table.label("fr", &classes, 0).text, "carassin");
        assert_eq!(table.label("de", &classes, 1).text, "Hund");
        assert_eq!(table.label("de", &classes, 2).text, "Hund", "by English name");
        let unknown = table.label("de", &classes, 3);
        assert_eq!(unknown, Label { text: "my_widget".into(), english: "my_widget".into(), translated: false });
        assert!(table.label("en", &classes, 3).translated, "English is always there");
        assert_eq!(table.coverage("de", &classes), Coverage { translated: 3, total: 4 });
        assert_eq!(table.coverage("de", &classes).to_string(), "3/4 (75.0%)");
        let err = table.check("xx").unwrap_err().to_string();
        assert!(err.starts_with("unknown language `xx`; available: en, ca, de, es, fr,"), "{err}");
        assert!(table.check("ja").is_ok() && table.check("en").is_ok());
    }

    /// The shipped table against the counts the data's README gives for each language (noun
    /// synsets of the classes that have a word).
    #[test]
    fn shipped_table_covers_the_three_class_sets_as_the_wordnets_do() {
        let table = Translations::shipped();
        let (imagenet, tiny, cifar) = (table.class_set('i'), table.class_set('t'), table.class_set('c'));
        assert_eq!((imagenet.len(), tiny.len(), cifar.len()), (1000, 200, 10));
        assert_eq!((imagenet.ids[0].as_str(), imagenet.names[0].as_str()), ("n01440764", "tench"));
        assert_eq!(cifar.names, CIFAR10_SYNSETS.map(|(name, _)| name));
        let expected = [
            ("ca", 738, 167, 10),
            ("fr", 735, 165, 10),
            ("pl", 704, 147, 9),
            ("zh", 609, 120, 9),
            ("it", 599, 142, 10),
            ("nl", 581, 144, 9),
            ("de", 482, 126, 10),
            ("ru", 470, 129, 10),
            ("es", 413, 110, 9),
            ("ja", 399, 112, 10),
            ("pt", 618, 153, 10),
        ];
        for (code, i, t, c) in expected {
            let counts = [&imagenet, &tiny, &cifar].map(|classes| table.coverage(code, classes).translated);
            assert_eq!(counts, [i, t, c], "{code}");
        }
        assert!(coverage_table(&table).contains("| French | `fr` | 735/1000 (73.5%) | 165/200 (82.5%) | 10/10 (100.0%) |"));
    }

    #[test]
    fn user_tables_add_or_override_a_language_and_broken_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own.tsv");
        std::fs::write(&own, "# my labels\nmy_widget\tmon bidule\r\n\nn01443537\tpoisson doré\n").unwrap();
        let mut table = Translations::shipped();
        table.add_table("fr", &own).unwrap();
        table.add_table("kids", &own).unwrap();
        let classes = names(&["n01443537", "my_widget", "n02084071"], &["goldfish", "my_widget", "dog"]);
        let labels: Vec<String> = (0..3).map(|i| table.label("fr", &classes, i).text).collect();
        assert_eq!(labels, ["poisson doré", "mon bidule", "chien"], "the user's words first, the shipped ones after");
        assert_eq!(table.coverage("kids", &classes).translated, 2);
        assert!(table.languages().contains(&"kids".to_string()));

        for (content, expected) in [
            ("cat\n", "line 1: expected `class id or name<TAB>label`"),
            ("cat\tchat\ncat\tminou\n", "line 2: class `cat` is listed twice"),
            ("cat\t \n", "line 1: expected two non-empty"),
            ("# nothing\n", "no labels"),
        ] {
            let bad = dir.path().join("bad.tsv");
            std::fs::write(&bad, content).unwrap();
            let err = Translations::shipped().add_table("fr", &bad).unwrap_err().to_string();
            assert!(err.contains("bad.tsv") && err.contains(expected), "{content:?}: {err}");
        }
        let err = Translations::shipped().add_table("en", &own).unwrap_err().to_string();
        assert!(err.contains("language code `en`"), "{err}");
        assert!(Translations::shipped().add_table("fr", &dir.path().join("absent.tsv")).is_err());
    }
}
