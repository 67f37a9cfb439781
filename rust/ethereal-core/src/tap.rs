//! `StreamTap`: watches an Anthropic Messages SSE stream on its way to the
//! client and works out what to bill.
//!
//! Two layers so translators can reuse the accounting:
//! - [`UsageTracker`] consumes parsed [`Event`]s (any consumer that already
//!   parses events — e.g. an `OpenAI` translator — can feed it the same events);
//! - [`StreamTap`] = [`SseDecoder`] + [`parse_event`] + [`UsageTracker`].

use crate::event::{parse_event, Delta, Event, Usage};
use crate::sse::{Leftover, SseDecoder};
use crate::tokens::{text_weight, weight_to_tokens};

/// Framing tokens charged per content block in the output estimate.
const BLOCK_OVERHEAD_TOKENS: u64 = 1;

/// What to bill for a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinalUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cache writes with the default 5-minute TTL. When the upstream did not
    /// report the TTL split this is all cache writes (see `cache_split_reported`).
    pub cache_creation_5m: u64,
    pub cache_creation_1h: u64,
    pub cache_read_input_tokens: u64,
    /// `output_tokens` came from `message_delta`; false means it is an estimate.
    pub exact: bool,
    /// The upstream sent the `cache_creation {5m, 1h}` object.
    pub cache_split_reported: bool,
}

/// Accumulates usage, stop reason and errors from parsed events.
// The `saw_*` flags mirror the Python API one to one.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default)]
pub struct UsageTracker {
    pub message_id: Option<String>,
    pub model: Option<String>,
    pub stop_reason: Option<String>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// Reported TTL split (zero unless `cache_split_reported`).
    pub reported_5m: u64,
    pub reported_1h: u64,
    pub cache_split_reported: bool,
    /// `usage.output_tokens` from `message_start`.
    pub start_output_tokens: u64,
    /// Latest cumulative `usage.output_tokens` from `message_delta`.
    pub delta_output_tokens: Option<u64>,
    /// Output estimate from the content seen, in weight units.
    output_weight: u64,
    output_blocks: u64,
    pub saw_message_start: bool,
    pub saw_message_delta: bool,
    pub saw_message_stop: bool,
    /// Events parsed (including pings and unknown kinds).
    pub events: u64,
    /// Events whose data was not valid JSON of the expected shape.
    pub malformed_events: u64,
}

impl UsageTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Account for one event.
    pub fn observe(&mut self, event: &Event<'_>) {
        self.events += 1;
        match event {
            Event::MessageStart(start) => {
                self.saw_message_start = true;
                if let Some(id) = &start.id {
                    self.message_id = Some(id.to_string());
                }
                if let Some(model) = &start.model {
                    self.model = Some(model.to_string());
                }
                self.merge_usage(&start.usage);
                if let Some(out) = start.usage.output_tokens {
                    self.start_output_tokens = self.start_output_tokens.max(out);
                }
            }
            Event::ContentBlockStart(block) => {
                self.output_blocks += 1;
                // Tool names are generated output too.
                if let Some(name) = &block.name {
                    self.output_weight += text_weight(name);
                }
            }
            Event::ContentBlockDelta { delta, .. } => self.observe_delta(delta),
            Event::MessageDelta(delta) => {
                self.saw_message_delta = true;
                if let Some(reason) = &delta.stop_reason {
                    self.stop_reason = Some(reason.to_string());
                }
                self.merge_usage(&delta.usage);
                if let Some(out) = delta.usage.output_tokens {
                    // Cumulative: the latest is the largest.
                    self.delta_output_tokens = Some(self.delta_output_tokens.unwrap_or(0).max(out));
                }
            }
            Event::MessageStop => self.saw_message_stop = true,
            Event::Error(err) => {
                self.error_type = err.kind.as_ref().map(ToString::to_string);
                self.error_message = err.message.as_ref().map(ToString::to_string);
            }
            Event::ContentBlockStop { .. } | Event::Ping | Event::Unknown { .. } => {}
        }
    }

    /// Count an event whose data could not be parsed.
    pub fn observe_malformed(&mut self) {
        self.events += 1;
        self.malformed_events += 1;
    }

    fn observe_delta(&mut self, delta: &Delta<'_>) {
        self.output_weight += match delta {
            Delta::Text(t) | Delta::Thinking(t) | Delta::InputJson(t) | Delta::Compaction(Some(t)) => {
                text_weight(t)
            }
            // Anthropic does not bill `cited_text` as output, only the
            // citation's framing (location, indices, titles).
            Delta::Citation(Some(raw)) => {
                let full = text_weight(raw.get());
                let cited = serde_json::from_str::<CitedText<'_>>(raw.get())
                    .ok()
                    .and_then(|c| c.cited_text)
                    .map_or(0, |t| text_weight(&t));
                full.saturating_sub(cited)
            }
            // Signatures are opaque and not billed as text.
            Delta::Signature(_) | Delta::Citation(None) | Delta::Compaction(None) | Delta::Other { .. } => 0,
        };
    }

    fn merge_usage(&mut self, usage: &Usage) {
        let max = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *slot = (*slot).max(v);
            }
        };
        max(&mut self.input_tokens, usage.input_tokens);
        max(&mut self.cache_creation_input_tokens, usage.cache_creation_input_tokens);
        max(&mut self.cache_read_input_tokens, usage.cache_read_input_tokens);
        if let Some(split) = &usage.cache_creation {
            self.cache_split_reported = true;
            max(&mut self.reported_5m, split.ephemeral_5m_input_tokens);
            max(&mut self.reported_1h, split.ephemeral_1h_input_tokens);
        }
    }

    /// Output tokens estimated from the streamed content.
    pub fn estimated_output_tokens(&self) -> u64 {
        weight_to_tokens(self.output_weight) + self.output_blocks * BLOCK_OVERHEAD_TOKENS
    }

    /// Output tokens to bill: exact once `message_delta` arrived, otherwise
    /// the larger of `message_start`'s count and the content estimate.
    pub fn output_tokens(&self) -> u64 {
        match self.delta_output_tokens {
            Some(out) => out.max(self.start_output_tokens),
            None => self.start_output_tokens.max(self.estimated_output_tokens()),
        }
    }

    /// All cache writes: the reported total, or the split's sum if larger.
    pub fn cache_creation_total(&self) -> u64 {
        self.cache_creation_input_tokens
            .max(self.reported_5m + self.reported_1h)
    }

    pub fn usage(&self) -> FinalUsage {
        let total = self.cache_creation_total();
        // 1h writes are only ever explicit; anything unattributed (no split,
        // or writes added by server tools after message_start) has the
        // default 5-minute TTL.
        let one_hour = self.reported_1h.min(total);
        FinalUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens(),
            cache_creation_5m: total - one_hour,
            cache_creation_1h: one_hour,
            cache_read_input_tokens: self.cache_read_input_tokens,
            exact: self.delta_output_tokens.is_some(),
            cache_split_reported: self.cache_split_reported,
        }
    }
}

#[derive(serde::Deserialize)]
struct CitedText<'a> {
    #[serde(borrow)]
    cited_text: Option<std::borrow::Cow<'a, str>>,
}

/// Incremental usage tap over raw SSE bytes.
#[derive(Debug, Default)]
pub struct StreamTap {
    decoder: SseDecoder,
    tracker: UsageTracker,
    leftover: Option<Leftover>,
}

impl StreamTap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one network chunk; returns the number of events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let tracker = &mut self.tracker;
        self.decoder.feed(chunk, |sse| match parse_event(sse.event, sse.data) {
            Ok(event) => tracker.observe(&event),
            Err(_) => tracker.observe_malformed(),
        })
    }

    /// Upstream EOF. Returns what was cut off (an unterminated event is
    /// discarded, per the SSE rules). Idempotent.
    pub fn finish(&mut self) -> Leftover {
        *self.leftover.get_or_insert_with(|| self.decoder.finish())
    }

    /// The leftover reported by [`finish`](Self::finish), if it was called.
    pub fn leftover(&self) -> Option<Leftover> {
        self.leftover
    }

    pub fn tracker(&self) -> &UsageTracker {
        &self.tracker
    }

    pub fn usage(&self) -> FinalUsage {
        self.tracker.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n";

    #[test]
    fn cut_stream_is_estimated() {
        let mut tap = StreamTap::new();
        tap.feed(START.as_bytes());
        tap.feed(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        for _ in 0..10 {
            tap.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"abcd\"}}\n\n");
        }
        tap.feed(b"event: content_block_delta\ndata: {\"type\":\"content");
        assert!(tap.finish().partial_line);
        let u = tap.usage();
        assert!(!u.exact);
        assert_eq!(u.output_tokens, 11); // 40 chars / 4 + 1 block
        assert_eq!(u.input_tokens, 10);
        assert!(!u.cache_split_reported);
        assert_eq!((u.cache_creation_5m, u.cache_creation_1h), (7, 0));
    }

    #[test]
    fn message_delta_is_exact_and_cumulative() {
        let mut tap = StreamTap::new();
        tap.feed(START.as_bytes());
        tap.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":12,\"output_tokens\":42}}\n\n");
        let u = tap.usage();
        assert!(u.exact);
        assert_eq!((u.input_tokens, u.output_tokens), (12, 42));
        assert_eq!(tap.tracker().stop_reason.as_deref(), Some("end_turn"));
    }
}
