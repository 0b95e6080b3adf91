//! The routing classifier's cue scan: which weighted cues (words, word stems, two-word phrases,
//! CJK keywords, literal markers, patterns) a prompt contains, and the points each category
//! scores from them.
//!
//! The tables come from the package's data file (`iir/policy/routing/cues.toml`, read by
//! `iir.policy.routing.classifier`). Characters are classed as Python's `re` classes them, so that the
//! scan agrees with the plain-Python scan kept in the tests as its reference: a word character is
//! Python's `\w` (a letter, a number or `_`: [`PY_WORD`]), a space Python's `\s` ([`PY_SPACE`]),
//! a digit `\d` (a decimal digit, the same in both). The classes come from the Unicode tables of
//! the regex engine.
use aho_corasick::AhoCorasick;
use regex_automata::meta::Regex;
use rustc_hash::{FxHashMap, FxHashSet};

/// A cue's points: (category index, weight).
pub type Entries = Vec<(usize, f64)>;

/// Python's `\w` for `str` patterns: `str.isalnum()` or `_`, which is exactly the letters and
/// numbers of Unicode.
pub const PY_WORD: &str = r"[\p{L}\p{N}_]";

/// Python's `\s` for `str` patterns: Unicode's white space plus the four information separators
/// (`\x1C`-`\x1F`, which Python counts as spaces from their bidirectional class).
pub const PY_SPACE: &str = r"[\s\x1C-\x1F]";

/// Python's `\d` for `str` patterns: decimal digits.
pub const PY_DIGIT: &str = r"\d";

/// The code points of a character class, as sorted inclusive ranges.
pub fn class_ranges(class: &str) -> Result<Vec<(u32, u32)>, String> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(class).map_err(|e| format!("class {class}: {e}"))?;
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => Ok(c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect()),
        _ => Err(format!("{class} is not a character class")),
    }
}

/// A set of characters: a table for ASCII, sorted inclusive ranges for the rest.
pub struct CharSet {
    ascii: [bool; 128],
    ranges: Vec<(u32, u32)>,
}

impl CharSet {
    pub fn new(mut ranges: Vec<(u32, u32)>) -> Self {
        ranges.sort_unstable();
        let mut ascii = [false; 128];
        for &(lo, hi) in &ranges {
            for c in lo..=hi.min(127) {
                ascii[c as usize] = true;
            }
        }
        CharSet { ascii, ranges }
    }

    pub fn contains(&self, c: char) -> bool {
        let u = c as u32;
        if u < 128 {
            return self.ascii[u as usize];
        }
        match self.ranges.binary_search_by(|&(lo, _)| lo.cmp(&u)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= u,
        }
    }
}

/// A necessary condition of a pattern, cheaper to test: one of the literals is in the text, or
/// (when the flag is set) the text is not ASCII.
pub type Gate = (Vec<String>, bool);

/// A [`Gate`] with its literals as ids in the scanner's literal automaton.
type LiteralGate = (Vec<usize>, bool);

/// What a scan needs besides the text: the cue tables and how points add up.
pub struct Tables {
    /// Whole words and two-word phrases ("how are").
    pub words: Vec<(String, Entries)>,
    pub stems: Vec<(String, Entries)>,
    /// In the order the reference tries them.
    pub cjk: Vec<(String, Entries)>,
    /// (literal, category, weight, label)
    pub markers: Vec<(String, usize, f64, String)>,
    /// (Rust pattern, gates, category, weight, label): the pattern is only tried when each gate
    /// passes, see [`Gate`].
    pub patterns: Vec<(String, Vec<Gate>, usize, f64, String)>,
    /// Kana and CJK ideographs: only text with one of these is searched for CJK cues.
    pub wide_chars: Vec<(u32, u32)>,
    /// The characters that end the first clause (and ". ").
    pub clause_ends: String,
    pub categories: usize,
    pub text_weight: f64,
    pub system_weight: f64,
    pub section_cap: f64,
    pub lead_bonus: f64,
    pub end_bonus: f64,
}

/// The compiled tables.
pub struct Scanner {
    words: FxHashMap<String, Entries>,
    /// Words that start a phrase, with (second word, phrase).
    phrase_next: FxHashMap<String, Vec<(String, String)>>,
    stems: FxHashMap<String, Entries>,
    stem_heads: FxHashSet<String>,
    stem_lengths: Vec<usize>,
    cjk: Vec<(String, Entries)>,
    cjk_keys: FxHashSet<String>,
    /// Every marker and gate literal, found in one pass over the text.
    literals: AhoCorasick,
    literal_count: usize,
    /// (literal id, category, weight, label)
    markers: Vec<(usize, usize, f64, String)>,
    /// (gates as literal ids, Rust pattern, category, weight, label)
    patterns: Vec<(Vec<LiteralGate>, Regex, usize, f64, String)>,
    word: CharSet,
    wide: CharSet,
    space: CharSet,
    clause_ends: Vec<char>,
    categories: usize,
    text_weight: f64,
    system_weight: f64,
    section_cap: f64,
    lead_bonus: f64,
    end_bonus: f64,
}

/// Per category: the points it scored, and its cues as (points, label).
pub struct Scores {
    pub total: Vec<f64>,
    pub cues: Vec<Vec<(f64, String)>>,
}

/// Python's `\w[\w'+#\-]*` found all over `text`.
fn tokens<'a>(text: &'a str, word: &CharSet) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        match start {
            None => {
                if word.contains(c) {
                    start = Some(i);
                }
            }
            Some(s) => {
                if !(matches!(c, '\'' | '+' | '#' | '-') || word.contains(c)) {
                    out.push(&text[s..i]);
                    start = None;
                }
            }
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// The first `n` characters of `s`, `None` when it is shorter.
fn char_prefix(s: &str, n: usize) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() < n {
        return None; // fewer bytes, so fewer characters
    }
    if b[..n].is_ascii() {
        return Some(&s[..n]);
    }
    if n == 0 {
        return Some("");
    }
    match s.char_indices().nth(n) {
        Some((i, _)) => Some(&s[..i]),
        None if s.chars().count() == n => Some(s),
        None => None,
    }
}

/// Byte offset of character `n` (the end when the text is shorter).
fn char_offset(s: &str, n: usize) -> usize {
    if s.is_ascii() {
        return n.min(s.len());
    }
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// Whether `first second` are neighbours among `tokens`.
fn adjacent(tokens: &[&str], first: &str, second: &str) -> bool {
    tokens.windows(2).any(|w| w[0] == first && w[1] == second)
}

/// The keys of a part of the text (its first clause or last line) that a hit is tested against.
struct Part<'a> {
    text: &'a str,
    tokens: Vec<&'a str>,
    set: FxHashSet<&'a str>,
}

impl<'a> Part<'a> {
    fn new(text: &'a str, word: &CharSet) -> Self {
        let tokens = tokens(text, word);
        let set = tokens.iter().copied().collect();
        Part { text, tokens, set }
    }

    /// `key in _keys(part)` of the reference: a token, a phrase of neighbouring tokens, or a CJK
    /// cue in a text that is not ASCII.
    fn has(&self, key: &str, scanner: &Scanner) -> bool {
        if self.set.contains(key) {
            return true;
        }
        if let Some((first, second)) = key.split_once(' ') {
            if self.tokens.len() > 1 && adjacent(&self.tokens, first, second) {
                return true;
            }
        }
        !self.text.is_ascii() && scanner.cjk_keys.contains(key) && self.text.contains(key)
    }
}

impl Scanner {
    pub fn new(t: Tables) -> Result<Self, String> {
        let mut phrase_next: FxHashMap<String, Vec<(String, String)>> = FxHashMap::default();
        let mut words = FxHashMap::default();
        for (key, entries) in t.words {
            if let Some((first, second)) = key.split_once(' ') {
                phrase_next
                    .entry(first.to_string())
                    .or_default()
                    .push((second.to_string(), key.clone()));
            }
            words.insert(key, entries);
        }
        let mut stems = FxHashMap::default();
        let mut stem_heads = FxHashSet::default();
        let mut stem_lengths = Vec::new();
        for (stem, entries) in t.stems {
            let n = stem.chars().count();
            let head = char_prefix(&stem, 4).ok_or_else(|| format!("stem {stem:?} too short"))?;
            stem_heads.insert(head.to_string());
            if !stem_lengths.contains(&n) {
                stem_lengths.push(n);
            }
            stems.insert(stem, entries);
        }
        stem_lengths.sort_unstable_by(|a, b| b.cmp(a));
        let cjk_keys = t.cjk.iter().map(|(k, _)| k.clone()).collect();
        let mut literal_ids: FxHashMap<String, usize> = FxHashMap::default();
        let mut literal_list: Vec<String> = Vec::new();
        let mut id = |lit: String| -> usize {
            *literal_ids.entry(lit.clone()).or_insert_with(|| {
                literal_list.push(lit);
                literal_list.len() - 1
            })
        };
        let mut markers = Vec::with_capacity(t.markers.len());
        for (lit, cat, w, label) in t.markers {
            markers.push((id(lit), cat, w, label));
        }
        let mut patterns = Vec::with_capacity(t.patterns.len());
        for (pattern, gates, cat, w, label) in t.patterns {
            let re = Regex::new(&pattern).map_err(|e| format!("pattern {label:?}: {e}"))?;
            let gates = gates
                .into_iter()
                .map(|(lits, any_non_ascii)| {
                    (lits.into_iter().map(&mut id).collect(), any_non_ascii)
                })
                .collect();
            patterns.push((gates, re, cat, w, label));
        }
        if literal_list.iter().any(String::is_empty) {
            return Err("empty marker or gate literal".to_string());
        }
        let literals = AhoCorasick::new(&literal_list).map_err(|e| format!("markers: {e}"))?;
        let all_cats = words
            .values()
            .chain(stems.values())
            .chain(t.cjk.iter().map(|(_, e)| e))
            .flatten()
            .map(|&(c, _)| c)
            .chain(markers.iter().map(|m| m.1))
            .chain(patterns.iter().map(|p| p.2));
        if let Some(bad) = all_cats.into_iter().find(|&c| c >= t.categories) {
            return Err(format!("category index {bad} out of range"));
        }
        Ok(Scanner {
            words,
            phrase_next,
            stems,
            stem_heads,
            stem_lengths,
            cjk: t.cjk,
            cjk_keys,
            literals,
            literal_count: literal_list.len(),
            markers,
            patterns,
            word: CharSet::new(class_ranges(PY_WORD)?),
            wide: CharSet::new(t.wide_chars),
            space: CharSet::new(class_ranges(PY_SPACE)?),
            clause_ends: t.clause_ends.chars().collect(),
            categories: t.categories,
            text_weight: t.text_weight,
            system_weight: t.system_weight,
            section_cap: t.section_cap,
            lead_bonus: t.lead_bonus,
            end_bonus: t.end_bonus,
        })
    }

    /// The scores of a prompt whose last user message starts with `head` and ends with `tail`
    /// (empty when the message is short), as [`Scanner::scan`] with the instruction's bounds.
    pub fn scan_prompt(&self, head: &str, tail: &str, system: &str, top: usize) -> Scores {
        let joined;
        let text = if tail.is_empty() {
            head
        } else {
            joined = format!("{head}\n{tail}");
            &joined
        };
        let (lead_end, end_start) = self.instruction(head, text);
        self.scan(text, lead_end, end_start, system, top)
    }

    /// Where the instruction may sit, in characters: the end of the first clause of `head` (in
    /// its first 200 characters, and not its end) and the start of the last line or sentence of
    /// `text`; 0 and -1 for none.
    fn instruction(&self, head: &str, text: &str) -> (i64, i64) {
        let mut clause_end = None;
        let mut chars = head.chars().take(200).enumerate().peekable();
        while let Some((i, c)) = chars.next() {
            if self.clause_ends.contains(&c) {
                clause_end = Some(i + 1);
                break;
            }
            if c == '.' && chars.peek().is_some_and(|&(_, n)| self.space.contains(n)) {
                clause_end = Some(i + 2);
                break;
            }
        }
        let Some(lead_end) = clause_end else {
            return (0, -1);
        };
        let is_space = |c: char| self.space.contains(c);
        if lead_end >= head.trim_end_matches(is_space).chars().count() {
            return (0, -1);
        }
        let last = text.trim_end_matches(is_space);
        let cut = match (last.rfind('\n'), last.rfind(". ")) {
            (None, None) => 0,
            (a, b) => last[..a.max(b).unwrap_or(0)].chars().count(),
        };
        (lead_end as i64, if cut > 0 { cut as i64 } else { -1 })
    }

    /// The scores of a prompt: `text` (the user message, with its first clause ending at character
    /// `lead_end` and its last line starting at character `end_start`; 0 and -1 for none) and the
    /// system prompt. Each category's cues come sorted by points (ties in the order found), one
    /// per label, at most `top`.
    pub fn scan(
        &self,
        text: &str,
        lead_end: i64,
        end_start: i64,
        system: &str,
        top: usize,
    ) -> Scores {
        let mut total = vec![0.0; self.categories];
        let mut cues: Vec<Vec<(f64, String)>> = vec![Vec::new(); self.categories];
        self.score_text(
            text,
            self.text_weight,
            &mut total,
            &mut cues,
            lead_end,
            end_start,
        );
        self.score_text(system, self.system_weight, &mut total, &mut cues, 0, -1);
        for found in &mut cues {
            // Stable: equal points keep the order they were found in.
            found.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut keep: Vec<(f64, String)> = Vec::with_capacity(top);
            for (points, label) in found.drain(..) {
                if keep.len() == top {
                    break;
                }
                if !keep.iter().any(|(_, l): &(f64, String)| *l == label) {
                    keep.push((points, label));
                }
            }
            *found = keep;
        }
        Scores { total, cues }
    }

    /// Adds `word`'s cue (a whole word) to `found` and its stem to `stems`.
    fn lookup<'t>(&'t self, word: &'t str, found: &mut Vec<&'t str>, stems: &mut Vec<&'t str>) {
        if let Some((key, _)) = self.words.get_key_value(word) {
            found.push(key);
        }
        let Some(head) = char_prefix(word, 4) else {
            return;
        };
        if !self.stem_heads.contains(head) {
            return;
        }
        for &len in &self.stem_lengths {
            if let Some(p) = char_prefix(word, len) {
                if let Some((stem, _)) = self.stems.get_key_value(p) {
                    stems.push(stem);
                    return;
                }
            }
        }
    }

    fn score_text(
        &self,
        text: &str,
        weight: f64,
        total: &mut [f64],
        cues: &mut [Vec<(f64, String)>],
        lead_end: i64,
        end_start: i64,
    ) {
        if text.is_empty() {
            return;
        }
        let n = self.categories;
        let mut scores = vec![0.0; n];
        let mut bonus = vec![0.0; n];
        let toks = tokens(text, &self.word);
        // Cue words and phrases, then stems, looked up token by token: a word's first four
        // letters pick the few stems worth trying, longest first (one stem per word).
        let mut found: Vec<&str> = Vec::new();
        let mut stems: Vec<&str> = Vec::new();
        let elisions = text.contains('\'');
        for (i, &t) in toks.iter().enumerate() {
            self.lookup(t, &mut found, &mut stems);
            if elisions {
                // Elisions: l'area, d'une, qu'il; the whole token counts too (what's).
                if let Some(j) = t.rfind('\'') {
                    self.lookup(&t[j + 1..], &mut found, &mut stems);
                }
            }
            if let (Some(next), Some(&after)) = (self.phrase_next.get(t), toks.get(i + 1)) {
                for (second, phrase) in next {
                    if second == after {
                        found.push(phrase);
                    }
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        stems.sort_unstable();
        stems.dedup();
        let mut hits: Vec<(&str, &Entries)> = found
            .iter()
            .filter_map(|k| self.words.get(*k).map(|e| (*k, e)))
            .collect();
        if !text.is_ascii() && text.chars().any(|c| self.wide.contains(c)) {
            for (cue, entries) in &self.cjk {
                if text.contains(cue.as_str()) {
                    hits.push((cue, entries));
                }
            }
        }
        if !hits.is_empty() {
            let lead = (lead_end > 0).then(|| {
                let stop = char_offset(text, lead_end as usize);
                Part::new(&text[..stop], &self.word)
            });
            let end = (end_start >= 0).then(|| {
                let start = char_offset(text, end_start as usize);
                Part::new(&text[start..], &self.word)
            });
            for (key, entries) in hits {
                let mut extra = 0.0;
                if lead.as_ref().is_some_and(|p| p.has(key, self)) {
                    extra += self.lead_bonus;
                }
                if end.as_ref().is_some_and(|p| p.has(key, self)) {
                    extra += self.end_bonus;
                }
                for &(cat, w) in entries {
                    scores[cat] += w * weight;
                    cues[cat].push((w * (weight + extra), key.to_string()));
                    if extra != 0.0 {
                        bonus[cat] += w * extra;
                    }
                }
            }
        }
        for stem in stems {
            for &(cat, w) in &self.stems[stem] {
                scores[cat] += w * weight;
                cues[cat].push((w * weight, format!("{stem}*")));
            }
        }
        let mut present = vec![false; self.literal_count];
        for m in self.literals.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
        }
        for (lit, cat, w, label) in &self.markers {
            if present[*lit] {
                scores[*cat] += w * weight;
                cues[*cat].push((w * weight, label.clone()));
            }
        }
        let ascii = text.is_ascii();
        for (gates, re, cat, w, label) in &self.patterns {
            let open = gates.iter().all(|(lits, any_non_ascii)| {
                (*any_non_ascii && !ascii) || lits.iter().any(|&l| present[l])
            });
            if open && re.is_match(text) {
                scores[*cat] += w * weight;
                cues[*cat].push((w * weight, label.clone()));
            }
        }
        let cap = self.section_cap * weight;
        let bonus_cap = self.section_cap * (self.lead_bonus + self.end_bonus);
        for cat in 0..n {
            let (v, b) = (scores[cat], bonus[cat]);
            if v != 0.0 {
                total[cat] += v.min(cap) + b.min(bonus_cap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word() -> CharSet {
        CharSet::new(class_ranges(PY_WORD).unwrap())
    }

    fn scanner() -> Scanner {
        Scanner::new(Tables {
            words: vec![
                ("poem".into(), vec![(1, 4.0)]),
                ("python".into(), vec![(0, 3.0)]),
                ("how are".into(), vec![(2, 3.0)]),
            ],
            stems: vec![("refactor".into(), vec![(0, 3.0)])],
            cjk: vec![("诗".into(), vec![(1, 4.0)])],
            markers: vec![("```".into(), 0, 4.0, "code block".into())],
            patterns: vec![(
                r"\d\s?%".into(),
                vec![(vec!["%".into()], false)],
                0,
                2.0,
                "percentage".into(),
            )],
            wide_chars: vec![(0x4e00, 0x9fff)],
            clause_ends: ":\n?!".into(),
            categories: 3,
            text_weight: 1.0,
            system_weight: 0.5,
            section_cap: 9.0,
            lead_bonus: 1.5,
            end_bonus: 1.0,
        })
        .unwrap()
    }

    #[test]
    fn tokens_follow_the_python_pattern() {
        let w = word();
        assert_eq!(tokens("-a+b c# 'x' é-", &w), ["a+b", "c#", "x'", "é-"]);
        // Python's classes: marks and connector punctuation other than `_` are not word
        // characters, numbers of every kind are; \x1c is a space.
        assert_eq!(
            tokens("a\u{301}b x\u{203f}y ½", &w),
            ["a", "b", "x", "y", "½"]
        );
        let space = CharSet::new(class_ranges(PY_SPACE).unwrap());
        assert!(
            space.contains('\x1c') && space.contains('\u{3000}') && !space.contains('\u{200b}')
        );
        assert!(tokens("  ,. ", &w).is_empty());
    }

    #[test]
    fn words_phrases_stems_markers_and_patterns_score() {
        let s = scanner().scan("how are you? refactoring python 5% ```", 0, -1, "poem", 3);
        assert_eq!(s.total, vec![9.0, 2.0, 3.0]);
        let labels: Vec<&str> = s.cues[0].iter().map(|c| c.1.as_str()).collect();
        assert_eq!(labels, ["code block", "python", "refactor*"]);
        assert_eq!(s.cues[1], vec![(2.0, "poem".to_string())]);
    }

    #[test]
    fn first_clause_and_cjk_score_a_bonus() {
        let s = scanner().scan("诗: 写 python", 2, -1, "", 3);
        assert_eq!(s.cues[1], vec![(4.0 * (1.0 + 1.5), "诗".to_string())]);
        assert_eq!(s.total[1], 4.0 + 6.0);
        assert_eq!(s.cues[0], vec![(3.0, "python".to_string())]);
    }

    #[test]
    fn the_instruction_is_the_first_clause_or_the_last_line() {
        let s = scanner();
        assert_eq!(
            s.instruction("poem: about rain", "poem: about rain"),
            (5, -1)
        );
        assert_eq!(s.instruction("a. b\nc. d  ", "a. b\nc. d  "), (3, 6));
        assert_eq!(
            s.instruction("only one clause:", "only one clause:"),
            (0, -1)
        );
        assert_eq!(
            s.instruction("no clause at all", "no clause at all"),
            (0, -1)
        );
        let found = s.scan_prompt("poem: a", "python", "", 3);
        assert_eq!(found.cues[1], vec![(4.0 * (1.0 + 1.5), "poem".to_string())]);
        assert_eq!(
            found.cues[0],
            vec![(3.0 * (1.0 + 1.0), "python".to_string())]
        );
    }

    #[test]
    fn the_section_cap_holds() {
        let s = scanner().scan("poem poem poem", 0, -1, "", 3);
        assert_eq!(s.total[1], 4.0);
        let long = "```, python, refactor, 1%";
        assert_eq!(scanner().scan(long, 0, -1, "", 3).total[0], 9.0);
    }

    #[test]
    fn bad_tables_are_refused() {
        let t = Tables {
            words: vec![("x".into(), vec![(7, 1.0)])],
            stems: vec![],
            cjk: vec![],
            markers: vec![],
            patterns: vec![],
            wide_chars: vec![],
            clause_ends: String::new(),
            categories: 3,
            text_weight: 1.0,
            system_weight: 0.5,
            section_cap: 9.0,
            lead_bonus: 1.5,
            end_bonus: 1.0,
        };
        assert!(Scanner::new(t).is_err());
    }
}
