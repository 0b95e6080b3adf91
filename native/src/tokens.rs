//! Token counting for OpenAI's `o200k_base` and `cl100k_base` encodings, offline.
//!
//! The rank tables are compiled into the binary (by the `bpe-openai` crate). At first use each
//! table is checked against the SHA-256 of OpenAI's published `.tiktoken` file: the file is
//! rebuilt line by line (`base64(token) rank`) from the table and hashed.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use base64::Engine as _;
use bpe_openai::Tokenizer;
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
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownEncoding(name) => write!(
                f,
                "unknown encoding {name:?}: expected one of {}",
                ENCODINGS.join(", ")
            ),
            Self::Integrity(msg) => f.write_str(msg),
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

/// A checked tokenizer plus a map from whole-token bytes to ids: a pre-tokenized piece that
/// is itself a token encodes to that one token (tiktoken takes the same shortcut), which skips
/// the byte-pair merge for most words.
pub struct Encoding {
    pub tokenizer: &'static Tokenizer,
    whole: FxHashMap<&'static [u8], u32>,
}

impl Encoding {
    fn new(tokenizer: &'static Tokenizer) -> Self {
        let n = tokenizer.bpe.num_tokens() as u32;
        let mut whole = FxHashMap::with_capacity_and_hasher(n as usize, Default::default());
        for id in 0..n {
            whole.insert(tokenizer.bpe.token_bytes(id), id);
        }
        Self { tokenizer, whole }
    }

    /// Number of tokens, as tiktoken's `encode_ordinary(text)` length.
    pub fn count(&self, text: &str) -> usize {
        self.tokenizer
            .split(text)
            .map(|piece| {
                if self.whole.contains_key(piece.as_bytes()) {
                    1
                } else {
                    self.tokenizer.bpe.count(piece.as_bytes())
                }
            })
            .sum()
    }

    /// Token ids, as tiktoken's `encode_ordinary(text)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        for piece in self.tokenizer.split(text) {
            match self.whole.get(piece.as_bytes()) {
                Some(&id) => out.push(id),
                None => out.extend(self.tokenizer.bpe.encode_via_backtracking(piece.as_bytes())),
            }
        }
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
            Ok(Encoding::new(tok))
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
    fn unknown_encoding_is_an_error() {
        let err = count("p50k_base", "x").unwrap_err();
        assert!(err.to_string().contains("unknown encoding"));
    }
}
