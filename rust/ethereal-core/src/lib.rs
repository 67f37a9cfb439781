//! Hot path of the ethereal gateway, free of Python:
//!
//! - [`sse`]: incremental WHATWG Server-Sent Events decoder;
//! - [`event`]: Anthropic stream events parsed into one hub type;
//! - [`tap`]: [`StreamTap`] / [`UsageTracker`], usage accounting over a stream;
//! - [`shape`]: one iterative pass for nesting depth and duplicate top-level keys;
//! - [`tokens`]: input and output token estimates without a tokenizer;
//! - [`translate`]: the stream-translation engine, with the wire formats
//!   [`openai_chat`] (Chat Completions) and [`responses`] (Responses API) as its
//!   emitters; `fastparse` and [`jsonw`] are its event parser and JSON writers.
//! - [`estimate`]: the input estimate of a whole request, per model generation.

pub mod estimate;
pub mod event;
mod fastparse;
pub mod jsonw;
pub mod openai_chat;
pub mod responses;
pub mod shape;
pub mod sse;
pub mod tap;
pub mod tokens;
pub mod translate;

pub use event::{parse_event, Delta, Event, EventDecoder, EventError, Usage};
pub use sse::{Leftover, SseDecoder, SseEvent};
pub use tap::{FinalUsage, IterationUsage, StreamTap, UsageTracker};
pub use tokens::{
    estimate_text_tokens, estimate_tokens, estimate_tokens_for, EstimateError, Generation,
};
