//! A small client for the Hugging Face hub: the file list of a repository at a
//! revision (`/api/models/{repo}/revision/{rev}`) and resumable, verified file
//! downloads (`/{repo}/resolve/{rev}/{file}`).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::cache::part_path;
use super::progress::Progress;

/// The hub's default address; `HF_ENDPOINT` replaces it (a mirror, or a test server).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How often a download whose connection drops resumes before giving up.
const RESUME_ATTEMPTS: usize = 4;

/// Hub settings, read from the environment by [`HubSettings::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    pub endpoint: String,
    /// Sent as a bearer token: needed for gated and private repositories.
    pub token: Option<String>,
    /// Use only cached files; never touch the network.
    pub offline: bool,
}

impl HubSettings {
    /// `HF_ENDPOINT`, `HF_TOKEN` (else the token file `huggingface-cli login`
    /// writes, `$HF_HOME/token`, with `HF_HOME` defaulting to
    /// `~/.cache/huggingface`) and `HF_HUB_OFFLINE`.
    pub fn from_env() -> HubSettings {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> HubSettings {
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = env("HF_TOKEN").or_else(|| {
            let home = env("HF_HOME").map(PathBuf::from).or_else(|| {
                env("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))
                    .map(|cache| cache.join("huggingface"))
            })?;
            let token = std::fs::read_to_string(home.join("token")).ok()?;
            Some(token.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            offline,
        }
    }
}

/// Everything that can go wrong talking to the hub, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot reach the model hub at {endpoint} ({detail}): check the network connection or HF_ENDPOINT; with HF_HUB_OFFLINE=1 only models already in the cache are used")]
    Unreachable { endpoint: String, detail: String },
    #[error("the hub refused access to {what} (HTTP {status}): {}", unauthorized_advice(*had_token))]
    Unauthorized {
        what: String,
        status: u16,
        had_token: bool,
    },
    #[error(
        "{what} was not found on the hub (HTTP 404): check the owner/repository name, the file name and the revision"
    )]
    NotFound { what: String },
    #[error("the hub failed to answer for {what} (HTTP {status}); try again later")]
    Server { what: String, status: u16 },
    #[error("the hub answered HTTP {status} for {what}, which xpu-runner does not expect")]
    UnexpectedStatus { what: String, status: u16 },
    #[error("the hub's file list for {what} is not what xpu-runner expects: {detail}")]
    BadFileList { what: String, detail: String },
    #[error("the download of {file} stopped after {got} of {total} bytes ({detail}); run the same command again to resume it")]
    Interrupted {
        file: String,
        got: u64,
        total: u64,
        detail: String,
    },
    #[error("the disk is full: cannot write {path} ({size} bytes needed in all); free some space and run the same command again to resume the download")]
    DiskFull { path: PathBuf, size: u64 },
    #[error("checksum mismatch for {file}: the hub reports sha256 {expected}, the download has {actual}; the download was deleted, run the command again")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {file}: the hub reports {expected} bytes, the server sent {actual}; the download was deleted, run the command again")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn unauthorized_advice(had_token: bool) -> &'static str {
    if had_token {
        "the access token was refused; check that it is valid and that your account has accepted the model's terms on its hub page"
    } else {
        "the repository is gated or private; accept its terms on its hub page, then pass an access token in HF_TOKEN (or log in so that $HF_HOME/token holds it)"
    }
}

/// One file of a repository, as the hub's API lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RepoFile {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// Large files are stored with Git LFS; the hub reports their sha256.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

impl RepoFile {
    pub fn expected_size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|lfs| lfs.size).or(self.size)
    }

    pub fn expected_sha256(&self) -> Option<&str> {
        self.lfs.as_ref().map(|lfs| lfs.sha256.as_str())
    }
}

#[derive(Deserialize)]
struct RevisionInfo {
    siblings: Vec<RepoFile>,
}

pub struct HubClient {
    settings: HubSettings,
    agent: ureq::Agent,
}

impl HubClient {
    pub fn new(settings: HubSettings) -> HubClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("xpu-runner/", env!("CARGO_PKG_VERSION")))
            .build();
        HubClient {
            settings,
            agent: config.into(),
        }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The files of `repo` at `revision`, with sizes and (for LFS files) sha256.
    pub fn repo_files(&self, repo: &str, revision: &str) -> Result<Vec<RepoFile>, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.settings.endpoint,
            encode(revision)
        );
        let what = format!("repository {repo} at revision {revision}");
        let mut response = self.get(&url, None)?;
        check_status(
            response.status().as_u16(),
            &what,
            self.settings.token.is_some(),
        )?;
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        let info: RevisionInfo =
            serde_json::from_str(&body).map_err(|e| HubError::BadFileList {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        Ok(info.siblings)
    }

    /// Downloads `file` of `repo` at `revision` to `dest`: into `dest.part`,
    /// resuming what a previous attempt left there, then checks the size and
    /// sha256 the hub reported and only then renames it to `dest`.
    pub fn download(
        &self,
        repo: &str,
        revision: &str,
        file: &RepoFile,
        dest: &Path,
    ) -> Result<(), HubError> {
        let name = &file.rfilename;
        let url = format!(
            "{}/{repo}/resolve/{}/{}",
            self.settings.endpoint,
            encode(revision),
            name.split('/').map(encode).collect::<Vec<_>>().join("/")
        );
        let what = format!("file {name} of {repo} at revision {revision}");
        let part = part_path(dest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| HubError::Io {
                context: format!("cannot create the model directory {}", parent.display()),
                source,
            })?;
        }
        let expected_size = file.expected_size();
        let mut hasher = Sha256::new();
        let mut hashed = 0u64;
        let mut progress: Option<Progress> = None;

        for attempt in 1..=RESUME_ATTEMPTS {
            let mut offset = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if expected_size.is_some_and(|size| offset > size) {
                offset = 0;
            }
            if offset > 0 && expected_size == Some(offset) {
                break;
            }
            let response = self.get(&url, (offset > 0).then_some(offset));
            let mut response = match response {
                Ok(response) => response,
                Err(error) if attempt < RESUME_ATTEMPTS && offset > 0 => {
                    tracing::warn!("{error}; retrying");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let status = response.status().as_u16();
            let total = expected_size.unwrap_or(0);
            if status == 416 && expected_size.is_some_and(|size| offset >= size) {
                break;
            }
            check_status(status, &what, self.settings.token.is_some())?;
            // 206: the rest of the file; 200: the whole file (the server ignored the range).
            let start = if status == 206 { offset } else { 0 };
            let mut out = open_part(&part, start, total)?;
            if start != hashed {
                (hasher, hashed) = hash_prefix(&part, start)?;
            }
            let progress = progress.get_or_insert_with(|| Progress::start(name, total, start));
            progress.set_position(start);

            let mut reader = response.body_mut().as_reader();
            let mut buffer = vec![0u8; 1 << 20];
            let mut cut = None;
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        write_part(&mut out, &part, &buffer[..n], total)?;
                        hasher.update(&buffer[..n]);
                        hashed += n as u64;
                        progress.advance(n as u64);
                        if expected_size.is_some_and(|size| hashed > size) {
                            drop(out);
                            let _ = std::fs::remove_file(&part);
                            return Err(HubError::SizeMismatch {
                                file: name.clone(),
                                expected: total,
                                actual: hashed,
                            });
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => {
                        cut = Some(error.to_string());
                        break;
                    }
                }
            }
            out.flush()
                .and_then(|_| out.sync_all())
                .map_err(|e| write_error(e, &part, total))?;
            let short = expected_size.is_some_and(|size| hashed < size);
            match cut.or_else(|| short.then(|| "the connection closed early".to_string())) {
                None => break,
                Some(detail) if attempt < RESUME_ATTEMPTS => {
                    progress.note(&format!(
                        "download of {name} cut after {hashed} bytes ({detail}); resuming"
                    ));
                }
                Some(detail) => {
                    return Err(HubError::Interrupted {
                        file: name.clone(),
                        got: hashed,
                        total,
                        detail,
                    });
                }
            }
        }
        if let Some(progress) = progress.take() {
            progress.finish();
        }

        let got = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if let Some(expected) = expected_size {
            if got != expected {
                return Err(HubError::Interrupted {
                    file: name.clone(),
                    got,
                    total: expected,
                    detail: "the server sent too little".into(),
                });
            }
        }
        if hashed != got {
            (hasher, _) = hash_prefix(&part, got)?;
        }
        let actual = format!("{:x}", hasher.finalize());
        if let Some(expected) = file.expected_sha256() {
            if !actual.eq_ignore_ascii_case(expected) {
                let _ = std::fs::remove_file(&part);
                return Err(HubError::ChecksumMismatch {
                    file: name.clone(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        std::fs::rename(&part, dest).map_err(|source| HubError::Io {
            context: format!("cannot move the finished download to {}", dest.display()),
            source,
        })?;
        tracing::info!(
            "downloaded {name} ({got} bytes, sha256 {actual}) to {}",
            dest.display()
        );
        Ok(())
    }

    fn get(
        &self,
        url: &str,
        from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, HubError> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.settings.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        if let Some(from) = from {
            request = request.header("Range", &format!("bytes={from}-"));
        }
        request.call().map_err(|e| self.transport_error(e))
    }

    fn transport_error(&self, error: ureq::Error) -> HubError {
        HubError::Unreachable {
            endpoint: self.settings.endpoint.clone(),
            detail: error.to_string(),
        }
    }
}

/// Whether the hub's SHA-256 of a cached file matches, reading it once.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn check_status(status: u16, what: &str, had_token: bool) -> Result<(), HubError> {
    let what = what.to_string();
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(HubError::Unauthorized {
            what,
            status,
            had_token,
        }),
        404 => Err(HubError::NotFound { what }),
        500..=599 => Err(HubError::Server { what, status }),
        _ => Err(HubError::UnexpectedStatus { what, status }),
    }
}

/// Opens the partial file for appending at `start` (dropping anything after it).
fn open_part(part: &Path, start: u64, total: u64) -> Result<File, HubError> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|source| HubError::Io {
            context: format!("cannot write {}", part.display()),
            source,
        })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len != start && file.metadata().is_ok_and(|m| m.is_file()) {
        file.set_len(start)
            .map_err(|e| write_error(e, part, total))?;
    }
    Ok(file)
}

fn write_part(out: &mut File, part: &Path, bytes: &[u8], total: u64) -> Result<(), HubError> {
    out.write_all(bytes)
        .map_err(|e| write_error(e, part, total))
}

fn write_error(error: std::io::Error, part: &Path, total: u64) -> HubError {
    if error.kind() == ErrorKind::StorageFull {
        HubError::DiskFull {
            path: part.to_path_buf(),
            size: total,
        }
    } else {
        HubError::Io {
            context: format!("cannot write {}", part.display()),
            source: error,
        }
    }
}

/// The hash of the first `len` bytes of the partial file (what an earlier run wrote).
fn hash_prefix(part: &Path, len: u64) -> Result<(Sha256, u64), HubError> {
    let mut hasher = Sha256::new();
    if len > 0 {
        let file = File::open(part).map_err(|source| HubError::Io {
            context: format!("cannot read {}", part.display()),
            source,
        })?;
        let copied =
            std::io::copy(&mut file.take(len), &mut hasher).map_err(|source| HubError::Io {
                context: format!("cannot read {}", part.display()),
                source,
            })?;
        return Ok((hasher, copied));
    }
    Ok((hasher, 0))
}

/// Percent-encodes one URL path segment.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let env = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let plain = HubSettings::from_lookup(env(vec![]));
        assert_eq!(
            plain,
            HubSettings {
                endpoint: DEFAULT_ENDPOINT.into(),
                token: None,
                offline: false
            }
        );
        let set = HubSettings::from_lookup(env(vec![
            ("HF_ENDPOINT", "http://127.0.0.1:9/".into()),
            ("HF_HOME", home.clone()),
            ("HF_HUB_OFFLINE", "1".into()),
        ]));
        assert_eq!(
            set,
            HubSettings {
                endpoint: "http://127.0.0.1:9".into(),
                token: Some("hf_file".into()),
                offline: true
            }
        );
        let explicit =
            HubSettings::from_lookup(env(vec![("HF_HOME", home), ("HF_TOKEN", "hf_env".into())]));
        assert_eq!(explicit.token.as_deref(), Some("hf_env"));
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("model Q4.gguf"), "model%20Q4.gguf");
    }
}
