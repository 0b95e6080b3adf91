//! The checks that tell a secret from a placeholder or from text that only looks like one.
//!
//! Every check reads the match and a few bytes around it, never more: a match is bounded by its
//! rule, so checking costs about one more read of it.

use base64::Engine as _;

use super::REDACTED;
use crate::rules::{Check, Checksum, Kind, Target};

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
    "Example",
    "placeholder",
    "PLACEHOLDER",
    "dummy",
    "DUMMY",
    "00000000",
    "12345678",
    "abcdefgh",
    "ABCDEFGH",
    "*****",
];

/// Placeholders written in place of a value (ASCII case ignored): values found by a keyword or
/// a context are checked against these, then for credential-like letters.
const VALUE_PLACEHOLDERS: &[&str] = &[
    "your",
    "xxxx",
    "example",
    "placeholder",
    "dummy",
    "sample",
    "changeme",
    "replace",
    "insert",
    "redacted",
    "secret_here",
    "key_here",
    "token_here",
    "12345678",
    "abcdefgh",
    "****",
];

/// What the engine saw: the secret, the match around it and the characters next to them.
pub(crate) struct Seen<'a> {
    /// The secret (the secret group, else the whole match).
    pub value: &'a str,
    /// The secret after the start literal it was found by (the secret when it has none).
    pub body: &'a str,
    /// The whole match.
    pub whole: &'a str,
    /// Up to three bytes before the match.
    pub before_match: &'a [u8],
    /// The character before the secret inside the match, spaces skipped.
    pub before: Option<char>,
    /// The character after the secret.
    pub after: Option<char>,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether a token may start after `prefix`: not inside a word, except after an escape (`\n`
/// of a JSON string, `%3D` of a URL), which ends in a letter or digit.
fn starts_a_token(prefix: &[u8]) -> bool {
    match prefix {
        [] => true,
        [.., b] if !is_word(*b) => true,
        [.., b'\\', _] => true,
        [.., b'%', h, l] => h.is_ascii_hexdigit() && l.is_ascii_hexdigit(),
        _ => false,
    }
}

/// Shannon entropy of the bytes, in bits per byte.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A value made of one short unit said again and again (`aaaa`, `abab`, `0000`).
fn repeated(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=4).any(|unit| b.len() >= 2 * unit && (unit..b.len()).all(|i| b[i] == b[i - unit]))
}

/// Words joined by separators (`sk-learn-compatible-models`, `glft-the-secret-auth0`,
/// `xoxa-rapidapi-17-datadog`): three or more lowercase words of three letters or more, together
/// half the text or more, or two that are three quarters of it. Random key material over a
/// mixed alphabet has a digit or a capital in almost every run of letters.
fn words(s: &str) -> bool {
    let (mut n, mut len) = (0, 0);
    for p in s.split(['-', '_', '.', '/']) {
        if p.len() >= 3 && p.bytes().all(|b| b.is_ascii_lowercase()) {
            n += 1;
            len += p.len();
        }
    }
    (n >= 3 && len * 2 >= s.len()) || (n >= 2 && len * 4 >= s.len() * 3)
}

fn distinct(s: &str) -> usize {
    let mut seen = [false; 256];
    let mut n = 0;
    for b in s.bytes() {
        if !seen[b as usize] {
            seen[b as usize] = true;
            n += 1;
        }
    }
    n
}

/// A constant's name written where its value belongs (`ACCESS_TOKEN`, `API_KEY`).
fn constant_name(s: &str) -> bool {
    s.len() >= 3
        && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        && s.bytes().any(|b| b.is_ascii_uppercase())
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// GitHub's and npm's checksum: the last six characters are the CRC32 of the random part in
/// base62 (`0-9A-Za-z`).
fn crc32_base62(value: &str) -> bool {
    let body = value.rsplit('_').next().unwrap_or(value);
    if body.len() < 7 {
        return false;
    }
    let (random, sum) = body.split_at(body.len() - 6);
    let mut n: u64 = 0;
    for b in sum.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return false,
        };
        n = n * 62 + d as u64;
    }
    n == crc32(random.as_bytes()) as u64
}

fn checksum_holds(c: Checksum, value: &str) -> bool {
    match c {
        Checksum::Crc32Base62 => crc32_base62(value),
    }
}

/// Base64 text with its JSON and URL escapes undone.
fn b64_clean(value: &str) -> String {
    value
        .replace("%2B", "+")
        .replace("%2b", "+")
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("\\/", "/")
        .replace("%3D", "=")
        .replace("%3d", "=")
}

/// Whether the value decodes (base64, also URL-encoded) to text that holds a PEM private key.
fn pem_base64(value: &str) -> bool {
    let clean = b64_clean(value);
    let clean = clean.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(clean)
        .ok()
        .is_some_and(|raw| raw.windows(11).any(|w| w == b"PRIVATE KEY"))
}

/// Whether the first part of a JWT decodes to a JSON object.
fn jwt_header(value: &str) -> bool {
    let head = value.split('.').next().unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .is_some_and(|raw| raw.first() == Some(&b'{'))
}

/// One search for all the token placeholders (case-sensitive) and one for the value placeholders
/// (ASCII case ignored): every accepted secret goes through them.
fn placeholder_search(case_sensitive: bool) -> Option<&'static aho_corasick::AhoCorasick> {
    static EXACT: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> =
        std::sync::OnceLock::new();
    static FOLDED: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> =
        std::sync::OnceLock::new();
    if case_sensitive {
        EXACT
            .get_or_init(|| aho_corasick::AhoCorasick::new(TOKEN_PLACEHOLDERS).ok())
            .as_ref()
    } else {
        FOLDED
            .get_or_init(|| {
                aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(VALUE_PLACEHOLDERS)
                    .ok()
            })
            .as_ref()
    }
}

fn has_placeholder(value: &str, case_sensitive: bool) -> bool {
    match placeholder_search(case_sensitive) {
        Some(ac) => ac.is_match(value),
        None if case_sensitive => TOKEN_PLACEHOLDERS.iter().any(|p| value.contains(p)),
        None => {
            let lower = value.to_ascii_lowercase();
            VALUE_PLACEHOLDERS.iter().any(|p| lower.contains(p))
        }
    }
}

/// The checks every credential-looking value goes through (tokens, keyword and context values).
fn looks_random(check: &Check, seen: &Seen<'_>, case_sensitive: bool) -> bool {
    let value = seen.value;
    // Tokens case-sensitively on purpose: random key material contains "your" or "Example"
    // often enough, the placeholders people write in place of a token do not vary case.
    if has_placeholder(value, case_sensitive) {
        return false;
    }
    let f = &check.filters;
    if f.digit && !value.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    if f.letter && !value.bytes().any(|b| b.is_ascii_alphabetic()) {
        return false;
    }
    if f.jwt && !jwt_header(value) {
        return false;
    }
    if f.pem_base64 && !pem_base64(value) {
        return false;
    }
    if let Some(c) = check.checksum {
        if checksum_holds(c, value) {
            return true;
        }
    }
    if repeated(value) || distinct(value) < 6.min(value.len()) || words(seen.body) {
        return false;
    }
    // Random key material over a mixed alphabet has capitals or digits, and few vowels; a long
    // body of lowercase letters, or of letters a third of which are vowels, is words
    // (`sq0csp-passphrase-squarespace`, `fm1r_the_config=theConfigUpstash`).
    let body = seen.body.as_bytes();
    if body.len() >= 16 && !body.iter().any(|b| b.is_ascii_digit()) {
        let letters = body.iter().filter(|b| b.is_ascii_alphabetic()).count();
        let vowels = body.iter().filter(|b| b"aeiouAEIOU".contains(b)).count();
        if !body.iter().any(|b| b.is_ascii_uppercase()) || vowels * 10 >= letters * 3 {
            return false;
        }
    }
    check.entropy <= 0.0 || entropy(value) >= check.entropy
}

/// Whether an operator's allowlist keeps this match.
fn allowed(check: &Check, seen: &Seen<'_>) -> bool {
    check.allow.iter().any(|a| {
        let target = match a.target {
            Target::Secret => seen.value,
            Target::Match | Target::Line => seen.whole,
        };
        let by_regex = a.regexes.iter().any(|r| r.is_match(target));
        let lower = seen.value.to_ascii_lowercase();
        let by_word = a.stopwords.iter().any(|w| lower.contains(w.as_str()));
        if a.all {
            (a.regexes.is_empty() || by_regex) && (a.stopwords.is_empty() || by_word)
        } else {
            by_regex || by_word
        }
    })
}

/// Reject placeholders and values that only look like secrets.
pub(crate) fn accept(check: &Check, seen: &Seen<'_>) -> bool {
    let value = seen.value;
    if value.is_empty() || value == REDACTED {
        return false;
    }
    if check.kind == Kind::Env {
        return true;
    }
    if has_marker(value) || allowed(check, seen) {
        return false;
    }
    if check.filters.word_start && !starts_a_token(seen.before_match) {
        return false;
    }
    match check.kind {
        Kind::Env | Kind::Pem => true,
        Kind::Assignment | Kind::UrlPassword => accept_assignment(check.kind, seen),
        Kind::BasicAuth => match base64::engine::general_purpose::STANDARD.decode(b64_clean(value))
        {
            Ok(raw) => match std::str::from_utf8(&raw) {
                Ok(s) => s.contains(':') && !s.chars().any(|c| c.is_control()),
                Err(_) => false,
            },
            Err(_) => false,
        },
        Kind::Bearer => {
            looks_random(check, seen, true)
                // Prose like "bearer instrument-of-the-realm".
                && value.bytes().any(|b| b.is_ascii_digit())
        }
        Kind::Token => {
            if !check.filters.inside_word && !starts_a_token(seen.before_match) {
                return false;
            }
            // The whole token or nothing: a longer run of token characters is not this format.
            if matches!(seen.after, Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return false;
            }
            looks_random(check, seen, true)
        }
        Kind::Keyword | Kind::Context => {
            if matches!(seen.after, Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return false;
            }
            let first = value.as_bytes()[0];
            if matches!(first, b'<' | b'$' | b'{' | b'%' | b'*' | b'[' | b'(')
                && !value.starts_with("%2")
            {
                return false;
            }
            if constant_name(value)
                || PLACEHOLDER_VALUES.contains(&value.to_ascii_lowercase().as_str())
            {
                return false;
            }
            if matches!(seen.after, Some('(') | Some('[')) {
                return false;
            }
            looks_random(check, seen, false)
        }
    }
}

fn accept_assignment(kind: Kind, seen: &Seen<'_>) -> bool {
    let value = seen.value;
    // A PEM block under a secret key is left to the PEM rule, which takes the block whole.
    if value.starts_with("-----BEGIN") {
        return false;
    }
    let lower = value.to_ascii_lowercase();
    let first = value.chars().next().unwrap_or(' ');
    if matches!(first, '<' | '$' | '{' | '%' | '*' | '[' | '(') {
        return false;
    }
    if value.chars().count() < 4 && kind == Kind::Assignment {
        return false;
    }
    if PLACEHOLDER_VALUES.contains(&lower.as_str()) {
        return false;
    }
    if matches!(seen.after, Some('(') | Some('[')) {
        return false;
    }
    // Prose: "the secret: practice" (an unquoted plain word after a colon).
    let word = value.trim_end_matches(['.', '!', '?']);
    if seen.before == Some(':') && !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase())
    {
        return false;
    }
    if is_dotted_identifier(value) || all_same(value) || repeated(value) {
        return false;
    }
    // `access_token=ACCESS_TOKEN`: a constant's name as the value.
    if constant_name(value) {
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
    if lower.contains("xxxx") || lower.contains("****") || lower.contains("placeholder") {
        return false;
    }
    // A Maven coordinate (`io.jsonwebtoken:jjwt-jackson`): the word sits inside a dotted name and
    // a bare colon follows it.
    if kind == Kind::Assignment
        && seen.before == Some(':')
        && matches!(seen.before_match.last(), Some(b) if b.is_ascii_lowercase() || *b == b'.')
        && !seen.whole.contains(": ")
        && !seen.whole.contains(['"', '\''])
    {
        return false;
    }
    true
}

/// Whether a value found under a secret-looking key is a real value (not a placeholder).
pub fn accept_value(value: &str) -> bool {
    let seen = Seen {
        value,
        body: value,
        whole: value,
        before_match: b"",
        before: None,
        after: None,
    };
    !value.is_empty()
        && value != REDACTED
        && !has_marker(value)
        && accept_assignment(Kind::Assignment, &seen)
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
                && !random_part(p)
        })
}

/// A part of a dotted value that is key material, not a name (`s.Zq9xWv8uT7rE2mN5bK1lP4oQ`, a
/// Vault token): long, with four digits or more, four capitals and four small letters.
fn random_part(p: &str) -> bool {
    let count = |f: fn(&u8) -> bool| p.as_bytes().iter().filter(|b| f(b)).count();
    p.len() >= 16
        && count(u8::is_ascii_digit) >= 4
        && count(u8::is_ascii_uppercase) >= 4
        && count(u8::is_ascii_lowercase) >= 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_but_not_dotted_tokens() {
        for name in [
            "self.config.apiToken",
            "settings.AWS_S3_BUCKET2",
            "a.b",
            "os.environ",
        ] {
            assert!(is_dotted_identifier(name), "{name}");
        }
        assert!(!is_dotted_identifier("s.Zq9xWv8uT7rE2mN5bK1lP4oQ"));
    }

    #[test]
    fn github_checksum() {
        // A token built here: 30 random characters, then their CRC32 in base62.
        let random = "Zq9xWv8uT7sR6qP5oN4mL3kJ2iH1gF";
        let mut n = crc32(random.as_bytes()) as u64;
        let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut sum = Vec::new();
        for _ in 0..6 {
            sum.push(digits[(n % 62) as usize]);
            n /= 62;
        }
        sum.reverse();
        let token = format!("ghp_{random}{}", String::from_utf8(sum).unwrap());
        assert!(crc32_base62(&token));
        assert!(!crc32_base62(&token.replace('Z', "Y")));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn entropy_and_repeats() {
        assert!(entropy("aaaaaaaa") < 0.01);
        assert!(entropy("Zq9xWv8uT7sR6qP5") > 3.8);
        assert!(repeated("abababab") && repeated("0000") && !repeated("abcabd"));
        assert!(constant_name("ACCESS_TOKEN") && !constant_name("AKIA2E0A8F3B244C9986"));
    }
}
