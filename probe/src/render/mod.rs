//! Writing facts for people and programs: JSON (the contract), Nix (for NixOS configurations)
//! and a short text summary.

mod nix;
mod text;

use crate::facts::Facts;

pub use nix::{nix as to_nix, NixError};
pub use text::text as to_text;

/// Output formats of `xpu-probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Pretty JSON, `schema_version: 1` (the default).
    Json,
    /// A Nix attribute set with the same content as the JSON.
    Nix,
    /// A short human summary.
    Text,
}

/// Pretty JSON with a trailing newline.
pub fn to_json(facts: &Facts) -> String {
    let mut json = serde_json::to_string_pretty(facts).expect("facts serialise to JSON");
    json.push('\n');
    json
}

/// Renders `facts` in `format`.
pub fn render(facts: &Facts, format: Format) -> Result<String, NixError> {
    match format {
        Format::Json => Ok(to_json(facts)),
        Format::Nix => to_nix(facts),
        Format::Text => Ok(to_text(facts)),
    }
}
