//! Incremental Server-Sent Events decoder following the WHATWG
//! "event stream interpretation" rules.
//!
//! The decoder works on bytes, not text: every SSE line terminator (`\n`,
//! `\r\n`, `\r`) is ASCII and can never occur inside a multi-byte UTF-8
//! sequence, so a chunk boundary that splits a character is handled by simply
//! buffering the unfinished line. Text is validated once per dispatched event.
//!
//! Events are handed to a callback as borrowed [`SseEvent`]s that point into
//! buffers the decoder reuses, so dispatching an event allocates nothing once
//! the buffers have grown to the stream's largest event.

use std::borrow::Cow;

use memchr::memchr2;

/// The UTF-8 byte order mark, stripped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event. Borrowed from the decoder; copy out what you keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, or `"message"` when the event had none.
    pub event: &'a str,
    /// The `data:` lines joined by `\n`.
    pub data: &'a str,
    /// The last event ID seen so far in the stream (`id:` persists across events).
    pub id: &'a str,
}

/// What was left over when the stream ended; see [`SseDecoder::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leftover {
    /// Bytes of an unterminated line were buffered.
    pub partial_line: bool,
    /// Fields of an event were read but no blank line dispatched it.
    pub partial_event: bool,
}

impl Leftover {
    /// True when the stream was cut mid-line or mid-event.
    pub fn any(self) -> bool {
        self.partial_line || self.partial_event
    }
}

/// Incremental SSE decoder. Feed it the byte stream in chunks of any size.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Unterminated line carried over from a previous chunk.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` in the next chunk
    /// belongs to the same line terminator.
    after_cr: bool,
    /// Bytes seen at stream start while deciding whether they form a BOM.
    bom_state: BomState,
    /// Event type buffer (`event:`).
    event: Vec<u8>,
    /// Data buffer: every `data:` value followed by `\n`, per the spec.
    data: Vec<u8>,
    /// Last event ID buffer (`id:`); survives dispatch.
    last_id: Vec<u8>,
    /// Some field other than `data:` was set since the last dispatch.
    fields_pending: bool,
    /// Latest valid `retry:` value in milliseconds.
    retry: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum BomState {
    /// Nothing seen yet; `usize` bytes of the BOM matched so far.
    #[default]
    Start,
    Matching(usize),
    Done,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Latest reconnection time sent by the server (`retry:`), if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The last event ID (`id:`), or `""`.
    pub fn last_event_id(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.last_id)
    }

    /// Feed one chunk. Calls `on_event` for every event completed by this chunk
    /// and returns how many there were.
    pub fn feed<F>(&mut self, chunk: &[u8], mut on_event: F) -> usize
    where
        F: FnMut(SseEvent<'_>),
    {
        let mut rest = self.strip_bom(chunk);
        let mut dispatched = 0;
        // An empty chunk must not forget a pending `\r`.
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(pos) = memchr2(b'\n', b'\r', rest) {
            let is_cr = rest[pos] == b'\r';
            let end = pos + 1;
            // Take the line straight from the chunk unless part of it was buffered.
            if self.line.is_empty() {
                dispatched += usize::from(self.process_line(&rest[..pos], &mut on_event));
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..pos]);
                dispatched += usize::from(self.process_line(&line, &mut on_event));
                line.clear();
                self.line = line;
            }
            rest = &rest[end..];
            if is_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    // The `\n` of a `\r\n` pair may arrive with the next chunk.
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
        dispatched
    }

    /// Signal end of stream. Per the spec an unterminated event is discarded;
    /// the return value says whether anything was thrown away. The decoder is
    /// reset and can decode a new stream afterwards.
    pub fn finish(&mut self) -> Leftover {
        let leftover = Leftover {
            partial_line: !self.line.is_empty() || matches!(self.bom_state, BomState::Matching(_)),
            partial_event: !self.data.is_empty() || self.fields_pending,
        };
        *self = Self::default();
        leftover
    }

    /// Strip a UTF-8 BOM at the very start of the stream, even when split
    /// across chunks. Returns the part of `chunk` still to be decoded.
    fn strip_bom<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        let matched = match self.bom_state {
            BomState::Done => return chunk,
            _ if chunk.is_empty() => return chunk,
            BomState::Start => 0,
            BomState::Matching(n) => n,
        };
        let want = &BOM[matched..];
        let take = want.len().min(chunk.len());
        if chunk[..take] == want[..take] {
            if take == want.len() {
                self.bom_state = BomState::Done;
                return &chunk[take..];
            }
            self.bom_state = BomState::Matching(matched + take);
            return &[];
        }
        // Not a BOM: the bytes held back so far are ordinary stream content.
        self.bom_state = BomState::Done;
        if matched > 0 {
            self.line.extend_from_slice(&BOM[..matched]);
        }
        chunk
    }

    /// Interpret one line (without its terminator). Returns true if it
    /// dispatched an event.
    fn process_line<F>(&mut self, line: &[u8], on_event: &mut F) -> bool
    where
        F: FnMut(SseEvent<'_>),
    {
        if line.is_empty() {
            return self.dispatch(on_event);
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return false, // comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.fields_pending = true;
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Overlong values saturate rather than fail.
                self.retry = Some(value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                }));
            }
            _ => {}
        }
        false
    }

    fn dispatch<F>(&mut self, on_event: &mut F) -> bool
    where
        F: FnMut(SseEvent<'_>),
    {
        self.fields_pending = false;
        if self.data.is_empty() {
            self.event.clear();
            return false;
        }
        self.data.pop(); // the trailing '\n'
        {
            let data = String::from_utf8_lossy(&self.data);
            let event = if self.event.is_empty() {
                Cow::Borrowed("message")
            } else {
                String::from_utf8_lossy(&self.event)
            };
            let id = String::from_utf8_lossy(&self.last_id);
            on_event(SseEvent {
                event: &event,
                data: &data,
                id: &id,
            });
        }
        self.data.clear();
        self.event.clear();
        true
    }
}

/// Decode a complete stream into owned `(event, data)` pairs. Convenience for
/// tests and tools; the hot path uses [`SseDecoder::feed`].
pub fn parse_all(stream: &[u8]) -> Vec<(String, String)> {
    let mut decoder = SseDecoder::new();
    let mut out = Vec::new();
    decoder.feed(stream, |ev| {
        out.push((ev.event.to_owned(), ev.data.to_owned()));
    });
    decoder.finish();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |ev| out.push((ev.event.to_owned(), ev.data.to_owned())));
        }
        out
    }

    #[test]
    fn basic_event() {
        assert_eq!(
            pairs(&[b"event: a\ndata: 1\n\n"]),
            vec![("a".into(), "1".into())]
        );
    }

    #[test]
    fn cr_at_chunk_end() {
        assert_eq!(
            pairs(&[b"data: x\r", b"\n\r", b"\n"]),
            vec![("message".into(), "x".into())]
        );
    }

    #[test]
    fn lone_cr_then_blank() {
        assert_eq!(
            pairs(&[b"data: x\r\r"]),
            vec![("message".into(), "x".into())]
        );
    }

    #[test]
    fn bom_split() {
        assert_eq!(
            pairs(&[b"\xEF", b"\xBB\xBFdata: x\n\n"]),
            vec![("message".into(), "x".into())]
        );
    }

    #[test]
    fn finish_reports_leftovers() {
        let mut d = SseDecoder::new();
        d.feed(b"data: x\n", |_| {});
        assert_eq!(
            d.finish(),
            Leftover {
                partial_line: false,
                partial_event: true
            }
        );
        d.feed(b"data: x", |_| {});
        assert!(d.finish().partial_line);
        d.feed(b"data: x\n\n", |_| {});
        assert!(!d.finish().any());
    }

    #[test]
    fn id_persists_and_retry_parsed() {
        let mut d = SseDecoder::new();
        let mut ids = Vec::new();
        d.feed(b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\n", |ev| {
            ids.push(ev.id.to_owned());
        });
        assert_eq!(ids, ["7", "7"]);
        assert_eq!(d.retry(), Some(1500));
    }
}
