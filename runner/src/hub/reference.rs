//! Model references: what `--model`, `pull` and `rm` accept. A reference is a
//! local path, one GGUF file of a Hugging Face repository
//! (`hf:OWNER/REPO/FILE.gguf[@REVISION]`), or the GGUF file of one quantization
//! in such a repository (`hf:OWNER/REPO:QUANT[@REVISION]`).

use std::fmt;
use std::path::PathBuf;

/// The prefix that marks a Hugging Face reference.
pub const HUB_PREFIX: &str = "hf:";

/// The revision used when a reference names none.
pub const DEFAULT_REVISION: &str = "main";

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A file or directory on this machine.
    Path(PathBuf),
    /// A GGUF file on the hub.
    Hub(HubRef),
}

/// A model on the hub: a repository, what to take from it, and at which revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/REPO`.
    pub repo: String,
    pub target: HubTarget,
    /// Branch, tag or commit; `None` means [`DEFAULT_REVISION`].
    pub revision: Option<String>,
}

/// Which file of the repository a [`HubRef`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTarget {
    /// A file path inside the repository.
    File(String),
    /// A quantization name such as `Q4_K_M`, matched against the GGUF file names.
    Quant(String),
}

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad model reference `{reference}`: {reason}; use a local path, hf:OWNER/REPO/FILE.gguf[@REVISION] or hf:OWNER/REPO:QUANT[@REVISION]")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl ModelRef {
    /// Parses a reference. Anything without the `hf:` prefix is a local path.
    pub fn parse(reference: &str) -> Result<ModelRef, ReferenceError> {
        match reference.strip_prefix(HUB_PREFIX) {
            Some(rest) => HubRef::parse_after_prefix(rest)
                .map(ModelRef::Hub)
                .map_err(|reason| ReferenceError {
                    reference: reference.to_string(),
                    reason,
                }),
            None if reference.is_empty() => Err(ReferenceError {
                reference: String::new(),
                reason: "it is empty".into(),
            }),
            None => Ok(ModelRef::Path(PathBuf::from(reference))),
        }
    }
}

impl HubRef {
    /// The revision to fetch.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// This reference with its target replaced by one file (after a quant pick).
    pub fn with_file(&self, file: &str) -> HubRef {
        HubRef {
            target: HubTarget::File(file.to_string()),
            ..self.clone()
        }
    }

    fn parse_after_prefix(rest: &str) -> Result<HubRef, String> {
        let (body, revision) = match rest.rsplit_once('@') {
            Some((body, revision)) => {
                if revision.is_empty() || revision.chars().any(|c| c.is_whitespace() || c == ':') {
                    return Err(format!(
                        "the revision after `@` (`{revision}`) must be a branch, tag or commit"
                    ));
                }
                if revision
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..")
                {
                    return Err(format!(
                        "the revision `{revision}` has an empty, `.` or `..` part"
                    ));
                }
                (body, Some(revision.to_string()))
            }
            None => (rest, None),
        };
        if let Some((repo, quant)) = body.split_once(':') {
            check_repo(repo)?;
            if quant.is_empty()
                || !quant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(format!(
                    "the quantization after `:` (`{quant}`) must be a name such as Q4_K_M (letters, digits, `_`, `-`, `.`)"
                ));
            }
            return Ok(HubRef {
                repo: repo.to_string(),
                target: HubTarget::Quant(quant.to_string()),
                revision,
            });
        }
        let mut parts = body.splitn(3, '/');
        let (owner, name, file) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let repo = format!("{owner}/{name}");
        check_repo(&repo)?;
        if file.is_empty() {
            return Err("it names a repository but no file: add /FILE.gguf or :QUANT".into());
        }
        if file
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == ".." || part.contains('\\'))
        {
            return Err(format!(
                "the file path `{file}` has an empty, `.`, `..` or `\\` part"
            ));
        }
        if !file.to_ascii_lowercase().ends_with(".gguf") {
            return Err(format!(
                "`{file}` is not a .gguf file; only GGUF files are fetched from the hub"
            ));
        }
        Ok(HubRef {
            repo,
            target: HubTarget::File(file.to_string()),
            revision,
        })
    }
}

/// `OWNER/REPO`, each part made of letters, digits, `-`, `_` and `.`.
fn check_repo(repo: &str) -> Result<(), String> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid_part(owner) && valid_part(name) => Ok(()),
        _ => Err(format!("`{repo}` is not OWNER/REPO (two names of letters, digits, `-`, `_`, `.`, joined by `/`)")),
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            HubTarget::File(file) => write!(f, "{HUB_PREFIX}{}/{file}", self.repo)?,
            HubTarget::Quant(quant) => write!(f, "{HUB_PREFIX}{}:{quant}", self.repo)?,
        }
        if let Some(revision) = &self.revision {
            write!(f, "@{revision}")?;
        }
        Ok(())
    }
}

/// Picks the one GGUF file of quantization `quant` among a repository's files.
/// The quantization must appear in the file name as a whole part, delimited by
/// `-`, `.` or the path's `/` (so `Q4_K` does not match `Q4_K_M`), in any case.
pub fn pick_quant<'a>(
    files: impl IntoIterator<Item = &'a str>,
    quant: &str,
) -> Result<String, QuantPickError> {
    let ggufs: Vec<&str> = files
        .into_iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    let wanted = quant.to_ascii_uppercase();
    let matches: Vec<&str> = ggufs
        .iter()
        .copied()
        .filter(|file| names_quant(file, &wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(QuantPickError::Missing {
            quant: quant.to_string(),
            candidates: ggufs.iter().map(|s| s.to_string()).collect(),
        }),
        several => Err(QuantPickError::Ambiguous {
            quant: quant.to_string(),
            candidates: several.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

fn names_quant(file: &str, wanted_upper: &str) -> bool {
    let stem = &file[..file.len() - ".gguf".len()];
    let upper = stem.to_ascii_uppercase();
    let is_delimiter = |c: Option<char>| c.is_none_or(|c| "-./".contains(c));
    upper.match_indices(wanted_upper).any(|(at, found)| {
        is_delimiter(upper[..at].chars().next_back())
            && is_delimiter(upper[at + found.len()..].chars().next())
    })
}

/// Why a quantization did not name exactly one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantPickError {
    #[error(
        "no GGUF file of quantization {quant}; the GGUF files there are: {}",
        list(candidates)
    )]
    Missing {
        quant: String,
        candidates: Vec<String>,
    },
    #[error(
        "quantization {quant} matches several files: {}; name one as hf:OWNER/REPO/FILE",
        list(candidates)
    )]
    Ambiguous {
        quant: String,
        candidates: Vec<String>,
    },
}

fn list(files: &[String]) -> String {
    if files.is_empty() {
        "none".into()
    } else {
        files.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(reference: &str) -> HubRef {
        match ModelRef::parse(reference).unwrap() {
            ModelRef::Hub(hub) => hub,
            other => panic!("not a hub reference: {other:?}"),
        }
    }

    #[test]
    fn paths_stay_paths() {
        assert_eq!(
            ModelRef::parse("models/a.gguf").unwrap(),
            ModelRef::Path("models/a.gguf".into())
        );
        assert_eq!(
            ModelRef::parse("/abs/dir").unwrap(),
            ModelRef::Path("/abs/dir".into())
        );
        assert!(ModelRef::parse("").is_err());
    }

    #[test]
    fn file_references() {
        let r = hub("hf:owner/repo/sub/model.Q4_1.gguf");
        assert_eq!(r.repo, "owner/repo");
        assert_eq!(r.target, HubTarget::File("sub/model.Q4_1.gguf".into()));
        assert_eq!(r.revision(), "main");
        let r = hub("hf:owner/repo/model.gguf@0123abc");
        assert_eq!(r.revision.as_deref(), Some("0123abc"));
        assert_eq!(r.to_string(), "hf:owner/repo/model.gguf@0123abc");
    }

    #[test]
    fn quant_references() {
        let r = hub("hf:owner/repo-GGUF:Q4_K_M");
        assert_eq!(r.repo, "owner/repo-GGUF");
        assert_eq!(r.target, HubTarget::Quant("Q4_K_M".into()));
        let r = hub("hf:owner/repo:q8_0@v1.0");
        assert_eq!(r.revision(), "v1.0");
        assert_eq!(r.to_string(), "hf:owner/repo:q8_0@v1.0");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (reference, needle) in [
            ("hf:", "not OWNER/REPO"),
            ("hf:owner", "not OWNER/REPO"),
            ("hf:owner/repo", "no file"),
            ("hf:owner/repo/", "no file"),
            ("hf:owner/repo/model.bin", "not a .gguf"),
            ("hf:owner/repo/../x.gguf", "`..`"),
            ("hf:owner/repo/a//x.gguf", "empty"),
            ("hf:owner/repo:", "quantization"),
            ("hf:owner/repo:Q4 K", "quantization"),
            ("hf:own er/repo:Q4", "not OWNER/REPO"),
            ("hf:owner/repo/x.gguf@", "revision"),
            ("hf:owner/repo/x.gguf@a/../b", "revision"),
        ] {
            let error = ModelRef::parse(reference).unwrap_err().to_string();
            assert!(
                error.contains(needle),
                "{reference}: `{needle}` missing from: {error}"
            );
            assert!(
                error.contains(reference),
                "{reference} missing from: {error}"
            );
        }
    }

    #[test]
    fn quant_pick_matches_whole_parts() {
        let files = [
            "README.md",
            "model-Q4_K_M.gguf",
            "model-Q4_K_S.gguf",
            "model.Q8_0.gguf",
            "q4_k/model-q4_k.gguf",
        ];
        assert_eq!(pick_quant(files, "Q4_K_M").unwrap(), "model-Q4_K_M.gguf");
        assert_eq!(pick_quant(files, "q8_0").unwrap(), "model.Q8_0.gguf");
        assert_eq!(pick_quant(files, "Q4_K").unwrap(), "q4_k/model-q4_k.gguf");
        let missing = pick_quant(files, "Q2_K").unwrap_err();
        assert!(
            matches!(&missing, QuantPickError::Missing { candidates, .. } if candidates.len() == 4)
        );
        assert!(missing.to_string().contains("model.Q8_0.gguf"));
    }

    #[test]
    fn quant_pick_refuses_ambiguity() {
        let files = ["a-Q4_0.gguf", "b-Q4_0.gguf", "c-Q8_0.gguf"];
        let error = pick_quant(files, "Q4_0").unwrap_err();
        assert_eq!(
            error,
            QuantPickError::Ambiguous {
                quant: "Q4_0".into(),
                candidates: vec!["a-Q4_0.gguf".into(), "b-Q4_0.gguf".into()]
            }
        );
        assert!(error.to_string().contains("a-Q4_0.gguf, b-Q4_0.gguf"));
    }
}
