//! The Nix rendering: a `tera` template lays out the attribute set, and the `nix` filter
//! turns each JSON value into a Nix expression (strings escaped, keys quoted when needed).

use std::collections::HashMap;

use serde_json::Value;

use crate::facts::Facts;

const TEMPLATE_NAME: &str = "facts.nix";
const TEMPLATE: &str = include_str!("facts.nix.tera");

/// The template failed to render (a bug in the template, reported rather than panicking).
#[derive(Debug, thiserror::Error)]
#[error("cannot render facts as Nix: {0}")]
pub struct NixError(String);

impl From<tera::Error> for NixError {
    fn from(err: tera::Error) -> Self {
        // tera keeps the useful part in the source chain.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        NixError(message)
    }
}

/// Renders the facts as a Nix expression.
pub fn nix(facts: &Facts) -> Result<String, NixError> {
    let mut tera = tera::Tera::default();
    tera.add_raw_template(TEMPLATE_NAME, TEMPLATE)?;
    tera.register_filter("nix", nix_filter);
    let mut context = tera::Context::new();
    context.insert("facts", facts);
    Ok(tera.render(TEMPLATE_NAME, &context)?)
}

fn nix_filter(value: &Value, args: &HashMap<String, Value>) -> tera::Result<Value> {
    let indent = match args.get("indent") {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| tera::Error::msg("the nix filter's indent must be a number"))?
            as usize,
    };
    let mut out = String::new();
    write_value(value, indent, &mut out);
    Ok(Value::String(out))
}

/// Writes `value` as a Nix expression; nested lines are indented by `indent` levels.
pub fn write_value(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) if items.is_empty() => out.push_str("[ ]"),
        Value::Array(items) => {
            out.push_str("[\n");
            for item in items {
                push_indent(indent + 1, out);
                // A list element must be a simple expression: parenthesise negative numbers.
                write_value(item, indent + 1, out);
                out.push('\n');
            }
            push_indent(indent, out);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{ }"),
        Value::Object(map) => {
            out.push_str("{\n");
            for (key, item) in map {
                push_indent(indent + 1, out);
                write_key(key, out);
                out.push_str(" = ");
                write_value(item, indent + 1, out);
                out.push_str(";\n");
            }
            push_indent(indent, out);
            out.push('}');
        }
    }
}

fn push_indent(levels: usize, out: &mut String) {
    for _ in 0..levels {
        out.push_str("  ");
    }
}

fn write_number(n: &serde_json::Number, out: &mut String) {
    if let Some(i) = n.as_i64() {
        if i < 0 {
            out.push_str(&format!("({i})"));
        } else {
            out.push_str(&i.to_string());
        }
    } else if let Some(u) = n.as_u64() {
        // Above i64::MAX: Nix has no such integer; keep the digits as a string.
        write_string(&u.to_string(), out);
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        // Nix floats need a dot before any exponent ("1e21" is not a float in Nix).
        let mut text = format!("{:?}", f.abs());
        if !text.contains('.') {
            match text.find(['e', 'E']) {
                Some(pos) => text.insert_str(pos, ".0"),
                None => text.push_str(".0"),
            }
        }
        if f < 0.0 {
            out.push_str(&format!("(-{text})"));
        } else {
            out.push_str(&text);
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_key(key: &str, out: &mut String) {
    const KEYWORDS: [&str; 10] = [
        "if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or",
    ];
    let mut chars = key.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'));
    if identifier && !KEYWORDS.contains(&key) {
        out.push_str(key);
    } else {
        write_string(key, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(value: Value) -> String {
        let mut out = String::new();
        write_value(&value, 0, &mut out);
        out
    }

    #[test]
    fn scalars() {
        assert_eq!(render(json!(null)), "null");
        assert_eq!(render(json!(-1)), "(-1)");
        assert_eq!(render(json!(32.0)), "32.0");
        assert_eq!(render(json!(1e21)), "1.0e21");
        assert_eq!(render(json!(-2.5)), "(-2.5)");
        assert_eq!(
            render(json!("a\"b\\c${d}$e\n")),
            "\"a\\\"b\\\\c\\${d}$e\\n\""
        );
    }

    #[test]
    fn containers() {
        assert_eq!(render(json!([])), "[ ]");
        assert_eq!(render(json!({})), "{ }");
        assert_eq!(
            render(json!({"a": [1, "x"], "in": true, "0000:00:02.0": null})),
            "{\n  \"0000:00:02.0\" = null;\n  a = [\n    1\n    \"x\"\n  ];\n  \"in\" = true;\n}"
        );
    }
}
