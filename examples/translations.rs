//! Regenerates the translation table that ships with ferrovision (`src/serve/labels/translations.tsv`)
//! from the Open Multilingual Wordnet tables in `DATA/omw/`, the ImageNet-1k class index
//! (`DATA/imagenet-1k-classes.tsv`) and Tiny ImageNet's `wnids.txt`/`words.txt`
//! (`DATA/tiny-imagenet-200-sub100.tar.gz`), and prints the coverage table of docs/models.md.
//! Usage: cargo run --release --example translations -- DATA [OUT]

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrovision::data::archive::Source;
use ferrovision::data::classes::ClassNames;
use ferrovision::serve::translate::{self, CIFAR10_SYNSETS, ClassToTranslate, LANGUAGES, Translations};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(args.next().context("usage: translations DATA [OUT]")?);
    let out =
        args.next().map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/serve/labels/translations.tsv"), PathBuf::from);

    let imagenet = ClassNames::read(&data.join("imagenet-1k-classes.tsv"))?;
    let tiny_archive = data.join("tiny-imagenet-200-sub100.tar.gz");
    let files: HashMap<String, String> = Source::new(&tiny_archive)
        .read_files(|p| p == "tiny-imagenet-200/wnids.txt" || p == "tiny-imagenet-200/words.txt")?
        .into_iter()
        .map(|(name, bytes)| (name, String::from_utf8_lossy(&bytes).into_owned()))
        .collect();
    let file =
        |name: &str| files.get(&format!("tiny-imagenet-200/{name}")).with_context(|| format!("{}: no {name}", tiny_archive.display()));
    // words.txt: every WordNet noun synset with its English synonyms.
    let synonyms: HashMap<String, Vec<String>> = file("words.txt")?
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, words)| (id.to_string(), words.split(',').map(|w| w.trim().to_string()).collect()))
        .collect();
    let mut tiny: Vec<String> = file("wnids.txt")?.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    tiny.sort();

    // ImageNet-1k rows first, in index order; then the Tiny ImageNet and CIFAR-10 classes it lacks.
    let mut classes: Vec<ClassToTranslate> = imagenet
        .ids
        .iter()
        .zip(&imagenet.names)
        .map(|(id, name)| ClassToTranslate { id: id.clone(), sets: "i".into(), english: name.clone() })
        .collect();
    let mut add = |id: &str, letter: char, english: &dyn Fn() -> String| match classes.iter_mut().find(|c| c.id == id) {
        Some(class) => class.sets.push(letter),
        None => classes.push(ClassToTranslate { id: id.to_string(), sets: letter.to_string(), english: english() }),
    };
    for id in &tiny {
        add(id, 't', &|| synonyms.get(id).and_then(|s| s.first()).cloned().unwrap_or_else(|| id.clone()));
    }
    for (name, id) in CIFAR10_SYNSETS {
        add(id, 'c', &|| name.to_string());
    }
    let omw: Vec<_> = LANGUAGES.iter().map(|l| translate::read_omw(&data.join("omw").join(l.omw_file))).collect::<Result<_>>()?;
    let table = translate::generate(&classes, &synonyms, &omw);
    ferrovision::files::write_atomic(&out, table.as_bytes())?;
    eprintln!("{}: {} classes, {} languages", out.display(), classes.len(), LANGUAGES.len());
    print!("{}", translate::coverage_table(&Translations::parse(&table)?));
    Ok(())
}
