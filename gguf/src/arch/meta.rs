//! Typed reads of an architecture's metadata keys (`{arch}.{name}`), with errors that
//! name the key.

use candle_core::quantized::gguf_file::{Content, Value};

use super::ArchError;

pub(super) struct Meta<'a> {
    content: &'a Content,
    arch: &'static str,
}

impl<'a> Meta<'a> {
    pub(super) fn new(content: &'a Content, arch: &'static str) -> Self {
        Meta { content, arch }
    }

    /// The full key of `name`.
    pub(super) fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.content.metadata.get(&self.key(name))
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn bad(&self, name: &str, what: &str) -> ArchError {
        ArchError::Metadata(format!("metadata `{}` must be {what}", self.key(name)))
    }

    fn usize_opt(&self, name: &str) -> Result<Option<usize>, ArchError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => crate::value_u64(v)
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.bad(name, "a non-negative integer")),
        }
    }

    /// A required integer above 0.
    pub(super) fn positive(&self, name: &str) -> Result<usize, ArchError> {
        match self.usize_opt(name) {
            Ok(Some(v)) if v > 0 => Ok(v),
            Ok(Some(_)) | Err(_) => Err(self.bad(name, "a positive integer")),
            Ok(None) => Err(ArchError::Metadata(format!(
                "metadata `{}` is missing",
                self.key(name)
            ))),
        }
    }

    pub(super) fn usize_or(&self, name: &str, default: usize) -> Result<usize, ArchError> {
        Ok(self.usize_opt(name)?.unwrap_or(default))
    }

    pub(super) fn f32_opt(&self, name: &str) -> Result<Option<f32>, ArchError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::F32(v)) if v.is_finite() => Ok(Some(*v)),
            Some(Value::F64(v)) if v.is_finite() => Ok(Some(*v as f32)),
            Some(_) => Err(self.bad(name, "a finite floating-point number")),
        }
    }

    pub(super) fn f32_or(&self, name: &str, default: f32) -> Result<f32, ArchError> {
        Ok(self.f32_opt(name)?.unwrap_or(default))
    }

    pub(super) fn f32_required(&self, name: &str) -> Result<f32, ArchError> {
        self.f32_opt(name)?
            .ok_or_else(|| ArchError::Metadata(format!("metadata `{}` is missing", self.key(name))))
    }

    pub(super) fn string(&self, name: &str) -> Result<Option<&'a str>, ArchError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(name, "a string")),
        }
    }

    /// A boolean array, or `None` when the key is absent or holds a single value.
    pub(super) fn bools(&self, name: &str) -> Result<Option<Vec<bool>>, ArchError> {
        match self.get(name) {
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => Ok(*b),
                    _ => Err(self.bad(name, "an integer or an array of booleans")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Ok(None),
        }
    }
}
