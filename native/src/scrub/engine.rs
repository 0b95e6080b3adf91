//! The matching engine: where secrets start and where they end, in time linear in the text.
//!
//! Every match of a rule starts with one of the rule's trigger literals. One pass finds the
//! positions where a trigger starts (a three-byte hash filter skips most of the text, an anchored
//! Aho-Corasick automaton confirms a candidate); at each, the rules that start with that trigger
//! run anchored, in priority order, one lazy-DFA walk each. The first rule whose match is accepted
//! ([`super::accept`]) decides the position and its secret is redacted; a rejected match passes
//! the position on to the next rule.
//!
//! Linear time rests on three bounds:
//! - a walk never goes further than its rule's bound (`Rule::max_len`) past its start;
//! - after a rule's walk was rejected or found nothing, that rule is not tried again at a later
//!   trigger inside what the walk covered (its *mask*): each rule walks over each byte about once,
//!   whatever the number of triggers (`token=...` four thousand times, unclosed PEM headers);
//! - after a redaction the scan resumes past it.
//!
//! The price of the mask: a secret of the same rule that starts inside a rejected match of it
//! (`sk-EXAMPLEsk-...` as one word) is not found; other rules are still tried there.
//!
//! At the bound, a rule with no match gives up. A rule whose match reaches the bound and could go
//! on (a token-like run of characters longer than any real credential) is checked on that first
//! part and, if accepted, redacted whole: the walk carries on past the bound for as long as it
//! keeps matching, so no tail of a secret is ever left in the text. Only the stretch after its
//! last matching byte is held back, and it is bounded too.
//!
//! The same resumable state ([`Scan`]) drives the one-shot scrub and the stream: the stream stops
//! where a decision needs text that has not arrived, and picks up there with the next chunk, so
//! its output equals the one-shot output for every chunking.

use std::borrow::Cow;

use aho_corasick::automaton::Automaton as _;
use aho_corasick::dfa::DFA as TriggerDfa;
use aho_corasick::{MatchKind as AcMatchKind, StartKind};
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::meta::{Cache as MetaCache, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::start;
use regex_automata::{Anchored, Input, MatchKind, PatternID};

use super::accept::{accept, Seen};
use super::{escape_literal, literal_forms, BuildError, ENV_SECRET, MIN_ENV_SECRET_LEN, REDACTED};
use crate::rules::{Check, Kind, Rule};

/// How far [`Scrubber::glance`] looks past a trigger.
const GLANCE: usize = 24;

/// One pattern of the compiled set (a rule may have several).
struct Pattern {
    /// Index into `Scrubber::names`.
    rule: usize,
    /// How its matches are told from look-alikes.
    check: Check,
    /// How far past its start a walk of this pattern may go.
    max_len: usize,
    /// Whether the pattern has a capture group (else the value is the whole match).
    has_groups: bool,
}

/// A compiled set of rules.
pub struct Scrubber {
    /// Every trigger literal (rule triggers and the forms of literal secrets), ASCII
    /// case-insensitive, anchored, stepped by hand.
    triggers: TriggerDfa,
    trigger_start: aho_corasick::automaton::StateID,
    /// Per trigger literal: its length, and the patterns that may start where it matches (its own
    /// and those of every shorter trigger it starts with), in priority order.
    trigger_lens: Vec<usize>,
    candidates: Vec<Vec<usize>>,
    /// Skips, a few bytes at a time, the positions where no trigger can start.
    starts: StartFilter,
    /// All patterns in one lazy DFA, each with its own anchored start state.
    dfa: DFA,
    /// One regex per pattern, to resolve the capture group once a match is known.
    per_pattern: Vec<Regex>,
    patterns: Vec<Pattern>,
    names: Vec<String>,
}

/// Per-call scratch space: caches of the lazy automata and the rules' masks.
pub struct Scratch {
    dfa: DfaCache,
    /// Captures and cache per pattern (made on first use).
    per_pattern: Vec<Option<(MetaCache, Captures)>>,
    /// Per pattern: no match of it is tried at a trigger before this position (see the module
    /// documentation).
    masks: Vec<usize>,
    /// The patterns whose mask is set (a reset clears those only: most texts touch few of the
    /// table's hundreds of rules).
    masked: Vec<usize>,
    /// Automaton steps taken (trigger confirmations and walks): the work a scan did, for tests
    /// that check it grows linearly with the text.
    pub steps: u64,
}

impl Scratch {
    /// No match of pattern `pid` is tried at a trigger before `to`.
    fn mask(&mut self, pid: usize, to: usize) {
        if self.masks[pid] == 0 {
            self.masked.push(pid);
        }
        self.masks[pid] = self.masks[pid].max(to);
    }

    /// Forget the masks of the previous text.
    pub(crate) fn reset(&mut self) {
        for &pid in &self.masked {
            self.masks[pid] = 0;
        }
        self.masked.clear();
    }
}

/// Where a scan stands; positions are offsets in the whole text (a stream's text so far).
#[derive(Default)]
pub(crate) struct Scan {
    /// The output is final before this position: it was emitted, or replaced by `REDACTED`.
    pub(crate) copied: usize,
    /// Where the search for the next trigger resumes.
    pos: usize,
    /// A trigger whose rules are being tried (a stream stopped inside a walk).
    attempt: Option<Attempt>,
    /// An accepted match that reached its rule's bound and is being followed to its end.
    extension: Option<Walk>,
}

/// The rules of one trigger position, tried in priority order.
struct Attempt {
    at: usize,
    /// The trigger literal found there.
    literal: usize,
    /// Index into its candidates of the pattern to try next.
    next: usize,
    /// That pattern's walk, when it stopped at the end of the text so far.
    walk: Option<Walk>,
}

/// A lazy-DFA walk of one pattern from `start`, stopped before byte `next`.
#[derive(Clone, Copy)]
struct Walk {
    pattern: usize,
    state: LazyStateID,
    next: usize,
    /// End of the last match seen.
    end: Option<usize>,
    /// The DFA cache's clear count when `state` was taken (a clear invalidates state ids).
    clears: usize,
}

/// How a walk ended.
enum Walked {
    /// It needs text that has not arrived.
    More(Walk),
    /// No match; the walk covered up to (not including) this position.
    Nothing(usize),
    /// The longest match the rule prefers ends at `end`; `cut` when it reached the bound with the
    /// automaton still alive (it could go on), `walk` being its state there.
    Match { end: usize, cut: Option<Walk> },
}

/// The next trigger in the text.
enum Next {
    Found {
        at: usize,
        literal: usize,
    },
    /// A trigger may start here but the text ends before it is known.
    Partial(usize),
    None,
}

impl Scrubber {
    /// Build from the package's rule table plus literal secrets (tests).
    #[cfg(test)]
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Self, BuildError> {
        Self::with_rules(secrets, crate::rules::tests::builtin())
    }

    /// Build from `rules` plus literal secrets.
    pub fn with_rules<S: AsRef<str>>(secrets: &[S], rules: Vec<Rule>) -> Result<Self, BuildError> {
        let mut literals: Vec<String> = Vec::new();
        for s in secrets {
            let s = s.as_ref();
            if s.len() < MIN_ENV_SECRET_LEN {
                continue;
            }
            literals.extend(literal_forms(s));
        }
        literals.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        literals.dedup();
        let mut names: Vec<String> = vec![ENV_SECRET.to_string()];
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut sources: Vec<String> = Vec::new();
        // (literal, pattern) pairs: which pattern each trigger starts.
        let mut starts_with: Vec<(String, usize)> = Vec::new();
        if !literals.is_empty() {
            let alt: Vec<String> = literals.iter().map(|l| escape_literal(l)).collect();
            sources.push(format!("(?:{})", alt.join("|")));
            patterns.push(Pattern {
                rule: 0,
                check: Check::new(Kind::Env),
                max_len: literals.iter().map(String::len).max().unwrap_or(0),
                has_groups: false,
            });
            starts_with.extend(literals.iter().map(|l| (l.clone(), 0)));
        }
        for r in rules {
            let rule = match names.iter().position(|n| *n == r.name) {
                Some(i) => i,
                None => {
                    names.push(r.name.clone());
                    names.len() - 1
                }
            };
            if r.triggers.is_empty() || r.triggers.iter().any(|t| t.is_empty() || !t.is_ascii()) {
                return Err(BuildError(format!(
                    "rule {}: triggers must be non-empty ASCII literals",
                    r.name
                )));
            }
            let pid = patterns.len();
            starts_with.extend(r.triggers.iter().map(|t| (t.to_string(), pid)));
            sources.push(r.pattern);
            patterns.push(Pattern {
                rule,
                check: r.check,
                max_len: r.max_len.max(1),
                has_groups: false,
            });
        }
        // One entry per literal (ASCII case ignored), with the patterns it starts.
        let mut trigger_list: Vec<String> = Vec::new();
        let mut own: Vec<Vec<usize>> = Vec::new();
        for (lit, pid) in starts_with {
            match trigger_list
                .iter()
                .position(|t| t.eq_ignore_ascii_case(&lit))
            {
                Some(i) => own[i].push(pid),
                None => {
                    trigger_list.push(lit);
                    own.push(vec![pid]);
                }
            }
        }
        // Where a literal matches, so does every literal it starts with.
        let candidates: Vec<Vec<usize>> = trigger_list
            .iter()
            .map(|lit| {
                let mut pids: Vec<usize> = trigger_list
                    .iter()
                    .zip(&own)
                    .filter(|(t, _)| {
                        t.len() <= lit.len()
                            && lit.as_bytes()[..t.len()].eq_ignore_ascii_case(t.as_bytes())
                    })
                    .flat_map(|(_, p)| p.iter().copied())
                    .collect();
                pids.sort_unstable();
                pids.dedup();
                pids
            })
            .collect();
        let triggers = TriggerDfa::builder()
            .ascii_case_insensitive(true)
            .match_kind(AcMatchKind::Standard)
            .start_kind(StartKind::Anchored)
            .build(&trigger_list)
            .map_err(|e| BuildError(format!("invalid trigger literal: {e}")))?;
        let trigger_start = triggers
            .start_state(aho_corasick::Anchored::Yes)
            .map_err(|e| BuildError(format!("trigger automaton: {e}")))?;
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .starts_for_each_pattern(true)
                    .minimum_cache_clear_count(None)
                    .cache_capacity(8 << 20)
                    // Many rules (the table and an operator's whole gitleaks file) need more
                    // than that: the least that works, rather than an error.
                    .skip_cache_capacity_check(true),
            )
            .build_many(&sources)
            .map_err(|e| BuildError(format!("invalid scrub pattern: {e}")))?;
        let per_pattern = sources
            .iter()
            .map(|src| {
                Regex::new(src).map_err(|e| BuildError(format!("invalid scrub pattern: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (p, re) in patterns.iter_mut().zip(&per_pattern) {
            p.has_groups = re.group_info().group_len(PatternID::ZERO) > 1;
        }
        let starts = StartFilter::new(trigger_list.iter().map(|t| t.as_bytes()));
        Ok(Self {
            triggers,
            trigger_start,
            trigger_lens: trigger_list.iter().map(String::len).collect(),
            candidates,
            starts,
            dfa,
            per_pattern,
            patterns,
            names,
        })
    }

    /// Rule names, indexed like the counts.
    pub fn rule_names(&self) -> &[String] {
        &self.names
    }

    /// Fresh scratch space for this scrubber.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            dfa: self.dfa.create_cache(),
            per_pattern: (0..self.per_pattern.len()).map(|_| None).collect(),
            masks: vec![0; self.patterns.len()],
            masked: Vec::new(),
            steps: 0,
        }
    }

    /// Scrub a whole text. Returns `Cow::Borrowed` when nothing matched.
    pub fn scrub<'a>(
        &self,
        scratch: &mut Scratch,
        text: &'a str,
        counts: &mut [u64],
    ) -> Cow<'a, str> {
        scratch.reset();
        let mut scan = Scan::default();
        let mut out = String::new();
        self.run(scratch, &mut scan, text, 0, true, &mut out, counts);
        if out.is_empty() && scan.copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[scan.copied..]);
        Cow::Owned(out)
    }

    /// Advance `scan` over `text` (the text from offset `base` on; a stream keeps a character
    /// before its first undecided position), appending the decided output up to `scan.copied` to
    /// `out`. `at_end`: nothing follows `text`. Returns the position before which everything is
    /// decided (the end of `text` when `at_end`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        scratch: &mut Scratch,
        scan: &mut Scan,
        text: &str,
        base: usize,
        at_end: bool,
        out: &mut String,
        counts: &mut [u64],
    ) -> usize {
        let len = base + text.len();
        loop {
            if let Some(mut ext) = scan.extension.take() {
                match self.extend(scratch, text, base, at_end, &mut ext) {
                    Some(end) => {
                        // A match is never empty: `end` is past its start.
                        scan.copied = end;
                        scan.pos = end;
                    }
                    None => {
                        scan.copied = ext.end.unwrap_or(scan.copied);
                        scan.extension = Some(ext);
                        return scan.copied;
                    }
                }
                continue;
            }
            let attempt = match scan.attempt.take() {
                Some(a) => a,
                None => match self.next_trigger(scratch, text, base, scan.pos, at_end) {
                    Next::Found { at, literal } => Attempt {
                        at,
                        literal,
                        next: 0,
                        walk: None,
                    },
                    Next::Partial(at) => {
                        scan.pos = at;
                        return at;
                    }
                    Next::None => {
                        scan.pos = len;
                        return len;
                    }
                },
            };
            let at = attempt.at;
            match self.try_rules(scratch, text, base, at_end, attempt) {
                Err(waiting) => {
                    scan.attempt = Some(waiting);
                    return at;
                }
                Ok(None) => scan.pos = next_char(text, base, at),
                Ok(Some(found)) => {
                    if found.rule == usize::MAX {
                        // Rejected: the position yields nothing.
                        scan.pos = next_char(text, base, at);
                        continue;
                    }
                    if out.is_empty() {
                        out.reserve(text.len() + REDACTED.len());
                    }
                    out.push_str(&text[scan.copied - base..found.start - base]);
                    out.push_str(REDACTED);
                    if let Some(c) = counts.get_mut(found.rule) {
                        *c += 1;
                    }
                    scan.copied = found.end;
                    match found.extension {
                        Some(ext) => scan.extension = Some(ext),
                        None => scan.pos = found.end.max(next_char(text, base, at)),
                    }
                }
            }
        }
    }

    /// The first trigger at or after `from`.
    fn next_trigger(
        &self,
        scratch: &mut Scratch,
        text: &str,
        base: usize,
        from: usize,
        at_end: bool,
    ) -> Next {
        let hay = text.as_bytes();
        let mut p = from - base;
        while let Some(c) = self.starts.next(hay, p, hay.len()) {
            match self.confirm(scratch, hay, c, at_end) {
                Next::None => p = c + 1,
                Next::Found { literal, .. } => {
                    return Next::Found {
                        at: base + c,
                        literal,
                    }
                }
                Next::Partial(_) => return Next::Partial(base + c),
            }
        }
        if !at_end {
            // The filter needs three bytes: a longer trigger may begin in the last two.
            for c in (from - base).max(hay.len().saturating_sub(2))..hay.len() {
                if let Next::Partial(_) = self.confirm(scratch, hay, c, false) {
                    return Next::Partial(base + c);
                }
            }
        }
        Next::None
    }

    /// The longest trigger literal that starts at `c` (positions relative to `hay`).
    fn confirm(&self, scratch: &mut Scratch, hay: &[u8], c: usize, at_end: bool) -> Next {
        let mut sid = self.trigger_start;
        let mut found = None;
        for (i, &b) in hay[c..].iter().enumerate() {
            sid = self
                .triggers
                .next_state(aho_corasick::Anchored::Yes, sid, b);
            if self.triggers.is_special(sid) {
                if self.triggers.is_dead(sid) {
                    scratch.steps += i as u64 + 1;
                    return found.map_or(Next::None, |literal| Next::Found { at: c, literal });
                }
                if self.triggers.is_match(sid) {
                    // Only a literal that starts at `c` counts (its length says so).
                    for k in 0..self.triggers.match_len(sid) {
                        let lit = self.triggers.match_pattern(sid, k).as_usize();
                        if self.trigger_lens.get(lit) == Some(&(i + 1)) {
                            found = Some(lit);
                        }
                    }
                }
            }
        }
        scratch.steps += (hay.len() - c) as u64;
        match found {
            _ if !at_end => Next::Partial(c),
            Some(literal) => Next::Found { at: c, literal },
            None => Next::None,
        }
    }

    /// Try the rules of one trigger position in priority order. `Err`: a walk needs more text.
    /// `Ok(None)`: no rule's match was accepted. `Ok(Some(found))`: the first accepted match.
    fn try_rules(
        &self,
        scratch: &mut Scratch,
        text: &str,
        base: usize,
        at_end: bool,
        mut a: Attempt,
    ) -> Result<Option<Found>, Attempt> {
        let Some(candidates) = self.candidates.get(a.literal) else {
            return Ok(None);
        };
        if a.next == 0 && a.walk.is_none() {
            match self.glance(scratch, text, base, at_end, a.at) {
                Some(true) => {}
                Some(false) => return Ok(None),
                None => return Err(a),
            }
        }
        while let Some(&pid) = candidates.get(a.next) {
            let resume = a.walk.take();
            if resume.is_none() && scratch.masks[pid] > a.at {
                a.next += 1;
                continue;
            }
            match self.walk(scratch, text, base, at_end, pid, a.at, resume) {
                Walked::More(w) => {
                    a.walk = Some(w);
                    return Err(a);
                }
                Walked::Nothing(covered) => {
                    scratch.mask(pid, covered);
                    a.next += 1;
                }
                Walked::Match { end, cut } => {
                    let prefix = self.trigger_lens.get(a.literal).copied().unwrap_or(0);
                    let found = self.decide(scratch, text, base, pid, (a.at, prefix), end, cut);
                    if found.rule != usize::MAX {
                        return Ok(Some(found));
                    }
                    // Rejected: the next rule of this position may still match (a specific
                    // format before the general one it overlaps).
                    scratch.mask(pid, end);
                    a.next += 1;
                }
            }
        }
        Ok(None)
    }

    /// Whether any rule may match at `at`, from one walk of all the rules together over at most
    /// [`GLANCE`] bytes: most triggers in ordinary text (`tokens`, `task-force`) are decided
    /// there, without a walk per rule. `None`: the text ends before it is known.
    fn glance(
        &self,
        scratch: &mut Scratch,
        text: &str,
        base: usize,
        at_end: bool,
        at: usize,
    ) -> Option<bool> {
        let hay = text.as_bytes();
        let cache = &mut scratch.dfa;
        let look_behind = (at > base).then(|| hay[at - base - 1]);
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(look_behind);
        let Ok(mut state) = self.dfa.start_state(cache, &config) else {
            return Some(true);
        };
        let stop = hay.len().min(at - base + GLANCE);
        for (i, &b) in hay[at - base..stop].iter().enumerate() {
            state = match self.dfa.next_state(cache, state, b) {
                Ok(s) => s,
                Err(_) => return Some(true),
            };
            if state.is_tagged() {
                scratch.steps += i as u64 + 1;
                // A match (or anything but a dead end) goes to the rules one by one.
                return Some(!state.is_dead());
            }
        }
        scratch.steps += (stop - (at - base)) as u64;
        if stop < hay.len() || at - base + GLANCE == stop {
            return Some(true);
        }
        if !at_end {
            return None;
        }
        Some(
            self.dfa
                .next_eoi_state(cache, state)
                .map_or(true, |s| s.is_match()),
        )
    }

    /// Walk pattern `pid` from `at` (or from where `resume` stopped).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        scratch: &mut Scratch,
        text: &str,
        base: usize,
        at_end: bool,
        pid: usize,
        at: usize,
        resume: Option<Walk>,
    ) -> Walked {
        let hay = text.as_bytes();
        let len = base + hay.len();
        let limit = at + self.patterns[pid].max_len;
        let cache = &mut scratch.dfa;
        let mut w = match resume {
            Some(w) if w.clears == cache.clear_count() => w,
            _ => {
                let look_behind = (at > base).then(|| hay[at - base - 1]);
                let config = start::Config::new()
                    .anchored(Anchored::Pattern(PatternID::new_unchecked(pid)))
                    .look_behind(look_behind);
                match self.dfa.start_state(cache, &config) {
                    Ok(state) => Walk {
                        pattern: pid,
                        state,
                        next: at,
                        end: None,
                        clears: cache.clear_count(),
                    },
                    // Only a quit byte (none is configured) can refuse a start.
                    Err(_) => return Walked::Nothing(at + 1),
                }
            }
        };
        // Bytes up to and including the one at the bound: every match ending by the bound is
        // then known.
        let stop = len.min(limit + 1);
        let from = w.next;
        for &b in &hay[from - base..stop - base] {
            w.state = match self.dfa.next_state(cache, w.state, b) {
                Ok(s) => s,
                // Without a minimum clear count the lazy DFA never gives up.
                Err(_) => {
                    scratch.steps += (w.next - from + 1) as u64;
                    return Walked::Nothing(w.next + 1);
                }
            };
            if w.state.is_tagged() {
                if w.state.is_match() {
                    // Match states come one byte late: the match ended before this byte.
                    w.end = Some(w.next);
                } else if w.state.is_dead() || w.state.is_quit() {
                    scratch.steps += (w.next - from + 1) as u64;
                    return match w.end {
                        Some(end) => Walked::Match { end, cut: None },
                        None => Walked::Nothing(w.next),
                    };
                }
            }
            w.next += 1;
        }
        scratch.steps += (w.next - from) as u64;
        if w.next > limit {
            w.clears = cache.clear_count();
            return match w.end {
                Some(end) => Walked::Match { end, cut: Some(w) },
                None => Walked::Nothing(w.next),
            };
        }
        if !at_end {
            w.clears = cache.clear_count();
            return Walked::More(w);
        }
        if let Ok(s) = self.dfa.next_eoi_state(cache, w.state) {
            if s.is_match() {
                w.end = Some(len);
            }
        }
        match w.end {
            Some(end) => Walked::Match { end, cut: None },
            None => Walked::Nothing(len),
        }
    }

    /// Follow an accepted match past its bound while its rule keeps matching. `Some(end)`: the
    /// match ends there. `None`: the text so far ends first (`ext.end` is final up to there).
    fn extend(
        &self,
        scratch: &mut Scratch,
        text: &str,
        base: usize,
        at_end: bool,
        ext: &mut Walk,
    ) -> Option<usize> {
        let hay = text.as_bytes();
        let len = base + hay.len();
        let gap = self.patterns[ext.pattern].max_len;
        let cache = &mut scratch.dfa;
        let mut end = ext.end.unwrap_or(ext.next);
        if ext.clears != cache.clear_count() {
            // Cannot happen (the walk resumes before anything else uses the cache); stop here
            // rather than guess.
            return Some(end);
        }
        while ext.next < len {
            scratch.steps += 1;
            ext.state = match self.dfa.next_state(cache, ext.state, hay[ext.next - base]) {
                Ok(s) => s,
                Err(_) => return Some(end),
            };
            if ext.state.is_match() {
                end = ext.next;
                ext.end = Some(end);
            } else if ext.state.is_dead() || ext.state.is_quit() {
                return Some(end);
            }
            ext.next += 1;
            if ext.next - end > gap {
                return Some(end);
            }
        }
        if !at_end {
            ext.clears = cache.clear_count();
            return None;
        }
        if let Ok(s) = self.dfa.next_eoi_state(cache, ext.state) {
            if s.is_match() {
                end = len;
            }
        }
        Some(end)
    }

    /// Check the match `[at, end)` of pattern `pid`, found by a trigger literal of `prefix` bytes:
    /// the value to redact, or a rejection.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        scratch: &mut Scratch,
        text: &str,
        base: usize,
        pid: usize,
        (at, prefix): (usize, usize),
        end: usize,
        cut: Option<Walk>,
    ) -> Found {
        let p = &self.patterns[pid];
        // The capture search and the checks read the match about once.
        scratch.steps += (end - at) as u64;
        let (vs, ve) = if p.has_groups {
            let re = &self.per_pattern[pid];
            let (cache, caps) = scratch.per_pattern[pid]
                .get_or_insert_with(|| (re.create_cache(), re.create_captures()));
            let exact = Input::new(text)
                .span(at - base..end - base)
                .anchored(Anchored::Yes);
            re.search_captures_with(cache, &exact, caps);
            // The value is the rule's secret group, else the first group that took part, else
            // the whole match.
            let span = match p.check.secret_group {
                Some(g) => caps.get_group(g),
                None => (1..caps.group_len()).find_map(|g| caps.get_group(g)),
            }
            .or_else(|| caps.get_match().map(|m| m.span()));
            match span {
                Some(s) => (base + s.start, base + s.end),
                None => (at, end),
            }
        } else {
            (at, end)
        };
        let mut ve = ve;
        let context = &text[at - base..vs - base];
        if is_url_encoded(context) {
            // In URL-encoded text a `+` is a space: the value ends there.
            if let Some(i) = text[vs - base..ve - base].find('+').filter(|&i| i > 0) {
                ve = vs + i;
            }
        }
        let hay = text.as_bytes();
        let back = |pos: usize| &hay[(pos - base).saturating_sub(3)..pos - base];
        // A value cut at the bound goes on past it (see `extend`): nothing follows it yet.
        let extended = cut.is_some() && ve == end;
        let value = &text[vs - base..ve - base];
        let seen = Seen {
            value,
            // The part of a token after the literal it was found by.
            body: if vs == at && prefix < value.len() && value.is_char_boundary(prefix) {
                &value[prefix..]
            } else {
                value
            },
            whole: &text[at - base..end - base],
            before_match: back(at),
            before: char_before(context),
            after: if extended {
                None
            } else {
                char_at(&text[ve - base..])
            },
        };
        if !accept(&p.check, &seen) {
            return Found::rejected();
        }
        // A value that runs to the end of a match cut at the bound goes on as long as the rule
        // keeps matching.
        let extension = cut.filter(|_| ve == end);
        Found {
            start: vs,
            end: ve,
            rule: p.rule,
            extension,
        }
    }
}

/// Whether text is URL-encoded: it holds a `%XX` escape or a `+` for a space.
fn is_url_encoded(s: &str) -> bool {
    let b = s.as_bytes();
    s.contains('+')
        || b.windows(3)
            .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// The character a JSON escape (`\n`) or a URL escape (`%3A`) at the start of `s` stands for,
/// else the first character.
fn char_at(s: &str) -> Option<char> {
    let b = s.as_bytes();
    match b {
        [b'%', h, l, ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
            let code = (hex(*h) << 4) | hex(*l);
            Some(char::from(code))
        }
        [b'\\', e, ..] => Some(match e {
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'"' => '"',
            b'/' => '/',
            b'\\' => '\\',
            _ => '\\',
        }),
        _ => s.chars().next(),
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b.wrapping_sub(b'A').wrapping_add(10) & 0xf,
    }
}

/// The last character of `s` that is not a space (spaces and escapes read as what they stand
/// for: `%20`, `+`, `\t`, `%3A`).
fn char_before(s: &str) -> Option<char> {
    let mut s = s;
    loop {
        let t = s
            .trim_end_matches([' ', '\t', '+'])
            .trim_end_matches("%20")
            .trim_end_matches("%09")
            .trim_end_matches("\\t");
        if t.len() == s.len() {
            break;
        }
        s = t;
    }
    let b = s.as_bytes();
    let n = b.len();
    if n >= 3 && b[n - 3] == b'%' && b[n - 2].is_ascii_hexdigit() && b[n - 1].is_ascii_hexdigit() {
        return char_at(&s[n - 3..]);
    }
    if n >= 2 && b[n - 2] == b'\\' {
        return char_at(&s[n - 2..]);
    }
    s.chars().next_back()
}

/// What a trigger position yields.
struct Found {
    /// The span to replace (`rule == usize::MAX` for a rejected match).
    start: usize,
    end: usize,
    rule: usize,
    extension: Option<Walk>,
}

impl Found {
    fn rejected() -> Self {
        Self {
            start: 0,
            end: 0,
            rule: usize::MAX,
            extension: None,
        }
    }
}

/// The position of the character after the one at `at` (offsets from the start of the whole
/// text; `text` starts at `base`).
fn next_char(text: &str, base: usize, at: usize) -> usize {
    let mut j = at - base + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    base + j
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
    fn builds_with_the_table_and_a_large_operator_file() {
        // Two hundred rules of gitleaks' semi-generic shape beside the table (gitleaks' own
        // configuration has about as many): the lazy DFA of all rules together outgrows its
        // default cache and must still build.
        let mut file = String::new();
        for i in 0..200 {
            let n = 20 + i % 50;
            file.push_str(&format!(
                "[[rules]]\nid = \"vendor{i}\"\nregex = '''(?i)[\\w.-]{{0,50}}?(?:vendor{i}x)(?:[ \\t\\w.-]{{0,20}})[\\s'\"]{{0,3}}(?:=|>|:{{1,3}}=|\\|\\||:|=>|\\?=|,)[\\x60'\"\\s=]{{0,5}}([a-z0-9_-]{{{n}}}|[A-Z0-9]{{{n},80}})(?:[\\x60'\"\\s;]|\\\\[nr]|$)'''\n\n"
            ));
        }
        let extra = crate::rules::parse_gitleaks(&file).unwrap();
        assert_eq!((extra.rules.len(), extra.skipped.len()), (200, 0));
        let mut rules = extra.rules;
        rules.extend(crate::rules::tests::builtin());
        let s = Scrubber::with_rules::<&str>(&[], rules).unwrap();
        assert_eq!(
            scrub(&s, "VENDOR7X_KEY=k3j9x7m2q8w4e6r1t5y0u3i7p9a2s4d6 ok"),
            "VENDOR7X_KEY=REDACTED ok"
        );
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

    #[test]
    fn a_rejected_match_does_not_hide_other_rules_inside_it() {
        let s = Scrubber::new::<&str>(&[]).unwrap();
        // The generic `sk-` match is a placeholder; the project key inside it is still found.
        let key = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w";
        assert_eq!(
            scrub(&s, &format!("sk-EXAMPLE-{key}")),
            "sk-EXAMPLE-REDACTED"
        );
        // An unclosed quote does not keep the unquoted form from matching inside it.
        assert_eq!(
            scrub(&s, "password=\"abc token=Zq9xWv8u rest"),
            "password=\"abc token=REDACTED rest"
        );
    }

    #[test]
    fn over_long_secrets_are_redacted_whole() {
        let s = Scrubber::new::<&str>(&[]).unwrap();
        let run = "Ab3dEf6hIj9kLm2n".repeat(1000);
        for (text, want) in [
            (format!("use sk-proj-{run} now"), "use REDACTED now"),
            (format!("token={run} now"), "token=REDACTED now"),
            (
                format!("Authorization: Bearer 1{run} now"),
                "Authorization: Bearer REDACTED now",
            ),
        ] {
            assert_eq!(scrub(&s, &text), want);
        }
    }

    #[test]
    fn pem_blocks_longer_than_the_bound_are_not_matched_but_cost_little() {
        let s = Scrubber::new::<&str>(&[]).unwrap();
        let body = "QUJD\n".repeat(crate::rules::MAX_PEM / 5 + 10);
        let text = format!("-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----");
        assert_eq!(scrub(&s, &text), text);
        let short = format!(
            "-----BEGIN PRIVATE KEY-----\n{}-----END PRIVATE KEY-----",
            "QUJD\n".repeat(100)
        );
        assert_eq!(scrub(&s, &short), "REDACTED");
    }

    /// The hostile families of input: each costs a bounded number of automaton steps per byte,
    /// the same at 10 KB as at 1 MB (a quadratic scan would cost 100 times more per byte).
    pub(crate) const HOSTILE: &[(&str, &str)] = &[
        ("rejected assignments", "token=..."),
        (
            "PEM headers without an end",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n",
        ),
        ("unclosed quotes", "password=\""),
        ("triggers without values", "token "),
        ("glued triggers", "token"),
        ("nested quotes", "password=\"'"),
        ("one character", "a"),
        (
            "one token character",
            "sk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        ("rejected tokens", "sk-xxxxx"),
        ("literal-secret prefixes", "hunter2hunter "),
        ("basic without credentials", "basic "),
        ("bearer without a token", "Authorization: Bearer "),
        ("URL without a password", "://a"),
        ("AWS words", "aws secret "),
        ("accepted assignments", "password=Zq9xWv8u "),
    ];

    #[test]
    fn every_hostile_family_costs_linear_time() {
        let s = Scrubber::new(&["hunter2hunter2"]).unwrap();
        let mut counts = vec![0; s.rule_names().len()];
        for (name, unit) in HOSTILE {
            let mut per_byte = |size: usize| {
                let text = unit.repeat(size / unit.len() + 1);
                let mut scratch = s.scratch();
                s.scrub(&mut scratch, &text, &mut counts);
                scratch.steps as f64 / text.len() as f64
            };
            let (small, mid, large) = (per_byte(10_000), per_byte(100_000), per_byte(1_000_000));
            assert!(
                large <= 6.0 * small.max(0.01) && mid <= 6.0 * small.max(0.01),
                "{name}: {small:.2} / {mid:.2} / {large:.2} steps per byte at 10 KB / 100 KB / 1 MB"
            );
            assert!(large <= 16.0, "{name}: {large:.2} steps per byte");
        }
    }
}
