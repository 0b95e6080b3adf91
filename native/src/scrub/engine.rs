//! The matching engine: trigger literals found in one pass, then the rules' regular expressions
//! run anchored where a trigger starts.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind as AcMatchKind, StartKind};
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::meta::{Cache as MetaCache, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, MatchKind, Span};

use super::accept::accept;
use super::{escape_literal, literal_forms, BuildError, ENV_SECRET, MIN_ENV_SECRET_LEN, REDACTED};
use crate::rules::{self, Rule};

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
pub(crate) enum Found {
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
    pub(crate) fn find(
        &self,
        scratch: &mut Scratch,
        hay: &str,
        pos: usize,
        end: usize,
    ) -> Option<Found> {
        self.find_before(scratch, hay, pos, end, end)
    }

    /// Like `find`, for matches starting before `limit` only (what a stream can decide now):
    /// the trigger search stops near `limit` instead of rescanning the held-back tail.
    pub(crate) fn find_before(
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
    pub(crate) fn first_alive(
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
pub(crate) struct Alive {
    pub(crate) start: usize,
    state: Option<LazyStateID>,
    /// Bytes of the buffer consumed to reach `state`.
    pub(crate) scanned: usize,
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

pub(crate) fn next_char(text: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    j
}
