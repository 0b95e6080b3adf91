//! The checks that tell a secret from a placeholder or from text that only looks like one.

use base64::Engine as _;

use super::{ENV_SECRET, REDACTED};

const PLACEHOLDER_VALUES: &[&str] = &[
    "true",
    "false",
    "null",
    "none",
    "nil",
    "undefined",
    "empty",
    "required",
    "optional",
    "string",
    "str",
    "bytes",
    "secretstr",
    "int",
    "bool",
    "password",
    "secret",
    "token",
    "changeme",
];

/// Marks of a value that was elided or already redacted (ASCII case-insensitive; values are
/// bounded by their rule, so a few plain searches cost little).
fn has_marker(value: &str) -> bool {
    value.contains("...")
        || value.contains('\u{2026}')
        || value
            .as_bytes()
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"redacted"))
}

/// Placeholders written in place of a token (case-sensitive, see `accept`).
const TOKEN_PLACEHOLDERS: &[&str] = &[
    "your-",
    "your_",
    "YOUR-",
    "YOUR_",
    "xxxxx",
    "XXXXX",
    "EXAMPLE",
    "example",
    "placeholder",
    "PLACEHOLDER",
    "dummy",
    "DUMMY",
];

/// Reject placeholders and values that only look like secrets.
///
/// `before` is the character before the value (spaces skipped), `after` the one after it.
pub(crate) fn accept(
    name: &str,
    token_like: bool,
    value: &str,
    before: Option<char>,
    after: Option<char>,
) -> bool {
    if value.is_empty() || value == REDACTED {
        return false;
    }
    if name == ENV_SECRET {
        return true;
    }
    if has_marker(value) {
        return false;
    }
    match name {
        "assignment" | "url_password" => {
            let lower = value.to_ascii_lowercase();
            let first = value.chars().next().unwrap_or(' ');
            if matches!(first, '<' | '$' | '{' | '%' | '*' | '[' | '(') {
                return false;
            }
            if value.chars().count() < 4 && name == "assignment" {
                return false;
            }
            if PLACEHOLDER_VALUES.contains(&lower.as_str()) {
                return false;
            }
            if matches!(after, Some('(') | Some('[')) {
                return false;
            }
            // Prose: "the secret: practice" (an unquoted plain word after a colon).
            let word = value.trim_end_matches(['.', '!', '?']);
            if before == Some(':')
                && !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_lowercase())
            {
                return false;
            }
            if is_dotted_identifier(value) {
                return false;
            }
            if all_same(value) {
                return false;
            }
            if lower.contains("your")
                && (lower.contains("key")
                    || lower.contains("token")
                    || lower.contains("password")
                    || lower.contains("secret"))
            {
                return false;
            }
            true
        }
        "basic_auth" => match base64::engine::general_purpose::STANDARD.decode(value) {
            Ok(raw) => match std::str::from_utf8(&raw) {
                Ok(s) => s.contains(':') && !s.chars().any(|c| c.is_control()),
                Err(_) => false,
            },
            Err(_) => false,
        },
        _ if token_like => {
            // Case-sensitive on purpose: random key material contains "your" or "Example"
            // often enough, the placeholders people write do not vary case.
            if TOKEN_PLACEHOLDERS.iter().any(|p| value.contains(p)) {
                return false;
            }
            let mut seen = [false; 128];
            let mut distinct = 0;
            for b in value.bytes() {
                if b < 128 && !seen[b as usize] {
                    seen[b as usize] = true;
                    distinct += 1;
                }
            }
            if distinct < 6 {
                return false;
            }
            if name == "bearer" || name == "openai_key" {
                // Prose like "bearer instrument-of-the-realm" or "sk-learn-compatible-models".
                return value.bytes().any(|b| b.is_ascii_digit());
            }
            true
        }
        _ => true,
    }
}

/// Whether a value found under a secret-looking key is a real value (not a placeholder).
pub fn accept_value(rule: &str, value: &str) -> bool {
    accept(rule, false, value, None, None)
}

fn all_same(value: &str) -> bool {
    let mut chars = value.chars();
    match chars.next() {
        Some(c) => chars.all(|d| d == c),
        None => true,
    }
}

fn is_dotted_identifier(value: &str) -> bool {
    let parts: Vec<&str> = value.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            let mut cs = p.chars();
            matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}
