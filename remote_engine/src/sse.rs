//! The upstream's server-sent events, split out of its body as it arrives: the `data` of each
//! event, borrowed from the buffer the body was read into.
//!
//! Why not a general SSE crate: a streamed answer is one event per token, and the crate we
//! used (`eventsource-stream`) built an event struct, an id, an event-type and a data `String`
//! per event with a parser combinator, which was ~8 % of the gateway's CPU at its peak rate.
//! Here an event that is one `data:` line (what every OpenAI-compatible server sends) is a
//! slice of the read buffer: nothing is allocated per event. The parsing follows the HTML
//! standard's event-stream rules (lines end in CRLF, LF or CR; `:` starts a comment; one space
//! after the field's colon is dropped; several `data` lines join with LF; an event is
//! dispatched at a blank line, and only if it had data; a leading BOM is skipped); fields
//! other than `data` (`event`, `id`, `retry`) are read and ignored, as the OpenAI protocol
//! gives them no meaning.

use bytes::{Buf, BytesMut};

/// The largest event accepted, in bytes: an upstream that never ends a line would otherwise
/// grow the buffer without bound.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// What [`SseDecoder::next_event`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// An event (or a line) longer than [`MAX_EVENT_BYTES`].
    #[error("an event longer than {MAX_EVENT_BYTES} bytes")]
    TooLong,
    /// An event's data is not UTF-8.
    #[error("an event's data is not UTF-8")]
    NotUtf8,
}

/// The current event's data so far.
#[derive(Debug, Default)]
enum Data {
    /// No `data` line yet: a blank line dispatches nothing.
    #[default]
    None,
    /// One `data` line, still in the buffer at this range.
    InBuffer(usize, usize),
    /// Several lines joined, or one whose line was consumed before the event ended.
    Joined,
}

/// Splits an event stream into its events' data. Push the body's bytes in as they come
/// ([`Self::push`]) and take the events out ([`Self::next_event`]) until it has none.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes read and not yet consumed; the current event's lines start at its beginning.
    buffer: BytesMut,
    /// Where the next line starts in `buffer`.
    line_start: usize,
    /// Bytes of `buffer` to drop at the next call (the event handed out last borrowed them).
    consumed: usize,
    /// The last line ended in CR at the end of the buffer: an LF that comes next belongs to it.
    skip_lf: bool,
    /// Whether the stream's first bytes were seen (a BOM is skipped there only).
    started: bool,
    data: Data,
    /// The joined data of a multi-line event (kept for reuse).
    joined: Vec<u8>,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete event's data; `Ok(None)` when the bytes pushed so far end inside an
    /// event (push more). An event without data lines is not an event.
    pub fn next_event(&mut self) -> Result<Option<&str>, SseError> {
        if self.consumed > 0 {
            self.buffer.advance(self.consumed);
            self.consumed = 0;
        }
        if !self.started {
            if self.buffer.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buffer) {
                return Ok(None);
            }
            self.started = true;
            if self.buffer.starts_with(b"\xEF\xBB\xBF") {
                self.buffer.advance(3);
            }
        }
        loop {
            if self.skip_lf && self.line_start < self.buffer.len() {
                if self.buffer[self.line_start] == b'\n' {
                    self.line_start += 1;
                }
                self.skip_lf = false;
            }
            let rest = &self.buffer[self.line_start..];
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                return self.wait_for_more().map(|()| None);
            };
            let start = self.line_start;
            let (line_end, next) = (start + end, start + end + 1);
            if self.buffer[line_end] == b'\r' {
                match self.buffer.get(next) {
                    Some(b'\n') => self.line_start = next + 1,
                    Some(_) => self.line_start = next,
                    None => {
                        self.line_start = next;
                        self.skip_lf = true;
                    }
                }
            } else {
                self.line_start = next;
            }
            if line_end == start {
                // A blank line: the event ends here.
                let bytes = match std::mem::take(&mut self.data) {
                    Data::None => continue,
                    Data::InBuffer(from, to) => &self.buffer[from..to],
                    Data::Joined => &self.joined[..],
                };
                // Dropped at the next call: `bytes` may borrow them until then.
                self.consumed = self.line_start;
                self.line_start = 0;
                return std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| SseError::NotUtf8);
            }
            self.field(start, line_end);
        }
    }

    /// Reads the line at `start..end` of the buffer (not blank) into the current event.
    fn field(&mut self, start: usize, end: usize) {
        let line = &self.buffer[start..end];
        let (name, value_start) = match memchr::memchr(b':', line) {
            // A comment.
            Some(0) => return,
            Some(colon) => {
                let space = line.get(colon + 1) == Some(&b' ');
                (&line[..colon], start + colon + 1 + space as usize)
            }
            None => (line, end),
        };
        if name != b"data" {
            return;
        }
        self.data = match std::mem::take(&mut self.data) {
            Data::None => Data::InBuffer(value_start, end),
            Data::InBuffer(from, to) => {
                self.joined.clear();
                self.joined.extend_from_slice(&self.buffer[from..to]);
                self.append_line(value_start, end)
            }
            Data::Joined => self.append_line(value_start, end),
        };
    }

    fn append_line(&mut self, start: usize, end: usize) -> Data {
        self.joined.push(b'\n');
        self.joined.extend_from_slice(&self.buffer[start..end]);
        Data::Joined
    }

    /// The buffer ends inside an event: keeps what the event still needs and drops the rest,
    /// unless the event is too long already.
    fn wait_for_more(&mut self) -> Result<(), SseError> {
        // The complete lines before `line_start` are read: a data line still in the buffer
        // is copied out (rare: an event split across reads) so that they can all go.
        if let Data::InBuffer(from, to) = self.data {
            self.joined.clear();
            self.joined.extend_from_slice(&self.buffer[from..to]);
            self.data = Data::Joined;
        }
        self.buffer.advance(self.line_start);
        self.line_start = 0;
        let data = match self.data {
            Data::Joined => self.joined.len(),
            _ => 0,
        };
        if self.buffer.len() + data > MAX_EVENT_BYTES {
            return Err(SseError::TooLong);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use proptest::prelude::*;

    /// Every event's data from `input` pushed in pieces of `piece` bytes.
    fn events(input: &[u8], piece: usize) -> Result<Vec<String>, SseError> {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        for bytes in input.chunks(piece.max(1)) {
            decoder.push(bytes);
            while let Some(data) = decoder.next_event()? {
                out.push(data.to_string());
            }
        }
        Ok(out)
    }

    #[test]
    fn reads_single_and_multi_line_events_whatever_the_line_endings_and_pieces() {
        let input = b"\xEF\xBB\xBFdata: {\"a\":1}\n\n: a comment\r\nevent: x\r\nid: 7\r\ndata:one\r\ndata:  two\r\n\r\nretry: 5\rdata\r\r\ndata: [DONE]\n\ndata: unfinished";
        let expected = ["{\"a\":1}", "one\n two", "", "[DONE]"];
        for piece in 1..=input.len() {
            assert_eq!(
                events(input, piece).unwrap(),
                expected,
                "pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_a_bom_only_counts_first() {
        assert_eq!(events(b"event: ping\n\n\n\ndata: x\n\n", 3).unwrap(), ["x"]);
        assert_eq!(
            events(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n", 1).unwrap(),
            ["a"],
            "a BOM later is part of a field name"
        );
    }

    #[test]
    fn refuses_data_that_is_not_utf8_and_lines_without_end() {
        assert_eq!(events(b"data: \xFF\n\n", 4), Err(SseError::NotUtf8));
        let mut decoder = SseDecoder::new();
        decoder.push(b"data: ");
        let line = vec![b'x'; 1 << 20];
        let mut outcome = Ok(None);
        for _ in 0..17 {
            decoder.push(&line);
            outcome = decoder.next_event().map(|d| d.map(str::len));
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome, Err(SseError::TooLong));
    }

    /// A line of an event stream: fields the protocol knows, unknown ones, comments, blanks.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => r#"[a-z {}":,\[\]]{0,12}"#.prop_map(|v| format!("data: {v}")),
            1 => "[a-z ]{0,6}".prop_map(|v| format!("data:{v}")),
            1 => Just("data".to_string()),
            1 => "[a-z ]{0,6}".prop_map(|v| format!(": {v}")),
            1 => "(event|id|retry|x)(: ?[a-z0-9]{0,4})?",
            3 => Just(String::new()),
        ]
    }

    proptest! {
        /// Whatever the lines, line endings and read boundaries, the same events' data as
        /// `eventsource-stream` (the crate this replaced) reads.
        #[test]
        fn reads_what_the_reference_crate_reads(
            lines in proptest::collection::vec((line(), 0..3usize), 0..24),
            cuts in proptest::collection::vec(1..9usize, 1..8),
        ) {
            let mut input = String::new();
            for (line, ending) in &lines {
                input.push_str(line);
                input.push_str(["\n", "\r\n", "\r"][*ending]);
            }
            // A CR that ends the input ends its line here at once; the reference waits for
            // the byte after it (an LF would join it), which never comes: close it for both.
            if input.ends_with('\r') {
                input.push('\n');
            }
            // The same pieces for both, cut at the sizes drawn (cycled).
            let bytes = input.as_bytes();
            let mut pieces = Vec::new();
            let mut at = 0;
            for size in cuts.iter().cycle() {
                if at >= bytes.len() {
                    break;
                }
                let end = (at + size).min(bytes.len());
                pieces.push(bytes::Bytes::copy_from_slice(&bytes[at..end]));
                at = end;
            }
            let mut ours = Vec::new();
            let mut decoder = SseDecoder::new();
            for piece in &pieces {
                decoder.push(piece);
                while let Some(data) = decoder.next_event().unwrap() {
                    ours.push(data.to_string());
                }
            }
            let reference: Vec<String> = futures::executor::block_on(
                eventsource_stream::Eventsource::eventsource(futures::stream::iter(
                    pieces.into_iter().map(Ok::<_, std::convert::Infallible>),
                ))
                .map(|event| event.unwrap().data)
                .collect(),
            );
            prop_assert_eq!(ours, reference, "input {:?}", input);
        }
    }
}
