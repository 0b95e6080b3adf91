//! Secret scrubbing: one leftmost-first pass of a multi-pattern regex over the text.
//!
//! The same search procedure drives the one-shot and the streaming scrubber, so that a stream,
//! however it is chunked, yields exactly the one-shot output. A stream holds back only the text
//! from the earliest position where some rule is still alive (its anchored automaton is not dead
//! at the end of the buffer).

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind as AcMatchKind, StartKind};
use base64::Engine as _;
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::meta::{Cache as MetaCache, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, MatchKind, Span};

use crate::rules::{self, Rule};

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

/// A compiled set of rules.
pub struct Scrubber {
    /// Every match starts with one of these literals (rule triggers and literal secrets).
    triggers: AhoCorasick,
    /// Skips, a few bytes at a time, the positions where no trigger can start.
    starts: StartFilter,
    max_trigger_len: usize,
    regex: Regex,
    /// One small regex per pattern, to resolve capture groups cheaply once a match is known.
    per_pattern: Vec<Regex>,
    /// Per pattern: whether it has a capture group (else the value is the whole match).
    has_groups: Vec<bool>,
    dfa: DFA,
    /// Per pattern: index into `names`, and whether placeholder checks apply.
    patterns: Vec<(usize, bool)>,
    names: Vec<&'static str>,
}

/// Per-call scratch space (caches of the lazy automata).
pub struct Scratch {
    meta: MetaCache,
    /// Captures and cache per pattern (made on first use).
    per_pattern: Vec<Option<(MetaCache, Captures)>>,
    dfa: Option<DfaCache>,
}

/// What the search found at one position.
enum Found {
    /// A secret: the byte span to replace and the rule index.
    Secret {
        start: usize,
        end: usize,
        rule: usize,
    },
    /// A match that turned out to be a placeholder: skip one character at `start`.
    /// `end` is where the checks looked (the byte after the value).
    Rejected { start: usize, end: usize },
}

/// Names of the environment variables whose values are secrets.
pub fn is_secret_env_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|w| upper.contains(w))
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

fn escape_literal(s: &str) -> String {
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

impl Scrubber {
    /// Build from the built-in rules plus literal secrets (already filtered by the caller).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Self, BuildError> {
        let mut literals: Vec<String> = Vec::new();
        for s in secrets {
            let s = s.as_ref();
            if s.chars().count() < MIN_ENV_SECRET_LEN && s.len() < MIN_ENV_SECRET_LEN {
                continue;
            }
            literals.extend(literal_forms(s));
        }
        literals.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        literals.dedup();
        let builtin: Vec<Rule> = rules::builtin();
        let mut names: Vec<&'static str> = vec![ENV_SECRET];
        let mut patterns: Vec<(usize, bool)> = Vec::new();
        let mut sources: Vec<String> = Vec::new();
        if !literals.is_empty() {
            let alt: Vec<String> = literals.iter().map(|l| escape_literal(l)).collect();
            sources.push(format!("(?:{})", alt.join("|")));
            patterns.push((0, false));
        }
        for r in builtin {
            let idx = match names.iter().position(|n| *n == r.name) {
                Some(i) => i,
                None => {
                    names.push(r.name);
                    names.len() - 1
                }
            };
            sources.push(r.pattern);
            patterns.push((idx, r.token_like));
        }
        let mut trigger_list: Vec<&str> = rules::TRIGGERS.to_vec();
        trigger_list.extend(literals.iter().map(String::as_str));
        let triggers = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(AcMatchKind::LeftmostFirst)
            // Case-insensitive triggers start with most letters: a start-byte prefilter would
            // fire constantly; the DFA alone is faster on prose.
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .prefilter(false)
            // Anchored: confirms a candidate position from `starts`.
            .start_kind(StartKind::Both)
            .build(&trigger_list)
            .map_err(|e| BuildError(format!("invalid trigger literal: {e}")))?;
        let regex = Regex::builder()
            .configure(
                Regex::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .hybrid_cache_capacity(8 << 20),
            )
            .build_many(&sources)
            .map_err(|e| BuildError(format!("invalid scrub pattern: {e}")))?;
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .cache_capacity(8 << 20),
            )
            .syntax(regex_automata::util::syntax::Config::new())
            .build_many(&sources)
            .map_err(|e| BuildError(format!("invalid scrub pattern: {e}")))?;
        let per_pattern = sources
            .iter()
            .map(|src| {
                Regex::new(src).map_err(|e| BuildError(format!("invalid scrub pattern: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let has_groups = per_pattern
            .iter()
            .map(|re| re.group_info().group_len(regex_automata::PatternID::ZERO) > 1)
            .collect();
        let max_trigger_len = trigger_list.iter().map(|t| t.len()).max().unwrap_or(0);
        let starts = StartFilter::new(trigger_list.iter().map(|t| t.as_bytes()));
        Ok(Self {
            triggers,
            starts,
            max_trigger_len,
            regex,
            per_pattern,
            has_groups,
            dfa,
            patterns,
            names,
        })
    }

    /// Rule names, indexed like the counts.
    pub fn rule_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Fresh scratch space for this scrubber.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            meta: self.regex.create_cache(),
            per_pattern: (0..self.per_pattern.len()).map(|_| None).collect(),
            dfa: None,
        }
    }

    /// Find the leftmost match starting at or after `pos` in `hay[..end]` (leftmost-first
    /// among rules). Matches start only at trigger literals, so the regex runs anchored there.
    fn find(&self, scratch: &mut Scratch, hay: &str, pos: usize, end: usize) -> Option<Found> {
        self.find_before(scratch, hay, pos, end, end)
    }

    /// Like `find`, for matches starting before `limit` only (what a stream can decide now):
    /// the trigger search stops near `limit` instead of rescanning the held-back tail.
    fn find_before(
        &self,
        scratch: &mut Scratch,
        hay: &str,
        pos: usize,
        end: usize,
        limit: usize,
    ) -> Option<Found> {
        let bytes = hay.as_bytes();
        let scan_end = limit.saturating_add(self.max_trigger_len).min(end);
        let mut p = pos;
        let (pid, whole, span, start) = loop {
            if p >= limit.min(end) {
                return None;
            }
            let at = self.starts.next(bytes, p, scan_end)?;
            if at >= limit {
                return None;
            }
            let anchored = aho_corasick::Input::new(bytes)
                .span(at..scan_end)
                .anchored(aho_corasick::Anchored::Yes);
            let Some(t) = self.triggers.find(anchored) else {
                p = at + 1;
                continue;
            };
            let input = Input::new(bytes)
                .span(t.start()..end)
                .anchored(Anchored::Yes);
            // The lazy DFA answers whether and where a match ends; the slower capture engine
            // then runs only on that span, for that one pattern.
            if let Some(half) = self.regex.search_half_with(&mut scratch.meta, &input) {
                let pid = half.pattern().as_usize();
                let whole = Span::from(t.start()..half.offset());
                if !self.has_groups[pid] {
                    // Anchored, no group: the half match already is the whole span.
                    break (pid, whole, whole, t.start());
                }
                let exact = Input::new(bytes).span(whole).anchored(Anchored::Yes);
                let re = &self.per_pattern[pid];
                let (cache, caps) = scratch.per_pattern[pid]
                    .get_or_insert_with(|| (re.create_cache(), re.create_captures()));
                re.search_captures_with(cache, &exact, caps);
                if let Some(m) = caps.get_match() {
                    // The value is the first group that took part, else the whole match.
                    let span = (1..caps.group_len())
                        .find_map(|g| caps.get_group(g))
                        .unwrap_or(m.span());
                    break (pid, m.span(), span, t.start());
                }
            }
            // Triggers are ASCII: the next byte is a character boundary.
            p = t.start() + 1;
        };
        let (rule, token_like) = self.patterns[pid];
        let value = &hay[span.start..span.end];
        let name = self.names[rule];
        let after = hay[span.end..].chars().next();
        let before = hay[whole.start..span.start]
            .trim_end_matches([' ', '\t'])
            .chars()
            .next_back();
        if accept(name, token_like, value, before, after) {
            Some(Found::Secret {
                start: span.start,
                end: span.end,
                rule,
            })
        } else {
            Some(Found::Rejected {
                start,
                end: span.end,
            })
        }
    }

    /// Scrub a whole text. Returns `Cow::Borrowed` when nothing matched.
    pub fn scrub<'a>(
        &self,
        scratch: &mut Scratch,
        text: &'a str,
        counts: &mut [u64],
    ) -> Cow<'a, str> {
        let mut out: Option<String> = None;
        let mut pos = 0;
        let mut copied = 0;
        while pos <= text.len() {
            match self.find(scratch, text, pos, text.len()) {
                None => break,
                Some(Found::Rejected { start, .. }) => pos = next_char(text, start),
                Some(Found::Secret { start, end, rule }) => {
                    let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    o.push_str(&text[copied..start]);
                    o.push_str(REDACTED);
                    counts[rule] += 1;
                    copied = end;
                    pos = end.max(next_char(text, start));
                }
            }
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[copied..]);
                Cow::Owned(o)
            }
        }
    }

    /// Run the anchored automaton from `s` over `hay[from..]`, starting in `sid` (or the start
    /// state when `None`). Returns the state at the end of `hay`, or `None` once it is dead
    /// (no rule can match from `s`, whatever follows).
    fn advance(
        &self,
        cache: &mut DfaCache,
        hay: &[u8],
        s: usize,
        from: usize,
        sid: Option<LazyStateID>,
    ) -> Option<Alive> {
        let mut sid = match sid {
            Some(sid) => sid,
            None => {
                let input = Input::new(hay).span(s..hay.len()).anchored(Anchored::Yes);
                match self.dfa.start_state_forward(cache, &input) {
                    Ok(sid) => sid,
                    // Cannot tell: treat as alive, without a state to resume from.
                    Err(_) => return Some(Alive::unknown(s)),
                }
            }
        };
        if sid.is_dead() {
            return None;
        }
        for &b in &hay[from..] {
            match self.dfa.next_state(cache, sid, b) {
                Ok(next) => sid = next,
                Err(_) => return Some(Alive::unknown(s)),
            }
            if sid.is_dead() {
                return None;
            }
            if sid.is_quit() {
                return Some(Alive::unknown(s));
            }
        }
        Some(Alive {
            start: s,
            state: Some(sid),
            scanned: hay.len(),
            clears: cache.clear_count(),
        })
    }

    /// Earliest position at or after `from` (a char boundary) where a rule is still alive,
    /// resuming from `memo` (the previous answer) when it is still valid.
    fn first_alive(
        &self,
        scratch: &mut Scratch,
        hay: &str,
        from: usize,
        memo: &mut Option<Alive>,
    ) -> usize {
        let cache = scratch.dfa.get_or_insert_with(|| DfaCache::new(&self.dfa));
        let bytes = hay.as_bytes();
        let mut s = from;
        if let Some(m) = memo.take() {
            // Positions in [from, m.start) were dead before and stay dead.
            if m.start >= from && m.start < bytes.len() {
                if let (Some(sid), true) = (m.state, m.clears == cache.clear_count()) {
                    match self.advance(cache, bytes, m.start, m.scanned, Some(sid)) {
                        Some(alive) => {
                            let start = alive.start;
                            *memo = Some(alive);
                            return start;
                        }
                        None => s = next_char(hay, m.start),
                    }
                }
            }
        }
        while s < bytes.len() {
            if let Some(alive) = self.advance(cache, bytes, s, s, None) {
                let start = alive.start;
                *memo = Some(alive);
                return start;
            }
            s = next_char(hay, s);
        }
        bytes.len()
    }
}

/// A filter over the first three bytes (ASCII case folded) of every trigger: a bit per hash in
/// a small table. A clear bit proves that no trigger starts at a position, which lets the scan
/// skip most of a text at a few table look-ups per byte; the trigger automaton then confirms
/// each candidate.
struct StartFilter {
    /// Per byte, a random value (the same for both cases of an ASCII letter).
    mix: [u32; 256],
    bits: Box<[u64; StartFilter::WORDS]>,
    /// Triggers of two bytes (ASCII lowercase), the only ones that fit at the next-to-last
    /// position of a range.
    pairs: Vec<[u8; 2]>,
    /// Whether a one-byte trigger exists (then the last position is a candidate too).
    single: bool,
}

impl StartFilter {
    const WORDS: usize = 1024;
    const MASK: u32 = (Self::WORDS * 64 - 1) as u32;

    fn new<'a>(triggers: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut mix = [0u32; 256];
        // splitmix64: fixed, well-spread values.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for slot in mix.iter_mut() {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *slot = ((z ^ (z >> 31)) as u32) & Self::MASK;
        }
        for b in b'A'..=b'Z' {
            mix[b as usize] = mix[b.to_ascii_lowercase() as usize];
        }
        let mut filter = Self {
            mix,
            bits: Box::new([0; Self::WORDS]),
            pairs: Vec::new(),
            single: false,
        };
        for t in triggers {
            match *t {
                [] => {}
                // Too short to hash: every position is a candidate.
                [_] => {
                    filter.bits.fill(u64::MAX);
                    filter.single = true;
                }
                [a, b] => {
                    (0..=255u8).for_each(|c| filter.set(a, b, c));
                    filter
                        .pairs
                        .push([a.to_ascii_lowercase(), b.to_ascii_lowercase()]);
                }
                [a, b, c, ..] => filter.set(a, b, c),
            }
        }
        filter
    }

    #[inline(always)]
    fn hash(&self, a: u8, b: u8, c: u8) -> u32 {
        ((self.mix[a as usize] << 2) ^ (self.mix[b as usize] << 1) ^ self.mix[c as usize])
            & Self::MASK
    }

    fn set(&mut self, a: u8, b: u8, c: u8) {
        let h = self.hash(a, b, c) as usize;
        self.bits[h >> 6] |= 1 << (h & 63);
    }

    /// The first position in `from..to` where a trigger that ends by `to` may start (no position
    /// where one does is skipped).
    #[inline]
    fn next(&self, hay: &[u8], from: usize, to: usize) -> Option<usize> {
        let hay = &hay[..to];
        let mut i = from;
        if i + 2 < hay.len() {
            let mut x = self.mix[hay[i] as usize] << 2;
            let mut y = self.mix[hay[i + 1] as usize] << 1;
            for &c in &hay[i + 2..] {
                let z = self.mix[c as usize];
                let h = ((x ^ y ^ z) & Self::MASK) as usize;
                if self.bits[h >> 6] & (1 << (h & 63)) != 0 {
                    return Some(i);
                }
                x = y << 1;
                y = z << 1;
                i += 1;
            }
        }
        // The last two positions: only a trigger of two bytes (or one) fits.
        if i + 2 == hay.len() {
            let pair = [hay[i].to_ascii_lowercase(), hay[i + 1].to_ascii_lowercase()];
            if self.single || self.pairs.contains(&pair) {
                return Some(i);
            }
            i += 1;
        }
        (i + 1 == hay.len() && self.single).then_some(i)
    }
}

/// A position where a rule is still alive, and the automaton state to resume from.
#[derive(Clone, Copy)]
struct Alive {
    start: usize,
    state: Option<LazyStateID>,
    /// Bytes of the buffer consumed to reach `state`.
    scanned: usize,
    /// The DFA cache's clear count when `state` was taken (a clear invalidates state ids).
    clears: usize,
}

impl Alive {
    fn unknown(start: usize) -> Self {
        Self {
            start,
            state: None,
            scanned: 0,
            clears: 0,
        }
    }
}

fn next_char(text: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    j
}

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

/// Marks of a value that was elided or already redacted (ASCII case-insensitive).
static MARKERS: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(["redacted", "...", "\u{2026}"])
        .expect("valid literals")
});

/// Placeholders written in place of a token (case-sensitive, see `accept`).
static TOKEN_PLACEHOLDERS: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::new([
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
    ])
    .expect("valid literals")
});

/// Reject placeholders and values that only look like secrets.
///
/// `before` is the character before the value (spaces skipped), `after` the one after it.
fn accept(
    name: &str,
    token_like: bool,
    value: &str,
    before: Option<char>,
    after: Option<char>,
) -> bool {
    if value.is_empty() || value == REDACTED {
        return false;
    }
    if name == rules_env() {
        return true;
    }
    if MARKERS.is_match(value) {
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
            if TOKEN_PLACEHOLDERS.is_match(value) {
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

fn rules_env() -> &'static str {
    ENV_SECRET
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

/// A scrubber over a stream of chunks; the output equals the one-shot scrub of their concatenation.
pub struct Stream {
    /// Unemitted text, preceded by up to one character of already-emitted context.
    buf: String,
    /// Start of the unemitted text in `buf`.
    pos: usize,
    pub counts: Vec<u64>,
    scratch: Scratch,
    /// Where the held-back tail starts and how far its automaton has run.
    alive: Option<Alive>,
}

impl Stream {
    pub fn new(scrubber: &Scrubber) -> Self {
        Self::with_scratch(scrubber, scrubber.scratch())
    }

    /// A stream that uses `scratch` (from a pool: making one costs more than a short stream).
    pub fn with_scratch(scrubber: &Scrubber, scratch: Scratch) -> Self {
        Self {
            buf: String::new(),
            pos: 0,
            counts: vec![0; scrubber.rule_names().len()],
            scratch,
            alive: None,
        }
    }

    /// The scratch space back, for the next stream.
    pub fn into_scratch(self) -> Scratch {
        self.scratch
    }

    /// Append a chunk; return the text that is final now.
    pub fn push(&mut self, scrubber: &Scrubber, chunk: &str) -> String {
        self.buf.push_str(chunk);
        let mut out = String::new();
        let len = self.buf.len();
        let mut hold =
            scrubber.first_alive(&mut self.scratch, &self.buf, self.pos, &mut self.alive);
        while self.pos < len {
            if self.pos > hold {
                hold =
                    scrubber.first_alive(&mut self.scratch, &self.buf, self.pos, &mut self.alive);
            }
            let found = scrubber.find_before(&mut self.scratch, &self.buf, self.pos, len, hold);
            match found {
                // A match is final when no earlier position is alive and the character after
                // it (which the checks look at) has arrived.
                Some(Found::Secret { start, end, rule }) if start < hold && end < len => {
                    out.push_str(&self.buf[self.pos..start]);
                    out.push_str(REDACTED);
                    self.counts[rule] += 1;
                    self.pos = end.max(next_char(&self.buf, start));
                }
                Some(Found::Rejected { start, end }) if start < hold && end < len => {
                    let next = next_char(&self.buf, start);
                    out.push_str(&self.buf[self.pos..next]);
                    self.pos = next;
                }
                Some(Found::Secret { start, .. }) | Some(Found::Rejected { start, .. })
                    if start < hold =>
                {
                    out.push_str(&self.buf[self.pos..start]);
                    self.pos = start;
                    break;
                }
                _ => {
                    out.push_str(&self.buf[self.pos..hold]);
                    self.pos = hold;
                    break;
                }
            }
        }
        self.compact();
        out
    }

    /// Flush: scrub what is held back as the end of the text.
    pub fn finish(&mut self, scrubber: &Scrubber) -> String {
        let mut out = String::new();
        let len = self.buf.len();
        let mut copied = self.pos;
        let mut pos = self.pos;
        while pos <= len {
            match scrubber.find(&mut self.scratch, &self.buf, pos, len) {
                None => break,
                Some(Found::Rejected { start, .. }) => pos = next_char(&self.buf, start),
                Some(Found::Secret { start, end, rule }) => {
                    out.push_str(&self.buf[copied..start]);
                    out.push_str(REDACTED);
                    self.counts[rule] += 1;
                    copied = end;
                    pos = end.max(next_char(&self.buf, start));
                }
            }
        }
        out.push_str(&self.buf[copied..]);
        self.buf.clear();
        self.pos = 0;
        self.alive = None;
        out
    }

    /// Drop emitted text, keeping one character of context for word boundaries.
    fn compact(&mut self) {
        if self.pos < 64 {
            return;
        }
        let mut keep = self.pos - 1;
        while !self.buf.is_char_boundary(keep) {
            keep -= 1;
        }
        self.buf.drain(..keep);
        self.pos -= keep;
        if let Some(a) = self.alive.as_mut() {
            if a.start < keep {
                self.alive = None;
            } else {
                a.start -= keep;
                a.scanned = a.scanned.saturating_sub(keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub(s: &Scrubber, text: &str) -> String {
        let mut counts = vec![0; s.rule_names().len()];
        s.scrub(&mut s.scratch(), text, &mut counts).into_owned()
    }

    #[test]
    fn builds_with_literals() {
        let s = Scrubber::new(&["hunter2hunter2", "my$ecret/pass w"]).unwrap();
        assert_eq!(scrub(&s, "a hunter2hunter2 b"), "a REDACTED b");
        assert_eq!(scrub(&s, "x my%24ecret%2Fpass%20w"), "x REDACTED");
    }

    #[test]
    fn stream_equals_one_shot() {
        let s = Scrubber::new(&["hunter2hunter2"]).unwrap();
        let text = "key sk-proj-abcdefghijklmnopqrstuvwxyz0123 and password=hunter22 \
                    Authorization: Bearer abc123def456ghi789 hunter2hunter2 end";
        let want = scrub(&s, text);
        for size in 1..12 {
            let mut st = Stream::new(&s);
            let mut got = String::new();
            let chars: Vec<char> = text.chars().collect();
            for chunk in chars.chunks(size) {
                got.push_str(&st.push(&s, &chunk.iter().collect::<String>()));
            }
            got.push_str(&st.finish(&s));
            assert_eq!(got, want, "chunk size {size}");
        }
    }

    #[test]
    fn stream_with_long_held_tail_equals_one_shot() {
        let s = Scrubber::new::<&str>(&[]).unwrap();
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n".repeat(200);
        for text in [
            format!("x -----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY----- y"),
            format!("x -----BEGIN PRIVATE KEY-----\n{body} no end. Then prose."),
            format!("eyJ{} tail", "a1B2".repeat(3000)),
        ] {
            let want = scrub(&s, &text);
            for size in [1, 7, 64] {
                let mut st = Stream::new(&s);
                let mut got = String::new();
                let bytes: Vec<char> = text.chars().collect();
                for chunk in bytes.chunks(size) {
                    got.push_str(&st.push(&s, &chunk.iter().collect::<String>()));
                }
                got.push_str(&st.finish(&s));
                assert_eq!(got, want, "chunk size {size}");
            }
        }
    }

    #[test]
    fn placeholders_are_kept() {
        let s = Scrubber::new::<&str>(&[]).unwrap();
        for text in [
            "AKIAIOSFODNN7EXAMPLE",
            "sk-...",
            "api_key=<your-api-key>",
            "OPENAI_API_KEY=${OPENAI_API_KEY}",
            "password: REDACTED",
            "sk-proj-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "max_tokens: 100",
            "task-force risk-free",
        ] {
            assert_eq!(scrub(&s, text), text);
        }
    }
}
