//! The streaming scrubber: chunks in, text out as soon as no secret can still start in it.
//!
//! It runs the one-shot scan ([`super::engine`]) over the text received so far and stops where a
//! decision needs text that has not arrived: a trigger cut by the end of the chunk, a rule's walk
//! still alive, the end of an over-long secret. Everything before that point is emitted; the rest
//! waits for the next chunk. Every rule's walk is bounded, so what waits is too.

use super::engine::{Scan, Scratch, Scrubber};

/// Bytes of emitted text kept before what is held back (see `compact`).
const CONTEXT: usize = 3;

/// A scrubber over a stream of chunks; the output equals the one-shot scrub of their concatenation.
pub struct Stream {
    /// The text from offset `base` of the stream on: what is not emitted yet, preceded by a few
    /// bytes of emitted context.
    buf: String,
    base: usize,
    scan: Scan,
    pub counts: Vec<u64>,
    scratch: Scratch,
}

impl Stream {
    pub fn new(scrubber: &Scrubber) -> Self {
        Self::with_scratch(scrubber, scrubber.scratch())
    }

    /// A stream that uses `scratch` (from a pool: making one costs more than a short stream).
    pub fn with_scratch(scrubber: &Scrubber, mut scratch: Scratch) -> Self {
        scratch.reset();
        Self {
            buf: String::new(),
            base: 0,
            scan: Scan::default(),
            counts: vec![0; scrubber.rule_names().len()],
            scratch,
        }
    }

    /// The scratch space back, for the next stream.
    pub fn into_scratch(self) -> Scratch {
        self.scratch
    }

    /// Bytes received and not emitted yet.
    pub fn held(&self) -> usize {
        self.base + self.buf.len() - self.scan.copied
    }

    /// Append a chunk; return the text that is final now.
    pub fn push(&mut self, scrubber: &Scrubber, chunk: &str) -> String {
        self.buf.push_str(chunk);
        let mut out = String::new();
        let hold = scrubber.run(
            &mut self.scratch,
            &mut self.scan,
            &self.buf,
            self.base,
            false,
            &mut out,
            &mut self.counts,
        );
        if hold > self.scan.copied {
            out.push_str(&self.buf[self.scan.copied - self.base..hold - self.base]);
            self.scan.copied = hold;
        }
        self.compact();
        out
    }

    /// Flush: scrub what is held back as the end of the text.
    pub fn finish(&mut self, scrubber: &Scrubber) -> String {
        let mut out = String::new();
        scrubber.run(
            &mut self.scratch,
            &mut self.scan,
            &self.buf,
            self.base,
            true,
            &mut out,
            &mut self.counts,
        );
        out.push_str(&self.buf[self.scan.copied - self.base..]);
        self.buf.clear();
        self.base = 0;
        self.scan = Scan::default();
        self.scratch.reset();
        out
    }

    /// Drop emitted text, keeping three bytes of context (for word boundaries, the character
    /// before a value and the escape before a token: `\n`, `%3D`).
    fn compact(&mut self) {
        let held = self.scan.copied - self.base;
        if held < 64 {
            return;
        }
        let mut keep = held - CONTEXT;
        while !self.buf.is_char_boundary(keep) {
            keep -= 1;
        }
        self.buf.drain(..keep);
        self.base += keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub(s: &Scrubber, text: &str) -> String {
        let mut counts = vec![0; s.rule_names().len()];
        s.scrub(&mut s.scratch(), text, &mut counts).into_owned()
    }

    fn streamed(s: &Scrubber, text: &str, size: usize) -> (String, usize) {
        let mut st = Stream::new(s);
        let mut got = String::new();
        let mut held = 0;
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(size) {
            got.push_str(&st.push(s, &chunk.iter().collect::<String>()));
            held = held.max(st.held());
        }
        got.push_str(&st.finish(s));
        (got, held)
    }

    #[test]
    fn stream_equals_one_shot() {
        let s = Scrubber::new(&["hunter2hunter2"]).unwrap();
        let text = "key sk-proj-abcdefghijklmnopqrstuvwxyz0123 and password=hunter22 \
                    Authorization: Bearer abc123def456ghi789 hunter2hunter2 end";
        let want = scrub(&s, text);
        for size in 1..12 {
            assert_eq!(streamed(&s, text, size).0, want, "chunk size {size}");
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
            format!(
                "x sk-{} y password=\"{} z",
                "a1B2".repeat(5000),
                "q".repeat(9000)
            ),
            format!("token={} and more", "Zq9x".repeat(4000)),
        ] {
            let want = scrub(&s, &text);
            for size in [1, 7, 64, 5000] {
                assert_eq!(streamed(&s, &text, size).0, want, "chunk size {size}");
            }
        }
    }

    #[test]
    fn held_back_text_stays_bounded() {
        let s = Scrubber::new(&["hunter2hunter2"]).unwrap();
        let bound = crate::rules::MAX_PEM + 64;
        for unit in [
            "-----BEGIN PRIVATE KEY-----\nAAAA",
            "token=...",
            "password=\"",
            "sk-a1B2c3D4",
            "Authorization: Bearer ",
            "hunter2hunter",
        ] {
            let text = unit.repeat(200_000 / unit.len());
            let (got, held) = streamed(&s, &text, 1000);
            assert_eq!(got, scrub(&s, &text), "{unit:?}");
            assert!(held <= bound, "{unit:?}: held {held} bytes");
        }
    }

    #[test]
    fn over_long_secret_is_redacted_whole_in_a_stream() {
        let s = Scrubber::new::<&str>(&[]).unwrap();
        let key = format!("sk-proj-{}", "Ab3dEf6hIj9kLm2n".repeat(2000));
        let text = format!("use {key} now");
        for size in [1, 100, 10_000] {
            let (got, held) = streamed(&s, &text, size);
            assert_eq!(got, "use REDACTED now", "chunk size {size}");
            assert!(held <= crate::rules::MAX_MATCH + 64);
        }
    }
}
