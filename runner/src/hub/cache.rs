//! The model cache: one directory shared by `pull`, `list`, `rm` and every command
//! that takes a model reference. Hub files live under
//! `hf/OWNER/REPO/REVISION/FILE`; other files (such as the test model that
//! `scripts/fetch-model.sh` puts there) are listed and removed by their path
//! relative to the directory.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;

use super::reference::{pick_quant, HubRef, HubTarget, QuantPickError};

/// The suffix of a download in progress; such a file is never a model.
pub const PART_SUFFIX: &str = ".part";

/// The subdirectory that holds hub downloads.
const HUB_DIR: &str = "hf";

/// Picks the cache directory: `$XPU_MODELS_DIR`; under systemd, `models` in the
/// unit's state directory (`$STATE_DIRECTORY`, the first one if several); else
/// `$XDG_CACHE_HOME/xpu/models`, defaulting to `~/.cache/xpu/models`.
pub fn models_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    if let Some(dir) = set("XPU_MODELS_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dirs) = set("STATE_DIRECTORY") {
        let first = dirs.split(':').next().unwrap_or(&dirs).to_string();
        return Some(Path::new(&first).join("models"));
    }
    if let Some(cache) = set("XDG_CACHE_HOME") {
        return Some(Path::new(&cache).join("xpu/models"));
    }
    set("HOME").map(|home| Path::new(&home).join(".cache/xpu/models"))
}

/// One model file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// Path relative to the cache directory, with `/` separators.
    pub name: String,
    /// The hub reference it was pulled as, for files under `hf/`.
    pub reference: Option<String>,
    pub size: u64,
    pub path: PathBuf,
}

/// The cache directory and the layout inside it.
#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    pub fn new(root: impl Into<PathBuf>) -> ModelCache {
        ModelCache { root: root.into() }
    }

    /// The cache the environment selects (see [`models_dir_from`]).
    pub fn from_env() -> anyhow::Result<ModelCache> {
        models_dir_from(|name| std::env::var(name).ok())
            .map(ModelCache::new)
            .context("cannot find a model cache directory: set XPU_MODELS_DIR (or HOME) to a writable directory")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the hub file `file` of `repo` at `revision` is kept.
    pub fn hub_file(&self, repo: &str, revision: &str, file: &str) -> PathBuf {
        self.hub_revision_dir(repo, revision).join(file)
    }

    fn hub_revision_dir(&self, repo: &str, revision: &str) -> PathBuf {
        // A revision such as `refs/pr/1` stays one directory level.
        self.root
            .join(HUB_DIR)
            .join(repo)
            .join(revision.replace('/', "%2F"))
    }

    /// The cached file a hub reference names, if it is in the cache. A quantization
    /// is picked among the cached GGUF files of that repository and revision.
    pub fn find_hub(&self, reference: &HubRef) -> Result<Option<PathBuf>, QuantPickError> {
        let revision = reference.revision();
        match &reference.target {
            HubTarget::File(file) => {
                let path = self.hub_file(&reference.repo, revision, file);
                Ok(path.is_file().then_some(path))
            }
            HubTarget::Quant(quant) => {
                let dir = self.hub_revision_dir(&reference.repo, revision);
                let files = model_files(&dir);
                let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
                match pick_quant(names.iter().map(String::as_str), quant) {
                    Ok(file) => Ok(Some(dir.join(file))),
                    Err(QuantPickError::Missing { .. }) => Ok(None),
                    Err(ambiguous) => Err(ambiguous),
                }
            }
        }
    }

    /// A model named as `list` shows it (its path relative to the cache), if it is
    /// a file inside the cache.
    pub fn find_name(&self, name: &str) -> Option<PathBuf> {
        let relative = Path::new(name);
        let inside = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        let path = self.root.join(relative);
        (inside && !name.is_empty() && path.is_file()).then_some(path)
    }

    /// Every model file in the cache, sorted by name; partial downloads and hidden
    /// files are left out.
    pub fn list(&self) -> Vec<CachedModel> {
        let mut models: Vec<CachedModel> = model_files(&self.root)
            .into_iter()
            .map(|(name, size)| CachedModel {
                reference: hub_reference_of(&name),
                path: self.root.join(&name),
                name,
                size,
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// Removes a cached model file and its partial download, then the directories
    /// that this leaves empty (up to the cache directory).
    pub fn remove(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        let _ = std::fs::remove_file(part_path(path));
        let mut dir = path.parent();
        while let Some(current) = dir {
            if current == self.root
                || !current.starts_with(&self.root)
                || std::fs::remove_dir(current).is_err()
            {
                break;
            }
            dir = current.parent();
        }
        Ok(())
    }
}

/// The partial-download path of `path`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// `hf:OWNER/REPO/FILE[@REVISION]` for a name under `hf/`.
fn hub_reference_of(name: &str) -> Option<String> {
    let rest = name.strip_prefix(HUB_DIR)?.strip_prefix('/')?;
    let mut parts = rest.splitn(4, '/');
    let (owner, repo, revision, file) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let revision = revision.replace("%2F", "/");
    let at = if revision == super::reference::DEFAULT_REVISION {
        String::new()
    } else {
        format!("@{revision}")
    };
    Some(format!("hf:{owner}/{repo}/{file}{at}"))
}

/// Regular files under `dir` (recursively, relative names with `/`), without
/// hidden entries and partial downloads. A missing directory has none.
fn model_files(dir: &Path) -> Vec<(String, u64)> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(PART_SUFFIX) {
                continue;
            }
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                walk(&entry.path(), &relative, out);
            } else if metadata.is_file() {
                out.push((relative, metadata.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::reference::ModelRef;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn directory_precedence() {
        let all = [
            ("XPU_MODELS_DIR", "/m"),
            ("STATE_DIRECTORY", "/var/lib/x:/var/lib/y"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(models_dir_from(env(&all)), Some("/m".into()));
        assert_eq!(
            models_dir_from(env(&all[1..])),
            Some("/var/lib/x/models".into())
        );
        assert_eq!(
            models_dir_from(env(&all[2..])),
            Some("/home/u/.cache/xpu/models".into())
        );
        assert_eq!(
            models_dir_from(env(&[("XDG_CACHE_HOME", "/c"), ("HOME", "/home/u")])),
            Some("/c/xpu/models".into())
        );
        assert_eq!(
            models_dir_from(env(&[("XPU_MODELS_DIR", ""), ("HOME", "/h")])),
            Some("/h/.cache/xpu/models".into())
        );
        assert_eq!(models_dir_from(env(&[])), None);
    }

    fn hub(reference: &str) -> HubRef {
        match ModelRef::parse(reference).unwrap() {
            ModelRef::Hub(hub) => hub,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_find_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(dir.path());
        let pulled = cache.hub_file("o/r", "main", "m-Q4_0.gguf");
        let pinned = cache.hub_file("o/r", "refs/pr/1", "m-Q8_0.gguf");
        for (path, bytes) in [(&pulled, 3), (&pinned, 5)] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![0u8; bytes]).unwrap();
        }
        std::fs::write(dir.path().join("local.gguf"), b"x").unwrap();
        std::fs::write(dir.path().join("half.gguf.part"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".fetch.1")).unwrap();

        let listed = cache.list();
        let names: Vec<(&str, Option<&str>, u64)> = listed
            .iter()
            .map(|m| (m.name.as_str(), m.reference.as_deref(), m.size))
            .collect();
        assert_eq!(
            names,
            [
                ("hf/o/r/main/m-Q4_0.gguf", Some("hf:o/r/m-Q4_0.gguf"), 3),
                (
                    "hf/o/r/refs%2Fpr%2F1/m-Q8_0.gguf",
                    Some("hf:o/r/m-Q8_0.gguf@refs/pr/1"),
                    5
                ),
                ("local.gguf", None, 1),
            ]
        );

        assert_eq!(
            cache.find_hub(&hub("hf:o/r:q4_0")).unwrap(),
            Some(pulled.clone())
        );
        assert_eq!(cache.find_hub(&hub("hf:o/r:Q8_0")).unwrap(), None);
        assert_eq!(
            cache
                .find_hub(&hub("hf:o/r/m-Q8_0.gguf@refs/pr/1"))
                .unwrap(),
            Some(pinned.clone())
        );
        assert_eq!(
            cache.find_name("local.gguf"),
            Some(dir.path().join("local.gguf"))
        );
        assert_eq!(cache.find_name("../local.gguf"), None);
        assert_eq!(cache.find_name("half.gguf"), None);

        std::fs::write(part_path(&pulled), b"stale").unwrap();
        cache.remove(&pulled).unwrap();
        assert!(!part_path(&pulled).exists());
        assert!(pinned.exists());
        cache.remove(&pinned).unwrap();
        assert!(
            !dir.path().join("hf").exists(),
            "empty hub directories are removed"
        );
        assert!(dir.path().exists());
    }
}
