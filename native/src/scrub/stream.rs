//! The streaming scrubber: chunks in, text out as soon as no secret can still start in it.

use super::engine::{next_char, Alive, Found, Scratch, Scrubber};
use super::REDACTED;

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
