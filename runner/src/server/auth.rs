//! API keys: loaded from `--api-key-file` (one per line) and checked on every route
//! except `/health`. Keys are compared through their SHA-256 digests with a
//! constant-time comparison over all configured keys, so that neither the position
//! of the first differing byte nor the key's length nor which key matched shows in
//! the response time.

use std::path::Path;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted keys, kept only as digests.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// Parses the key file's text: one key per line, blank lines and `#` comments
    /// ignored, surrounding white space trimmed.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let digests: Vec<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|k| digest(k.as_bytes()))
            .collect();
        if digests.is_empty() {
            anyhow::bail!("the API key file has no keys (one key per line is expected)");
        }
        Ok(ApiKeys { digests })
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read --api-key-file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("--api-key-file {}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `candidate` is one of the keys; visits every key.
    pub fn accepts(&self, candidate: &str) -> bool {
        let wanted = digest(candidate.as_bytes());
        let mut found = subtle::Choice::from(0u8);
        for key in &self.digests {
            found |= key.ct_eq(&wanted);
        }
        found.into()
    }

    /// Checks the `Authorization: Bearer KEY` or `X-Api-Key: KEY` header; the error
    /// says which is missing or wrong, never the key.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let presented = if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| "the Authorization header is not valid text")?;
            // RFC 9110 §11.1: the scheme is case-insensitive and one or more spaces
            // separate it from the credentials.
            match value.trim_start().split_once(' ') {
                Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => {
                    key.trim().to_owned()
                }
                _ => return Err("the Authorization header must be `Bearer <key>`"),
            }
        } else if let Some(value) = headers.get("x-api-key") {
            value
                .to_str()
                .map_err(|_| "the X-Api-Key header is not valid text")?
                .trim()
                .to_owned()
        } else {
            return Err("an API key is required: send `Authorization: Bearer <key>`");
        };
        if self.accepts(&presented) {
            Ok(())
        } else {
            Err("the API key is not valid")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_ignores_comments() {
        let keys = ApiKeys::parse("# ops\n\n  alpha  \nbeta\n").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts(""));
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(ApiKeys::parse("# nothing\n\n").is_err());
    }

    #[test]
    fn headers() {
        let keys = ApiKeys::parse("k1").unwrap();
        let mut h = HeaderMap::new();
        assert!(keys.check(&h).unwrap_err().contains("required"));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(keys.check(&h).is_ok());
        h.insert(header::AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(keys.check(&h).unwrap_err(), "the API key is not valid");
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            h.insert(
                header::AUTHORIZATION,
                format!("{scheme} k1").parse().unwrap(),
            );
            assert!(keys.check(&h).is_ok(), "{scheme}");
        }
        h.insert(header::AUTHORIZATION, "Bearer   k1".parse().unwrap());
        assert!(keys.check(&h).is_ok());
        h.insert(header::AUTHORIZATION, "Bearerk1".parse().unwrap());
        assert!(keys.check(&h).unwrap_err().contains("Bearer"));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert!(keys.check(&h).unwrap_err().contains("Bearer"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k1".parse().unwrap());
        assert!(keys.check(&h).is_ok());
    }
}
