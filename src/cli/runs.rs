use std::path::PathBuf;

use anyhow::Result;
use ferrovision::files::write_atomic;
use ferrovision::tracking::{journal, utc_now};
use ferrovision::{out, outln};

#[derive(clap::Subcommand)]
pub enum RunsCommand {
    /// One line per run: id, name, parent, tags, model, epochs, best validation and test accuracy.
    List {
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
    },
    /// Append a dated conclusion to a run's notes.md.
    Note {
        id: String,
        text: String,
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
    },
    /// The settings that differ between runs and their results, as Markdown (and CSV/HTML files).
    Compare {
        /// Run ids.
        ids: Vec<String>,
        /// Every run with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// This run and every run whose parent it is.
        #[arg(long)]
        parent: Option<String>,
        #[arg(long, default_value = "runs")]
        dir: PathBuf,
        #[arg(long)]
        csv: Option<PathBuf>,
        /// A self-contained HTML report with the learning curves.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

impl RunsCommand {
    pub fn run(self) -> Result<()> {
        match self {
            RunsCommand::List { dir } => out!("{}", journal::list(&journal::scan(&dir)?).markdown()),
            RunsCommand::Note { id, text, dir } => {
                journal::add_note(&dir.join(&id), &text, &utc_now().0)?;
                outln!("noted in {}", dir.join(&id).join(journal::NOTES).display());
            }
            RunsCommand::Compare { ids, tag, parent, dir, csv, html } => {
                let entries = journal::select(journal::scan(&dir)?, &ids, tag.as_deref(), parent.as_deref())?;
                let table = journal::compare(&entries);
                out!("{}", table.markdown());
                if let Some(path) = csv {
                    write_atomic(&path, table.csv().as_bytes())?;
                    outln!("wrote {}", path.display());
                }
                if let Some(path) = html {
                    let title = tag.or(parent).map_or("comparison".to_string(), |t| format!("comparison: {t}"));
                    write_atomic(&path, journal::html_report(&entries, &title, None)?.as_bytes())?;
                    outln!("wrote {}", path.display());
                }
            }
        }
        Ok(())
    }
}
