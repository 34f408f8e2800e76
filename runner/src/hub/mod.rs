//! Getting models: references (`hf:OWNER/REPO/FILE.gguf`, `hf:OWNER/REPO:QUANT`,
//! local paths), the model cache directory, and downloads from the Hugging Face
//! hub. [`resolve_model`] turns any reference into a local path.

pub mod cache;
pub mod client;
mod progress;
pub mod reference;

use std::path::PathBuf;

use anyhow::Context;

pub use cache::{CachedModel, ModelCache};
pub use client::{HubClient, HubError, HubSettings};
pub use reference::{HubRef, HubTarget, ModelRef};

/// What to do when the model is already cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Use the cached file without asking the hub (every command that loads a model).
    UseCached,
    /// Ask the hub, and download again if the cached file differs (`pull`).
    CheckHub,
}

/// Fetches hub references into one cache.
pub struct Fetcher {
    pub cache: ModelCache,
    pub client: HubClient,
}

impl Fetcher {
    /// The cache and hub settings the environment selects.
    pub fn from_env() -> anyhow::Result<Fetcher> {
        Ok(Fetcher {
            cache: ModelCache::from_env()?,
            client: HubClient::new(HubSettings::from_env()),
        })
    }

    /// Any reference to a local path. A path that does not exist but names a file
    /// in the cache (as `list` shows it) is taken from the cache.
    pub fn resolve(&self, reference: &ModelRef, freshness: Freshness) -> anyhow::Result<PathBuf> {
        match reference {
            ModelRef::Path(path) => {
                if !path.exists() && path.is_relative() {
                    if let Some(cached) = self.cache.find_name(&path.to_string_lossy()) {
                        return Ok(cached);
                    }
                }
                Ok(path.clone())
            }
            ModelRef::Hub(hub) => self.fetch(hub, freshness),
        }
    }

    /// The local path of a hub file, downloading it if needed.
    pub fn fetch(&self, reference: &HubRef, freshness: Freshness) -> anyhow::Result<PathBuf> {
        let cached = self
            .cache
            .find_hub(reference)
            .with_context(|| format!("{reference} in the model cache"))?;
        if self.client.settings().offline {
            return cached.with_context(|| {
                format!(
                    "{reference} is not in the model cache ({}) and HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to download it, or pull it on a machine with network access",
                    self.cache.root().display()
                )
            });
        }
        if let (Some(path), Freshness::UseCached) = (&cached, freshness) {
            return Ok(path.clone());
        }

        let revision = reference.revision();
        let files = self.client.repo_files(&reference.repo, revision)?;
        let file = match &reference.target {
            HubTarget::File(name) => files
                .iter()
                .find(|f| &f.rfilename == name)
                .cloned()
                .ok_or_else(|| {
                    let ggufs: Vec<&str> = files
                        .iter()
                        .map(|f| f.rfilename.as_str())
                        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
                        .collect();
                    HubError::NotFound {
                        what: format!(
                            "file {name} of {} at revision {revision} (its GGUF files: {})",
                            reference.repo,
                            if ggufs.is_empty() {
                                "none".to_string()
                            } else {
                                ggufs.join(", ")
                            }
                        ),
                    }
                })?,
            HubTarget::Quant(quant) => {
                let name = reference::pick_quant(files.iter().map(|f| f.rfilename.as_str()), quant)
                    .with_context(|| {
                        format!("{reference}: in {} at revision {revision}", reference.repo)
                    })?;
                files
                    .iter()
                    .find(|f| f.rfilename == name)
                    .cloned()
                    .expect("picked from this list")
            }
        };
        let dest = self
            .cache
            .hub_file(&reference.repo, revision, &file.rfilename);
        if dest.is_file() && self.matches_hub(&dest, &file)? {
            tracing::info!("{} is up to date", dest.display());
            return Ok(dest);
        }
        self.client
            .download(&reference.repo, revision, &file, &dest)?;
        Ok(dest)
    }

    /// Whether a cached file has the size and sha256 the hub reports.
    fn matches_hub(&self, path: &std::path::Path, file: &client::RepoFile) -> anyhow::Result<bool> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if file
            .expected_size()
            .is_some_and(|expected| expected != size)
        {
            return Ok(false);
        }
        match file.expected_sha256() {
            Some(expected) => {
                let actual = client::file_sha256(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(actual.eq_ignore_ascii_case(expected))
            }
            None => Ok(true),
        }
    }
}

/// A model reference as every command takes it (`--model`), turned into a local
/// path: hub references are downloaded into the cache on first use.
pub fn resolve_model(reference: &str) -> anyhow::Result<PathBuf> {
    let parsed = ModelRef::parse(reference)?;
    if let ModelRef::Path(path) = &parsed {
        if path.exists() || path.is_absolute() {
            return Ok(path.clone());
        }
    }
    Fetcher::from_env()?.resolve(&parsed, Freshness::UseCached)
}
