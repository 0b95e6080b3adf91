//! Server-sent events from a byte stream, in linear time however the bytes are chunked.
//!
//! Each byte is searched for a newline once; consumed lines are dropped once per chunk. A line
//! longer than the cap (an endless line from a hostile or broken provider) is an error instead
//! of a buffer that grows without bound.

/// One event: its name (`message` unless an `event:` line named it) and its data lines joined
/// by `\n`.
pub type Event = (String, Vec<u8>);

/// A line of the stream is longer than the cap.
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` before this were searched already: no newline there.
    scan: usize,
    event: Option<String>,
    data: Vec<u8>,
    data_lines: usize,
    max_line: usize,
    out: Vec<Event>,
}

impl SseParser {
    pub fn new(max_line: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            scan: 0,
            event: None,
            data: Vec::new(),
            data_lines: 0,
            max_line,
            out: Vec::new(),
        }
    }

    /// Feeds the next bytes; complete events are kept for [`SseParser::take`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), LineTooLong> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = memchr::memchr(b'\n', &self.buf[self.scan..]) {
            let nl = self.scan + pos;
            let mut end = nl;
            if end > start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let (s, e) = (start, end);
            start = nl + 1;
            self.scan = start;
            self.line(s, e);
        }
        // no newline in the rest: the next chunk's search starts after it
        self.scan = self.buf.len();
        if start > 0 {
            self.buf.drain(..start);
            self.scan -= start;
        }
        if self.buf.len() > self.max_line {
            return Err(LineTooLong);
        }
        Ok(())
    }

    fn line(&mut self, s: usize, e: usize) {
        if s == e {
            self.dispatch();
            return;
        }
        let line = &self.buf[s..e];
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data_lines > 0 {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.data_lines += 1;
        } else if let Some(value) = line.strip_prefix(b"event:") {
            self.event = Some(String::from_utf8_lossy(value).trim().to_string());
        }
        // comments (":") and other fields (id, retry) carry nothing IIR uses
    }

    fn dispatch(&mut self) {
        if self.data_lines > 0 {
            let name = self.event.take().unwrap_or_else(|| "message".to_string());
            self.out.push((name, std::mem::take(&mut self.data)));
        }
        self.event = None;
        self.data.clear();
        self.data_lines = 0;
    }

    /// The end of the stream: a last `data:` line without its newline, and a last event without
    /// its blank line, still count.
    pub fn finish(&mut self) {
        let mut tail = std::mem::take(&mut self.buf);
        if tail.last() == Some(&b'\r') {
            tail.pop();
        }
        if let Some(value) = tail.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data_lines > 0 {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.data_lines += 1;
        }
        self.scan = 0;
        self.dispatch();
    }

    /// The events completed so far, in order.
    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.out)
    }

    pub fn has_events(&self) -> bool {
        !self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::new(1 << 20);
        for c in chunks {
            p.feed(c).unwrap();
        }
        p.finish();
        p.take()
    }

    #[test]
    fn frames_and_names() {
        let got = parse(&[b"event: a\ndata: 1\n\n: comment\ndata:2\ndata: 3\r\n\r\n"]);
        assert_eq!(
            got,
            vec![
                ("a".into(), b"1".to_vec()),
                ("message".into(), b"2\n3".to_vec())
            ]
        );
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let text: &[u8] = b"data: {\"a\":1}\n\nevent: x\ndata: y\n\ndata: last";
        let whole = parse(&[text]);
        for cut in 0..text.len() {
            assert_eq!(parse(&[&text[..cut], &text[cut..]]), whole);
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse(&bytes), whole);
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn a_line_over_the_cap_is_an_error() {
        let mut p = SseParser::new(8);
        assert!(p.feed(b"data: 12\n\n").is_ok());
        assert_eq!(p.feed(b"data: 123456789"), Err(LineTooLong));
    }

    #[test]
    fn linear_in_a_long_line_fed_byte_by_byte() {
        let mut p = SseParser::new(1 << 22);
        for _ in 0..1_000_000 {
            p.feed(b"x").unwrap();
        }
        assert!(!p.has_events());
    }
}
