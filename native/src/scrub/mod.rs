//! Secret scrubbing: the rule engine ([`engine`]), its streaming form ([`stream`]) and the checks
//! that tell a secret from a placeholder ([`accept`]); the rule table is [`crate::rules`].
//!
//! The same search procedure drives the one-shot and the streaming scrubber, so that a stream,
//! however it is chunked, yields exactly the one-shot output.

use base64::Engine as _;

pub mod accept;
pub mod engine;
pub mod forms;
pub mod stream;

pub use accept::accept_value;
pub use engine::{Scratch, Scrubber};
pub use stream::Stream;

/// The replacement for every secret.
pub const REDACTED: &str = "REDACTED";

/// Rule name for the values of the process's own secret environment variables.
pub const ENV_SECRET: &str = "env_secret";

/// Shortest value of a secret environment variable that is matched.
pub const MIN_ENV_SECRET_LEN: usize = 8;

/// Error building a scrubber.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Words that make an environment variable's value a secret, wherever they occur in its name
/// (ASCII case ignored, plus the few characters Python's case-insensitive matching also takes
/// for their letters, see [`is_secret_env_name`]).
pub const SECRET_NAME_WORDS: [&str; 7] = [
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
];

/// Whether an environment variable of this name holds a secret: one of [`SECRET_NAME_WORDS`] in
/// it, letters compared as Python's `re.IGNORECASE` compares them (which also takes the Kelvin
/// sign for K, the long s for S, and dotted and dotless I for I).
pub fn is_secret_env_name(name: &str) -> bool {
    let folded: Vec<u8> = name
        .chars()
        .map(|c| match c {
            '\u{212a}' => b'K',
            '\u{17f}' => b'S',
            '\u{130}' | '\u{131}' => b'I',
            c if c.is_ascii() => c.to_ascii_uppercase() as u8,
            // Never part of a word.
            _ => 0,
        })
        .collect();
    SECRET_NAME_WORDS
        .iter()
        .any(|w| folded.windows(w.len()).any(|win| win == w.as_bytes()))
}

/// The forms in which a literal secret is matched: as is, JSON-escaped, URL-encoded, base64.
pub fn literal_forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_string()];
    let mut json = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '/' => json.push_str("\\/"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
            c => json.push(c),
        }
    }
    forms.push(json.replace("\\/", "/"));
    forms.push(json);
    let pct = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    // Unreserved characters left as they are (RFC 3986), as most encoders do.
    let unreserved = pct
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~");
    // Form encoding: spaces as `+`.
    forms.push(pct.replace("%20", "+"));
    forms.push(unreserved.replace("%20", "+"));
    forms.push(pct);
    forms.push(unreserved);
    let b64 = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    forms.push(b64.trim_end_matches('=').to_string());
    forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.as_bytes()));
    forms.retain(|f| f.len() >= MIN_ENV_SECRET_LEN && f != REDACTED);
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

pub(crate) fn escape_literal(s: &str) -> String {
    regex_syntax_escape(s)
}

fn regex_syntax_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~ \t\n\r\x0b\x0c".contains(c) {
            if c.is_whitespace() {
                out.push_str(&format!("\\x{{{:x}}}", c as u32));
            } else {
                out.push('\\');
                out.push(c);
            }
        } else {
            out.push(c);
        }
    }
    out
}
