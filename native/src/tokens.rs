//! Token counting for OpenAI's `o200k_base` and `cl100k_base` encodings, offline.
//!
//! The rank tables are compiled into the binary (by the `bpe-openai` crate). At first use each
//! table is checked against the SHA-256 of OpenAI's published `.tiktoken` file: the file is
//! rebuilt line by line (`base64(token) rank`) from the table and hashed.

use std::cell::RefCell;
use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use base64::Engine as _;
use bpe_openai::Tokenizer;
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::{Anchored, HalfMatch, Input};
use sha2::{Digest, Sha256};

/// The encodings this module knows.
pub const ENCODINGS: &[&str] = &["o200k_base", "cl100k_base"];

/// SHA-256 of OpenAI's published rank files (the values `tiktoken` checks its downloads against).
const O200K_SHA256: &str = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d";
const CL100K_SHA256: &str = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7";

/// Errors from token counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    UnknownEncoding(String),
    Integrity(String),
    /// The pre-tokenizer could not be built (a bug, reported rather than a panic).
    Build(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownEncoding(name) => write!(
                f,
                "unknown encoding {name:?}: expected one of {}",
                ENCODINGS.join(", ")
            ),
            Self::Integrity(msg) | Self::Build(msg) => f.write_str(msg),
        }
    }
}

/// SHA-256 of the `.tiktoken` file that the tokenizer's table corresponds to.
pub fn table_sha256(tok: &Tokenizer) -> String {
    let mut hasher = Sha256::new();
    let mut line = String::new();
    for id in 0..tok.bpe.num_tokens() as u32 {
        line.clear();
        base64::engine::general_purpose::STANDARD.encode_string(tok.bpe.token_bytes(id), &mut line);
        line.push(' ');
        line.push_str(&id.to_string());
        line.push('\n');
        hasher.update(line.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pre-tokenization patterns, by encoding: OpenAI's published split patterns, with the look-ahead
/// `\s+(?!\S)` (which the lazy DFA cannot run) expressed as `\s+$` plus a pattern `\s+\s`
/// whose last character is given back. Earlier patterns win at the same position, as in the
/// original alternation. `(pattern, gives back its last character)`.
fn split_patterns(name: &str) -> Vec<(String, bool)> {
    let first = match name {
        "o200k_base" => [
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
            r"\s*[\r\n]+",
            r"\s+$",
        ]
        .join("|"),
        _ => [
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
            r"[^\r\n\p{L}\p{N}]?\p{L}+",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n]*",
            r"\s*[\r\n]+",
            r"\s+$",
        ]
        .join("|"),
    };
    vec![
        (first, false),
        (r"\s+\s".to_string(), true),
        (r"\s+".to_string(), false),
    ]
}

/// The pre-tokenizer: one anchored lazy-DFA search per piece, with a per-thread cache (no
/// pool, no reverse search: the start of a piece is where the previous one ended).
struct Splitter {
    dfa: DFA,
    gives_back: Vec<bool>,
    /// Which per-thread cache this splitter uses.
    slot: usize,
}

thread_local! {
    static SPLIT_CACHES: RefCell<[Option<DfaCache>; 2]> = const { RefCell::new([None, None]) };
    static PIECE_COUNTS: RefCell<[Option<Box<[Memo]>>; 2]> = const { RefCell::new([None, None]) };
}

/// One slot of the per-thread table of recent pieces and their token counts: words recur, and
/// a piece's count otherwise costs a look-up in a table too large for the CPU cache and,
/// for pieces that are not one token, a byte-pair merge.
#[derive(Clone, Copy)]
struct Memo {
    /// The piece (up to 16 bytes) as two overlapping little-endian words, see `cover`.
    words: (u64, u64),
    /// Its length; `u32::MAX` for an empty slot.
    len: u32,
    count: u32,
}

impl Memo {
    const EMPTY: Memo = Memo {
        words: (0, 0),
        len: u32::MAX,
        count: 0,
    };
    const SLOTS: usize = 4096;
}

/// Two words that, with the length, determine a slice of up to 16 bytes (overlapping loads
/// that cover every byte).
#[inline(always)]
fn cover(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let half = |i: usize| u64::from(u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4])));
    match n {
        8.. => (word(0), word(n - 8)),
        4..=7 => (half(0), half(n - 4)),
        1..=3 => (
            u64::from(b[0]) | (u64::from(b[n / 2]) << 8) | (u64::from(b[n - 1]) << 16),
            0,
        ),
        0 => (0, 0),
    }
}

impl Splitter {
    fn new(name: &str, slot: usize) -> Result<Self, TokenError> {
        let (patterns, gives_back): (Vec<String>, Vec<bool>) =
            split_patterns(name).into_iter().unzip();
        let dfa = DFA::builder()
            .configure(DFA::config().cache_capacity(4 << 20))
            .build_many(&patterns)
            .map_err(|e| TokenError::Build(format!("split patterns of {name}: {e}")))?;
        Ok(Self {
            dfa,
            gives_back,
            slot,
        })
    }

    /// The end and pattern of the piece at `pos`: an anchored leftmost-first search, the lazy
    /// DFA stepped here byte by byte (pieces are a few bytes; a full search call costs more
    /// to set up than to run). `None` if the DFA gave up.
    #[inline]
    fn piece_end(&self, cache: &mut DfaCache, text: &str, pos: usize) -> Option<HalfMatch> {
        let bytes = text.as_bytes();
        let input = Input::new(text)
            .span(pos..text.len())
            .anchored(Anchored::Yes);
        let mut sid = self.dfa.start_state_forward(cache, &input).ok()?;
        let mut found = None;
        let mut at = pos;
        while at < bytes.len() {
            sid = self.dfa.next_state(cache, sid, bytes[at]).ok()?;
            if sid.is_tagged() {
                if sid.is_match() {
                    // Match states come one byte late: the match ended before `at`.
                    found = Some(HalfMatch::new(self.dfa.match_pattern(cache, sid, 0), at));
                } else if sid.is_dead() {
                    return found;
                } else if sid.is_quit() {
                    return None;
                }
            }
            at += 1;
        }
        sid = self.dfa.next_eoi_state(cache, sid).ok()?;
        if sid.is_match() {
            found = Some(HalfMatch::new(self.dfa.match_pattern(cache, sid, 0), at));
        }
        found
    }

    /// Call `f` on every piece of `text`, in order. Returns where it stopped: `text.len()`, or
    /// earlier if the lazy DFA gave up (the caller splits the rest with the reference splitter,
    /// which also starts each search where the previous piece ended).
    fn each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) -> usize {
        SPLIT_CACHES.with(|caches| {
            let Ok(mut caches) = caches.try_borrow_mut() else {
                return 0;
            };
            let cache = caches[self.slot].get_or_insert_with(|| self.dfa.create_cache());
            let mut pos = 0;
            while pos < text.len() {
                let Some(half) = self.piece_end(cache, text, pos) else {
                    return pos;
                };
                let mut end = half.offset();
                if self.gives_back[half.pattern().as_usize()] {
                    match text[pos..end].chars().next_back() {
                        Some(c) => end -= c.len_utf8(),
                        None => return pos,
                    }
                }
                if end <= pos {
                    return pos;
                }
                f(&text[pos..end]);
                pos = end;
            }
            pos
        })
    }
}

/// A checked tokenizer plus a map from whole-token bytes to ids: a pre-tokenized piece that
/// is itself a token encodes to that one token (tiktoken takes the same shortcut), which skips
/// the byte-pair merge for most words.
pub struct Encoding {
    pub tokenizer: &'static Tokenizer,
    whole: FxHashMap<&'static [u8], u32>,
    splitter: Splitter,
}

impl Encoding {
    fn new(name: &str, tokenizer: &'static Tokenizer) -> Result<Self, TokenError> {
        let n = tokenizer.bpe.num_tokens() as u32;
        let mut whole = FxHashMap::with_capacity_and_hasher(n as usize, Default::default());
        for id in 0..n {
            whole.insert(tokenizer.bpe.token_bytes(id), id);
        }
        let slot = ENCODINGS.iter().position(|e| *e == name).unwrap_or(0);
        Ok(Self {
            tokenizer,
            whole,
            splitter: Splitter::new(name, slot)?,
        })
    }

    /// `count_piece`, through the table of recent pieces.
    #[inline]
    fn count_piece_memo(&self, memo: &mut [Memo], piece: &str) -> usize {
        let bytes = piece.as_bytes();
        if bytes.len() > 16 {
            return self.count_piece(piece);
        }
        let words = cover(bytes);
        let len = bytes.len() as u32;
        let hash = (words.0 ^ words.1.rotate_left(29) ^ u64::from(len))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = &mut memo[(hash >> 52) as usize % Memo::SLOTS];
        if slot.len == len && slot.words == words {
            return slot.count as usize;
        }
        let count = self.count_piece(piece);
        *slot = Memo {
            words,
            len,
            count: count as u32,
        };
        count
    }

    fn count_piece(&self, piece: &str) -> usize {
        if self.whole.contains_key(piece.as_bytes()) {
            1
        } else {
            self.tokenizer.bpe.count(piece.as_bytes())
        }
    }

    /// Number of tokens, as tiktoken's `encode_ordinary(text)` length.
    pub fn count(&self, text: &str) -> usize {
        let mut total = 0;
        let done = PIECE_COUNTS.with(|memos| match memos.try_borrow_mut() {
            Ok(mut memos) => {
                let memo = memos[self.splitter.slot]
                    .get_or_insert_with(|| vec![Memo::EMPTY; Memo::SLOTS].into_boxed_slice());
                self.splitter
                    .each(text, |piece| total += self.count_piece_memo(memo, piece))
            }
            Err(_) => self
                .splitter
                .each(text, |piece| total += self.count_piece(piece)),
        });
        total
            + self
                .tokenizer
                .split(&text[done..])
                .map(|piece| self.count_piece(piece))
                .sum::<usize>()
    }

    /// Token ids, as tiktoken's `encode_ordinary(text)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        let mut push = |piece: &str| match self.whole.get(piece.as_bytes()) {
            Some(&id) => out.push(id),
            None => out.extend(self.tokenizer.bpe.encode_via_backtracking(piece.as_bytes())),
        };
        let done = self.splitter.each(text, &mut push);
        self.tokenizer.split(&text[done..]).for_each(push);
        out
    }
}

fn verified(name: &str) -> Result<&'static Encoding, TokenError> {
    static O200K: OnceLock<Result<Encoding, TokenError>> = OnceLock::new();
    static CL100K: OnceLock<Result<Encoding, TokenError>> = OnceLock::new();
    let (cell, tok, expected) = match name {
        "o200k_base" => (&O200K, bpe_openai::o200k_base(), O200K_SHA256),
        "cl100k_base" => (&CL100K, bpe_openai::cl100k_base(), CL100K_SHA256),
        other => return Err(TokenError::UnknownEncoding(other.to_string())),
    };
    cell.get_or_init(|| {
        let got = table_sha256(tok);
        if got == expected {
            Encoding::new(name, tok)
        } else {
            Err(TokenError::Integrity(format!(
                "rank table for {name} failed its integrity check (sha256 {got}, expected {expected})"
            )))
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The encoding for a name, integrity-checked.
pub fn tokenizer(name: &str) -> Result<&'static Encoding, TokenError> {
    verified(name)
}

/// Number of tokens `tiktoken`'s `encode_ordinary` would produce.
pub fn count(name: &str, text: &str) -> Result<usize, TokenError> {
    Ok(tokenizer(name)?.count(text))
}

/// Token ids, as `tiktoken`'s `encode_ordinary`.
pub fn encode(name: &str, text: &str) -> Result<Vec<u32>, TokenError> {
    Ok(tokenizer(name)?.encode(text))
}

/// The token table (token bytes by rank), for building a reference encoder in tests.
pub fn ranks(name: &str) -> Result<Vec<Vec<u8>>, TokenError> {
    let tok = tokenizer(name)?.tokenizer;
    Ok((0..tok.bpe.num_tokens() as u32)
        .map(|id| tok.bpe.token_bytes(id).to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pass_integrity_check() {
        for name in ENCODINGS {
            tokenizer(name).unwrap();
        }
    }

    #[test]
    fn counts_known_texts() {
        assert_eq!(count("o200k_base", "hello world").unwrap(), 2);
        assert_eq!(count("cl100k_base", "hello world").unwrap(), 2);
        assert_eq!(count("o200k_base", "").unwrap(), 0);
    }

    #[test]
    fn pieces_match_the_reference_pre_tokenizer() {
        let texts = [
            "hello world",
            "  leading and trailing  ",
            "tabs\t\tand\n\n\nnewlines \r\n end\n",
            "It's they'LL we'Re I'M 'd 's",
            "numbers 1234567 12 3.14159 ١٢٣٤",
            "Les modèles répondent ; 日本語の質問にも対応できます。",
            "CamelCaseWords HTTPServer iPhone ÀÉÎ ǅungla",
            "code: fn main() { let x = a/b; } // comment\n\t\tindent",
            "emoji 👍🏽 and combining e\u{301} marks \u{200b}zero width",
            "   ",
            "\n",
            "x",
            "path/to/file.txt\r\n/usr/bin",
            "\u{a0}nbsp\u{2003}em space\u{3000}ideographic",
        ];
        for name in ENCODINGS {
            let enc = tokenizer(name).unwrap();
            for text in texts {
                let want: Vec<&str> = enc.tokenizer.split(text).collect();
                let mut got = Vec::new();
                assert_eq!(enc.splitter.each(text, |p| got.push(p)), text.len());
                assert_eq!(got, want, "{name}: {text:?}");
            }
        }
    }

    #[test]
    fn remembered_counts_equal_fresh_ones() {
        let words = [
            "a",
            "ab",
            "abc",
            "abcd",
            "hello",
            " world",
            "\u{0}\u{0}",
            "\u{0}",
            "x\u{0}",
            "日本語",
            "zqxjkvbwzqxjkvbw",
            "zqxjkvbwzqxjkvbwq",
            " counter",
            " countex",
            "1234",
            "Ünïcödé",
        ];
        for name in ENCODINGS {
            let enc = tokenizer(name).unwrap();
            for round in 0..3 {
                for (i, w) in words.iter().enumerate() {
                    let text = format!("{w}{}{w}", words[(i + round) % words.len()]);
                    let fresh: usize = enc.tokenizer.split(&text).map(|p| enc.count_piece(p)).sum();
                    assert_eq!(enc.count(&text), fresh, "{name}: {text:?}");
                    assert_eq!(
                        enc.count(&text),
                        enc.encode(&text).len(),
                        "{name}: {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_encoding_is_an_error() {
        let err = count("p50k_base", "x").unwrap_err();
        assert!(err.to_string().contains("unknown encoding"));
    }
}
