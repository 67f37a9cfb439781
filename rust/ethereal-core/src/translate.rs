//! The stream-translation engine: Anthropic Messages SSE in, another wire
//! format out, one upstream chunk at a time.
//!
//! [`Translator`] does everything that does not depend on the output format:
//! SSE framing (the fast path for whole events in the API's own framing, the
//! [`SseDecoder`] for anything else), event parsing (the serde-free
//! `fastparse` shapes, else [`parse_event`]), the usage
//! accounting (the same [`UsageTracker`] as the native route's `StreamTap`, so a
//! translated stream is metered exactly like a native one), upstream errors, EOF
//! and what the decoder was left holding. A wire format is an [`Emitter`]: it
//! turns the events of a live stream into output bytes and says nothing about
//! how they were framed or chunked.
//!
//! Output depends only on the byte stream, never on how it was chunked.

use crate::event::{parse_event, BlockStart, Delta, Event};
use crate::fastparse;
use crate::sse::{Leftover, SseDecoder};
use crate::tap::{FinalUsage, UsageTracker};

/// What the failure frame says when the upstream stream ends before `message_stop`.
pub const INTERRUPTED: &str =
    "the upstream connection was interrupted before the response was complete";

/// One output wire format. Called only while the stream is live: after
/// [`message_stop`](Emitter::message_stop) or [`error`](Emitter::error) the
/// driver sends it nothing more.
pub trait Emitter {
    /// How a stream is rendered (ids, model, tool modes…).
    type Options;

    fn new(opts: &Self::Options) -> Self;

    fn message_start(&mut self, out: &mut Vec<u8>);

    fn block_start(&mut self, start: &BlockStart<'_>, out: &mut Vec<u8>);

    fn block_delta(&mut self, index: u64, delta: &Delta<'_>, out: &mut Vec<u8>);

    fn block_stop(&mut self, index: u64, out: &mut Vec<u8>);

    /// The reply is complete: its last frames (finish reason, usage…).
    fn message_stop(&mut self, tracker: &UsageTracker, out: &mut Vec<u8>);

    /// The stream failed: an upstream `error` event (its Anthropic error type and
    /// message), or EOF before `message_stop` (`api_error`, [`INTERRUPTED`]).
    fn error(&mut self, kind: &str, message: &str, tracker: &UsageTracker, out: &mut Vec<u8>);
}

/// The parts the decoder's callback borrows mutably.
#[derive(Debug)]
struct Engine<E> {
    tracker: UsageTracker,
    emitter: E,
    /// The emitter's last frame went out (`message_stop` or an error): nothing more is emitted.
    done: bool,
}

impl<E: Emitter> Engine<E> {
    /// One SSE event: the fast parse when the shape allows, else [`parse_event`].
    /// (`data` is text: the decoder replaces invalid UTF-8, and the fast path
    /// leaves an event holding any to the decoder.)
    fn dispatch(&mut self, name: &str, data: &str, out: &mut Vec<u8>) {
        if let Some(event) = fastparse::complete_block(name, data.as_bytes()) {
            self.on_event(&event, out);
            return;
        }
        match fastparse::event(name, data).map_or_else(|| parse_event(name, data), Ok) {
            Ok(event) => self.on_event(&event, out),
            Err(_) => self.tracker.observe_malformed(),
        }
    }

    fn on_event(&mut self, event: &Event<'_>, out: &mut Vec<u8>) {
        self.tracker.observe(event);
        if self.done {
            return;
        }
        let e = &mut self.emitter;
        match event {
            Event::MessageStart(_) => e.message_start(out),
            Event::ContentBlockStart(start) => e.block_start(start, out),
            Event::ContentBlockDelta { index, delta } => e.block_delta(*index, delta, out),
            Event::ContentBlockStop { index } => e.block_stop(*index, out),
            Event::MessageStop => {
                e.message_stop(&self.tracker, out);
                self.done = true;
            }
            Event::Error(err) => {
                let kind = err.kind.as_deref().unwrap_or("api_error");
                let message = err.message.as_deref().unwrap_or("upstream error");
                e.error(kind, message, &self.tracker, out);
                self.done = true;
            }
            Event::MessageDelta(_) | Event::Ping | Event::Unknown { .. } => {}
        }
    }
}

/// Incremental Anthropic SSE → `E` translator.
#[derive(Debug)]
pub struct Translator<E> {
    decoder: SseDecoder,
    engine: Engine<E>,
    leftover: Option<Leftover>,
    /// The first byte was seen (a byte order mark, if any, is the decoder's to strip).
    primed: bool,
    /// The decoder holds nothing: chunks may be framed by [`fastparse::frame`] first.
    idle: bool,
}

impl<E: Emitter> Translator<E> {
    pub fn new(opts: &E::Options) -> Self {
        Self {
            decoder: SseDecoder::new(),
            engine: Engine {
                tracker: UsageTracker::new(),
                emitter: E::new(opts),
                done: false,
            },
            leftover: None,
            primed: false,
            idle: false,
        }
    }

    /// Feed one network chunk; appends the output bytes it completes to `out`.
    ///
    /// Whole events in the API's own framing (`event: X\ndata: Y\n\n`) are
    /// taken straight from the chunk while the SSE decoder holds nothing;
    /// anything else (a partial event, CR line ends, comments, several data
    /// lines, invalid UTF-8) and everything after it goes through the decoder,
    /// which is idle again once it has been fed up to a blank line.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        if !self.primed && !rest.is_empty() {
            self.primed = true;
            if rest[0] != 0xEF {
                // No BOM: settle the decoder's BOM check with a no-op blank line.
                self.decoder.feed(b"\n", |_| {});
                self.idle = true;
            }
        }
        if self.idle {
            while let Some((name, data, used)) = fastparse::frame(rest) {
                // invalid UTF-8 goes through the decoder, which replaces it the same way
                // whatever the chunking (found by tests/fuzz_props.rs)
                let Ok(data) = std::str::from_utf8(data) else {
                    break;
                };
                self.engine.dispatch(name, data, out);
                rest = &rest[used..];
            }
        }
        if !rest.is_empty() {
            let engine = &mut self.engine;
            self.decoder.feed(rest, |sse| {
                engine.dispatch(sse.event, sse.data, out);
            });
            self.idle = rest.ends_with(b"\n\n");
        }
    }

    /// Upstream EOF (or the connection failed). If the stream had not ended
    /// (`message_stop` or an `error` event), appends the emitter's failure
    /// frame: the client sees a failure, never a silently short answer.
    /// Idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.leftover.is_none() {
            self.leftover = Some(self.decoder.finish());
        }
        let engine = &mut self.engine;
        if !engine.done {
            engine
                .emitter
                .error("api_error", INTERRUPTED, &engine.tracker, out);
            engine.done = true;
        }
    }

    /// The stream's last frame (its end or a failure) was emitted.
    pub fn is_done(&self) -> bool {
        self.engine.done
    }

    pub fn tracker(&self) -> &UsageTracker {
        &self.engine.tracker
    }

    pub fn usage(&self) -> FinalUsage {
        self.engine.tracker.usage()
    }

    /// The leftover found by [`finish`](Self::finish), if it was called.
    pub fn leftover(&self) -> Option<Leftover> {
        self.leftover
    }

    /// The wire format's own state.
    pub fn emitter(&self) -> &E {
        &self.engine.emitter
    }
}

/// Translate a stream fed in these chunks, then EOF (tests, fuzzing, tools):
/// the output, and the translator for its usage and state.
pub fn translate_chunks<E: Emitter>(opts: &E::Options, chunks: &[&[u8]]) -> (Vec<u8>, Translator<E>) {
    let mut t = Translator::<E>::new(opts);
    let mut out = Vec::new();
    for chunk in chunks {
        t.feed(chunk, &mut out);
    }
    t.finish(&mut out);
    (out, t)
}

/// Translate a whole stream in one go (tests, tools).
pub fn translate_all<E: Emitter>(opts: &E::Options, stream: &[u8]) -> Vec<u8> {
    translate_chunks::<E>(opts, &[stream]).0
}
