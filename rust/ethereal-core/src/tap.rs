//! `StreamTap`: watches an Anthropic Messages SSE stream on its way to the
//! client and works out what to bill.
//!
//! Two layers so translators can reuse the accounting:
//! - [`UsageTracker`] consumes parsed [`Event`]s (any consumer that already
//!   parses events — e.g. an `OpenAI` translator — can feed it the same events);
//! - [`StreamTap`] = [`EventDecoder`] (SSE decoding + event parsing) +
//!   [`UsageTracker`].

use crate::event::{CacheCreation, Delta, Event, EventDecoder, Iteration, Usage};
use crate::sse::Leftover;
use crate::tokens::{text_weight, weight_to_tokens};

/// Framing tokens charged per content block in the output estimate.
const BLOCK_OVERHEAD_TOKENS: u64 = 1;
/// Tool calls cost far more than their JSON: recorded streams bill ~50
/// tokens beyond the arguments for one small call.
const TOOL_USE_OVERHEAD_TOKENS: u64 = 40;

/// One sampling pass as billed (`usage.iterations`), cache writes split by TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IterationUsage {
    pub kind: String,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_5m: u64,
    pub cache_creation_1h: u64,
    pub cache_read_input_tokens: u64,
    /// Only a cache-write total was reported: it is billed as 5-minute writes.
    pub ttl_assumed: bool,
}

impl IterationUsage {
    fn of(it: &Iteration) -> Self {
        let total = it.cache_creation_input_tokens.unwrap_or(0);
        let (c5, c1, assumed) = split_writes(total, it.cache_creation);
        Self {
            kind: it.kind.clone().unwrap_or_else(|| "message".to_string()),
            model: it.model.clone(),
            input_tokens: it.input_tokens.unwrap_or(0),
            output_tokens: it.output_tokens.unwrap_or(0),
            cache_creation_5m: c5,
            cache_creation_1h: c1,
            cache_read_input_tokens: it.cache_read_input_tokens.unwrap_or(0),
            ttl_assumed: assumed,
        }
    }
}

/// `(5m, 1h, ttl_assumed)` of a cache-write total and its optional TTL split;
/// writes the split does not account for have the default 5-minute TTL.
fn split_writes(total: u64, split: Option<CacheCreation>) -> (u64, u64, bool) {
    match split {
        Some(c) => {
            let c5 = c.ephemeral_5m_input_tokens.unwrap_or(0);
            let c1 = c.ephemeral_1h_input_tokens.unwrap_or(0);
            (c5 + total.saturating_sub(c5 + c1), c1, false)
        }
        None => (total, 0, total > 0),
    }
}

/// What to bill for a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Server-side web searches (`server_tool_use.web_search_requests`), billed per use.
    pub web_search_requests: u64,
    /// `usage.iterations` when reported: the token fields above are their sums.
    pub iterations: Vec<IterationUsage>,
    /// `usage.speed`, `usage.inference_geo` and `usage.service_tier` as last
    /// reported (`message_delta`'s over `message_start`'s).
    pub speed: Option<String>,
    pub inference_geo: Option<String>,
    pub service_tier: Option<String>,
}

impl FinalUsage {
    /// Cache writes were billed as 5-minute writes without the upstream saying so.
    pub fn ttl_assumed(&self) -> bool {
        if self.iterations.is_empty() {
            self.cache_creation_5m + self.cache_creation_1h > 0 && !self.cache_split_reported
        } else {
            self.iterations.iter().any(|it| it.ttl_assumed)
        }
    }
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
    /// Counts reported by `message_start`.
    start: Counts,
    /// Counts reported by `message_delta` (cumulative, so the largest of
    /// several is the latest). A field reported here overrides `start`.
    delta: Counts,
    /// Output estimate from the content seen, in weight units.
    output_weight: u64,
    /// Framing tokens of the content blocks started so far.
    output_overhead: u64,
    /// The latest `usage.iterations` reported (`message_delta`'s over `message_start`'s).
    iterations: Option<Vec<Iteration>>,
    /// The latest labels reported (`message_delta`'s over `message_start`'s).
    labels: Labels,
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
                self.start.merge(&start.usage);
                self.labels.merge(&start.usage);
                if start.usage.iterations.is_some() && self.iterations.is_none() {
                    self.iterations.clone_from(&start.usage.iterations);
                }
            }
            Event::ContentBlockStart(block) => {
                self.output_overhead += match &*block.kind {
                    "tool_use" | "server_tool_use" | "mcp_tool_use" => TOOL_USE_OVERHEAD_TOKENS,
                    _ => BLOCK_OVERHEAD_TOKENS,
                };
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
                self.delta.merge(&delta.usage);
                self.labels.merge(&delta.usage);
                if delta.usage.iterations.is_some() {
                    self.iterations.clone_from(&delta.usage.iterations);
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
            Delta::Text(t)
            | Delta::Thinking(t)
            | Delta::InputJson(t)
            | Delta::Compaction(Some(t)) => text_weight(t),
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
            Delta::Signature(_)
            | Delta::Citation(None)
            | Delta::Compaction(None)
            | Delta::Other { .. } => 0,
        };
    }

    /// Output tokens estimated from the streamed content.
    pub fn estimated_output_tokens(&self) -> u64 {
        weight_to_tokens(self.output_weight) + self.output_overhead
    }

    /// Output tokens to bill: `message_delta`'s once it arrived, otherwise
    /// the larger of `message_start`'s count and the content estimate.
    pub fn output_tokens(&self) -> u64 {
        match self.delta.output {
            // message_delta's count is authoritative, even below
            // message_start's (a refusal may bill 0 output).
            Some(out) => out,
            None => self
                .start
                .output
                .unwrap_or(0)
                .max(self.estimated_output_tokens()),
        }
    }

    /// `message_start`'s `usage.output_tokens`.
    pub fn start_output_tokens(&self) -> u64 {
        self.start.output.unwrap_or(0)
    }

    /// `message_delta`'s cumulative `usage.output_tokens`, once seen.
    pub fn delta_output_tokens(&self) -> Option<u64> {
        self.delta.output
    }

    /// One count: `message_delta`'s if it reported the field, else `message_start`'s.
    fn latest(&self, field: impl Fn(&Counts) -> Option<u64>) -> u64 {
        field(&self.delta)
            .or_else(|| field(&self.start))
            .unwrap_or(0)
    }

    pub fn input_tokens(&self) -> u64 {
        self.latest(|c| c.input)
    }

    pub fn cache_read_input_tokens(&self) -> u64 {
        self.latest(|c| c.cache_read)
    }

    /// `cache_creation_input_tokens` as reported (all TTLs).
    pub fn cache_creation_input_tokens(&self) -> u64 {
        self.latest(|c| c.cache_creation)
    }

    /// The upstream reported the `cache_creation {5m, 1h}` TTL split.
    pub fn cache_split_reported(&self) -> bool {
        self.start.split_1h.is_some() || self.delta.split_1h.is_some()
    }

    /// All cache writes: the reported total, or the split's sum if larger.
    pub fn cache_creation_total(&self) -> u64 {
        let split = self.latest(|c| c.split_5m) + self.latest(|c| c.split_1h);
        self.cache_creation_input_tokens().max(split)
    }

    pub fn usage(&self) -> FinalUsage {
        let total = self.cache_creation_total();
        // 1h writes are only ever explicit; anything unattributed (no split,
        // or writes added by server tools after message_start) has the
        // default 5-minute TTL.
        let one_hour = self.latest(|c| c.split_1h).min(total);
        let exact = self.delta.output.is_some();
        FinalUsage {
            input_tokens: self.input_tokens(),
            output_tokens: self.output_tokens(),
            cache_creation_5m: total - one_hour,
            cache_creation_1h: one_hour,
            cache_read_input_tokens: self.cache_read_input_tokens(),
            exact,
            cache_split_reported: self.cache_split_reported(),
            web_search_requests: self.latest(|c| c.web_searches),
            // per-iteration pricing needs the final report; a cut stream bills its totals
            iterations: match (&self.iterations, exact) {
                (Some(its), true) => its.iter().map(IterationUsage::of).collect(),
                _ => Vec::new(),
            },
            speed: self.labels.speed.clone(),
            inference_geo: self.labels.inference_geo.clone(),
            service_tier: self.labels.service_tier.clone(),
        }
    }
}

/// The usage labels a stream reported; a later event's value replaces an
/// earlier one, an event that omits a label keeps the earlier value.
#[derive(Debug, Clone, Default)]
struct Labels {
    speed: Option<String>,
    inference_geo: Option<String>,
    service_tier: Option<String>,
}

impl Labels {
    fn merge(&mut self, usage: &Usage) {
        for (slot, value) in [
            (&mut self.speed, &usage.speed),
            (&mut self.inference_geo, &usage.inference_geo),
            (&mut self.service_tier, &usage.service_tier),
        ] {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
    }
}

/// Token counts from one kind of event; `None` = never reported.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    split_5m: Option<u64>,
    split_1h: Option<u64>,
    output: Option<u64>,
    web_searches: Option<u64>,
}

impl Counts {
    /// Fold in one event's usage, keeping the largest value per field.
    fn merge(&mut self, usage: &Usage) {
        fn max(slot: &mut Option<u64>, v: Option<u64>) {
            if v.is_some() {
                *slot = (*slot).max(v);
            }
        }
        let split = |c: Option<crate::event::CacheCreation>| {
            // A reported split with one TTL missing means zero of that TTL.
            c.map_or((None, None), |c| {
                (
                    Some(c.ephemeral_5m_input_tokens.unwrap_or(0)),
                    Some(c.ephemeral_1h_input_tokens.unwrap_or(0)),
                )
            })
        };
        let (input, cache_creation, cache_read, (s5, s1), output) = match &usage.iterations {
            // Compaction and advisor calls bill every iteration; the
            // top-level fields describe only the last one.
            Some(its) => {
                let sum = |f: fn(&Iteration) -> Option<u64>| {
                    its.iter()
                        .fold(0u64, |acc, it| acc.saturating_add(f(it).unwrap_or(0)))
                };
                let any_split = its.iter().any(|it| it.cache_creation.is_some());
                let splits = if any_split {
                    (
                        Some(sum(|it| {
                            it.cache_creation.and_then(|c| c.ephemeral_5m_input_tokens)
                        })),
                        Some(sum(|it| {
                            it.cache_creation.and_then(|c| c.ephemeral_1h_input_tokens)
                        })),
                    )
                } else {
                    (None, None)
                };
                (
                    Some(sum(|it| it.input_tokens)),
                    Some(sum(|it| it.cache_creation_input_tokens)),
                    Some(sum(|it| it.cache_read_input_tokens)),
                    splits,
                    Some(sum(|it| it.output_tokens)),
                )
            }
            None => (
                usage.input_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
                split(usage.cache_creation),
                usage.output_tokens,
            ),
        };
        max(
            &mut self.web_searches,
            usage.server_tool_use.and_then(|s| s.web_search_requests),
        );
        max(&mut self.input, input);
        max(&mut self.cache_creation, cache_creation);
        max(&mut self.cache_read, cache_read);
        max(&mut self.split_5m, s5);
        max(&mut self.split_1h, s1);
        max(&mut self.output, output);
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
    decoder: EventDecoder,
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
        self.decoder.feed(chunk, |_, parsed| match parsed {
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

    #[test]
    fn junk_counts_do_not_lose_the_rest_of_the_usage() {
        let mut tap = StreamTap::new();
        tap.feed(START.as_bytes());
        tap.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":\"12\",\"output_tokens\":42,\"cache_read_input_tokens\":-1,\"server_tool_use\":{\"web_search_requests\":2}}}\n\n");
        let u = tap.usage();
        assert_eq!(tap.tracker().malformed_events, 0);
        assert!(u.exact);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (10, 42, 3)
        );
        assert_eq!(u.web_search_requests, 2);
    }

    #[test]
    fn iterations_keep_their_models() {
        let mut tap = StreamTap::new();
        tap.feed(START.as_bytes());
        tap.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":8,\"iterations\":[{\"type\":\"compaction\",\"input_tokens\":100,\"output_tokens\":83,\"cache_creation_input_tokens\":4},{\"type\":\"advisor_message\",\"model\":\"claude-opus-4-6\",\"input_tokens\":1000,\"output_tokens\":10,\"cache_creation\":{\"ephemeral_1h_input_tokens\":6},\"cache_creation_input_tokens\":6}]}}\n\n");
        let u = tap.usage();
        assert_eq!((u.input_tokens, u.output_tokens), (1100, 93));
        assert_eq!(u.iterations.len(), 2);
        assert_eq!(u.iterations[1].model.as_deref(), Some("claude-opus-4-6"));
        assert_eq!(
            (
                u.iterations[0].cache_creation_5m,
                u.iterations[0].ttl_assumed
            ),
            (4, true)
        );
        assert_eq!(u.iterations[1].cache_creation_1h, 6);
        assert!(u.ttl_assumed());
    }

    #[test]
    fn speed_and_geo_from_start_then_delta() {
        let mut tap = StreamTap::new();
        tap.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"speed\":\"fast\",\"inference_geo\":\"global\",\"service_tier\":\"standard\"}}}\n\n");
        let u = tap.usage();
        assert_eq!(u.speed.as_deref(), Some("fast"));
        assert_eq!(u.inference_geo.as_deref(), Some("global"));
        assert_eq!(u.service_tier.as_deref(), Some("standard"));
        // message_delta's labels win; one it omits keeps message_start's
        tap.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":9,\"inference_geo\":\"us\"}}\n\n");
        let u = tap.usage();
        assert!(u.exact);
        assert_eq!(u.speed.as_deref(), Some("fast"));
        assert_eq!(u.inference_geo.as_deref(), Some("us"));
    }

    #[test]
    fn labels_are_bounded_and_typed() {
        let mut tap = StreamTap::new();
        let long = "x".repeat(33);
        let event = format!(
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{}},\"usage\":{{\"output_tokens\":3,\"speed\":\"{long}\",\"inference_geo\":7,\"service_tier\":\"a\\u0000b\"}}}}\n\n"
        );
        tap.feed(START.as_bytes());
        tap.feed(event.as_bytes());
        let u = tap.usage();
        assert_eq!(tap.tracker().malformed_events, 0);
        assert_eq!(u.output_tokens, 3);
        assert_eq!((u.speed, u.inference_geo, u.service_tier), (None, None, None));
        // 32 characters (not bytes) is still a label
        let mut tap = StreamTap::new();
        let geo = "é".repeat(32);
        let event = format!(
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{}},\"usage\":{{\"output_tokens\":3,\"inference_geo\":\"{geo}\"}}}}\n\n"
        );
        tap.feed(event.as_bytes());
        assert_eq!(tap.usage().inference_geo.as_deref(), Some(geo.as_str()));
    }
}
