//! The models a server answers for, from `--model` (each `REF` or `ID=REF`) and
//! `--models-dir`: each reference turned into a local path (hub references are
//! fetched into the model cache) and given the id that clients request it by.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::model::model_id;

/// One `--model` value: an optional explicit id and the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelArg {
    pub id: Option<String>,
    pub reference: String,
}

impl ModelArg {
    /// Splits `ID=REF`. The part before the first `=` is an id only when it has no
    /// `/` (so `./a=b.gguf` and `/models/a=b.gguf` stay paths) and does not start a
    /// hub reference.
    pub fn parse(value: &str) -> ModelArg {
        let value = value.trim();
        match value.split_once('=') {
            Some((id, reference))
                if !id.is_empty()
                    && !id.contains('/')
                    && !id.starts_with("hf:")
                    && !reference.is_empty() =>
            {
                ModelArg {
                    id: Some(id.to_owned()),
                    reference: reference.to_owned(),
                }
            }
            _ => ModelArg {
                id: None,
                reference: value.to_owned(),
            },
        }
    }
}

/// A model the server can load: its id and its local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub path: PathBuf,
}

/// Resolves every `--model` (through `resolve`, which fetches hub references) and
/// adds every GGUF file under `models_dir`. `single_id` is `--model-id`, the id of
/// the one model. Two models with one id are an error that says how to rename them.
pub fn collect(
    models: &[String],
    single_id: Option<&str>,
    models_dir: Option<&Path>,
    resolve: impl Fn(&str) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<Vec<ModelEntry>> {
    let mut entries: Vec<ModelEntry> = Vec::new();
    for value in models {
        let arg = ModelArg::parse(value);
        let path = resolve(&arg.reference)?;
        let id = arg
            .id
            .or_else(|| single_id.map(str::to_owned))
            .unwrap_or_else(|| model_id(&path, path.is_dir()));
        add(&mut entries, ModelEntry { id, path })?;
    }
    if let Some(dir) = models_dir {
        let files = gguf_files(dir)?;
        if files.is_empty() {
            tracing::warn!("--models-dir {}: no .gguf file found", dir.display());
        }
        for path in files {
            let id = model_id(&path, false);
            add(&mut entries, ModelEntry { id, path })?;
        }
    }
    if entries.is_empty() {
        anyhow::bail!("no model to serve: give --model, or --models-dir with .gguf files in it");
    }
    Ok(entries)
}

fn add(entries: &mut Vec<ModelEntry>, entry: ModelEntry) -> anyhow::Result<()> {
    if let Some(other) = entries.iter().find(|e| e.id == entry.id) {
        if other.path == entry.path {
            return Ok(());
        }
        anyhow::bail!(
            "two models have the id `{}` ({} and {}); name one of them with --model ID=PATH",
            entry.id,
            other.path.display(),
            entry.path.display()
        );
    }
    entries.push(entry);
    Ok(())
}

/// Every `*.gguf` file under `dir` and its subdirectories (following links, so a
/// directory of links to the Nix store works), sorted by path. Unfinished downloads
/// (`.part`) and hidden entries are skipped.
fn gguf_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let listing = std::fs::read_dir(&current).with_context(|| {
            format!(
                "cannot read the models directory {}; check --models-dir",
                current.display()
            )
        })?;
        for entry in listing {
            let path = entry
                .with_context(|| format!("cannot read the models directory {}", current.display()))?
                .path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if name.to_ascii_lowercase().ends_with(".gguf") && path.is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(reference: &str) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(reference))
    }

    #[test]
    fn ids_come_before_the_first_equals_sign_without_a_slash() {
        assert_eq!(
            ModelArg::parse("chat=/m/a.gguf"),
            ModelArg {
                id: Some("chat".into()),
                reference: "/m/a.gguf".into()
            }
        );
        assert_eq!(
            ModelArg::parse("small=hf:o/r:Q4_K_M").reference,
            "hf:o/r:Q4_K_M"
        );
        for path in ["/m/a=b.gguf", "./a=b.gguf", "a.gguf", "=a.gguf", "x="] {
            assert_eq!(ModelArg::parse(path).id, None, "{path}");
        }
    }

    #[test]
    fn ids_default_to_file_names_and_clash_with_a_clear_error() {
        let entries = collect(
            &["/m/a.gguf".into(), "fast=/n/a.gguf".into()],
            None,
            None,
            local,
        )
        .unwrap();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "fast"]);
        let error = collect(&["/m/a.gguf".into(), "/n/a.gguf".into()], None, None, local)
            .unwrap_err()
            .to_string();
        assert!(error.contains("two models have the id `a`"), "{error}");
        assert!(error.contains("--model ID=PATH"), "{error}");
    }

    #[test]
    fn a_directory_contributes_its_gguf_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in [
            "b.gguf",
            "sub/c.GGUF",
            "notes.txt",
            "d.gguf.part",
            ".e.gguf",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let entries = collect(&["/m/a.gguf".into()], None, Some(dir.path()), local).unwrap();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);

        let missing = dir.path().join("nope");
        let error = collect(&[], None, Some(&missing), local)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--models-dir"), "{error}");
        let empty = tempfile::tempdir().unwrap();
        let error = collect(&[], None, Some(empty.path()), local)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no model to serve"), "{error}");
    }
}
