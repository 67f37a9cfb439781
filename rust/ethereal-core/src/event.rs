//! Parsed Anthropic Messages stream events: the hub type every consumer
//! (usage tap, format translators) works from.
//!
//! Strings borrow from the SSE data whenever the JSON has no escapes, so
//! parsing a `text_delta` allocates nothing in the common case.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One event of an Anthropic Messages stream.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    MessageStart(MessageStart<'a>),
    ContentBlockStart(BlockStart<'a>),
    ContentBlockDelta {
        index: u64,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: u64,
    },
    MessageDelta(MessageDelta<'a>),
    MessageStop,
    Ping,
    Error(StreamError<'a>),
    /// Well-formed JSON with a `type` this crate does not know (forward
    /// compatibility: new event kinds must not break a stream).
    Unknown {
        kind: Cow<'a, str>,
    },
}

/// Token counts as the API reports them; `None` when a field was absent,
/// null, or not a non-negative integer (a malformed count never makes the
/// whole event unreadable: the rest of the usage still bills).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "count")]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_read_input_tokens: Option<u64>,
    /// The TTL split of `cache_creation_input_tokens`; absent on older streams.
    #[serde(default, deserialize_with = "lenient")]
    pub cache_creation: Option<CacheCreation>,
    #[serde(default, deserialize_with = "count")]
    pub output_tokens: Option<u64>,
    /// `usage.iterations` (compaction / advisor sub-requests). When present
    /// the top-level fields cover only the final iteration, and the billable
    /// total is their sum, each priced at its own model.
    #[serde(default, deserialize_with = "iterations")]
    pub iterations: Option<Vec<Iteration>>,
    #[serde(default, deserialize_with = "lenient")]
    pub server_tool_use: Option<ServerToolUse>,
    /// `usage.speed` (`"fast"` is billed at the card's fast rate).
    #[serde(default, deserialize_with = "label")]
    pub speed: Option<String>,
    /// `usage.inference_geo` (a region the card prices, e.g. `"us"`).
    #[serde(default, deserialize_with = "label")]
    pub inference_geo: Option<String>,
    /// `usage.service_tier` (`standard`, `priority`, `batch`).
    #[serde(default, deserialize_with = "label")]
    pub service_tier: Option<String>,
}

/// One entry of `usage.iterations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Iteration {
    #[serde(rename = "type", default, deserialize_with = "text")]
    pub kind: Option<String>,
    /// The model of this iteration (an `advisor_message` names its own).
    #[serde(default, deserialize_with = "text")]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "count")]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub cache_creation: Option<CacheCreation>,
    #[serde(default, deserialize_with = "count")]
    pub output_tokens: Option<u64>,
}

/// Server-side tool use billed per request (`server_tool_use`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ServerToolUse {
    #[serde(default, deserialize_with = "count")]
    pub web_search_requests: Option<u64>,
}

/// Longest `type`/`model` string kept from an iteration (they are short names).
const MAX_NAME: usize = 256;

/// A token count: a non-negative integer, anything else (a string, a
/// float, a negative number, null) is no count at all.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(deserializer)?.as_u64())
}

/// A short string, or nothing when it is not one.
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) if !s.is_empty() => {
            let mut end = s.len().min(MAX_NAME);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Some(s[..end].to_string())
        }
        _ => None,
    })
}

/// Longest `speed` / `inference_geo` / `service_tier` kept; a longer value is
/// no value at all (as `ethereal.usage.label` reads it).
const MAX_LABEL: usize = 32;

/// A short label the upstream reports: a non-empty string of at most
/// [`MAX_LABEL`] characters and no control character, else nothing (never
/// truncated: a cut label would name another mode; a NUL cannot be stored).
fn label<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s)
            if !s.is_empty()
                && s.chars().count() <= MAX_LABEL
                && !s.chars().any(char::is_control) =>
        {
            Some(s)
        }
        _ => None,
    })
}

/// An object of the expected shape, or nothing when it is not one.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// `iterations`: every entry an object, else the list is ignored (as if absent).
fn iterations<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Iteration>>, D::Error> {
    let serde_json::Value::Array(items) = serde_json::Value::deserialize(deserializer)? else {
        return Ok(None);
    };
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !item.is_object() {
            return Ok(None);
        }
        match serde_json::from_value::<Iteration>(item) {
            Ok(it) => out.push(it),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(out))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CacheCreation {
    #[serde(default, deserialize_with = "count")]
    pub ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct MessageStart<'a> {
    pub id: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
    pub usage: Usage,
}

/// `content_block_start`. `raw` is the whole `content_block` object, for
/// translators that must forward blocks which arrive complete (server tool
/// results, redacted thinking).
#[derive(Debug, Clone)]
pub struct BlockStart<'a> {
    pub index: u64,
    pub kind: Cow<'a, str>,
    pub id: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub raw: &'a RawValue,
}

impl<'a> BlockStart<'a> {
    /// A `text` block's initial `text` (usually empty).
    pub fn text(&self) -> Option<Cow<'a, str>> {
        serde_json::from_str::<TextStartWire<'a>>(self.raw.get())
            .ok()?
            .text
    }

    /// A `thinking` block's initial `thinking` and `signature` (empty when absent).
    pub fn thinking(&self) -> (Cow<'a, str>, Cow<'a, str>) {
        serde_json::from_str::<ThinkingStartWire<'a>>(self.raw.get())
            .map(|w| {
                (
                    w.thinking.unwrap_or_default(),
                    w.signature.unwrap_or_default(),
                )
            })
            .unwrap_or_default()
    }

    /// A `redacted_thinking` block's opaque `data` (empty when absent).
    pub fn redacted_data(&self) -> Cow<'a, str> {
        serde_json::from_str::<RedactedStartWire<'a>>(self.raw.get())
            .ok()
            .and_then(|w| w.data)
            .unwrap_or_default()
    }

    /// A tool call's `input` as given at the start, as JSON text (`{}` when
    /// its input streams as `input_json_delta`s).
    pub fn input(&self) -> Option<&'a str> {
        serde_json::from_str::<InputStartWire<'a>>(self.raw.get())
            .ok()?
            .input
            .map(RawValue::get)
    }
}

#[derive(Deserialize)]
struct InputStartWire<'a> {
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ThinkingStartWire<'a> {
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RedactedStartWire<'a> {
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TextStartWire<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone)]
pub enum Delta<'a> {
    Text(Cow<'a, str>),
    Thinking(Cow<'a, str>),
    Signature(Cow<'a, str>),
    InputJson(Cow<'a, str>),
    /// `citations_delta`: the raw `citation` object.
    Citation(Option<&'a RawValue>),
    /// `compaction_delta`: summary text (may be null).
    Compaction(Option<Cow<'a, str>>),
    Other {
        kind: Cow<'a, str>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct MessageDelta<'a> {
    pub stop_reason: Option<Cow<'a, str>>,
    pub stop_sequence: Option<Cow<'a, str>>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default)]
pub struct StreamError<'a> {
    pub kind: Option<Cow<'a, str>>,
    pub message: Option<Cow<'a, str>>,
}

/// Why an event's data could not be understood.
#[derive(Debug)]
pub struct EventError(serde_json::Error);

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed stream event: {}", self.0)
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<serde_json::Error> for EventError {
    fn from(e: serde_json::Error) -> Self {
        Self(e)
    }
}

/// Parse one SSE event (`event:` name and `data:` payload).
///
/// The event name selects the shape (Anthropic always sends name == JSON
/// `type`); a missing or unrecognised name falls back to the JSON `type`.
///
/// # Errors
/// When `data` is not JSON or a known event has the wrong shape.
pub fn parse_event<'a>(name: &str, data: &'a str) -> Result<Event<'a>, EventError> {
    if let Some(ev) = parse_known(name, data)? {
        return Ok(ev);
    }
    let head: TypeOnly<'a> = serde_json::from_str(data)?;
    let kind = head.kind.map(Str::into_cow).unwrap_or_default();
    Ok(parse_known(&kind, data)?.unwrap_or(Event::Unknown { kind }))
}

fn parse_known<'a>(kind: &str, data: &'a str) -> Result<Option<Event<'a>>, EventError> {
    Ok(Some(match kind {
        "content_block_delta" => {
            let w: DeltaEventWire<'a> = serde_json::from_str(data)?;
            Event::ContentBlockDelta {
                index: w.index,
                delta: w.delta.into_delta(),
            }
        }
        "ping" => Event::Ping,
        "content_block_start" => {
            let w: BlockStartWire<'a> = serde_json::from_str(data)?;
            let b: BlockWire<'a> = serde_json::from_str(w.content_block.get())?;
            Event::ContentBlockStart(BlockStart {
                index: w.index,
                kind: b.kind.map(Str::into_cow).unwrap_or_default(),
                id: b.id.map(Str::into_cow),
                name: b.name.map(Str::into_cow),
                raw: w.content_block,
            })
        }
        "content_block_stop" => {
            let w: IndexWire = serde_json::from_str(data)?;
            Event::ContentBlockStop { index: w.index }
        }
        "message_start" => {
            let w: MessageStartWire<'a> = serde_json::from_str(data)?;
            Event::MessageStart(MessageStart {
                id: w.message.id.map(Str::into_cow),
                model: w.message.model.map(Str::into_cow),
                usage: w.message.usage.unwrap_or_default(),
            })
        }
        "message_delta" => {
            let w: MessageDeltaWire<'a> = serde_json::from_str(data)?;
            let delta = w.delta.unwrap_or_default();
            Event::MessageDelta(MessageDelta {
                stop_reason: delta.stop_reason.map(Str::into_cow),
                stop_sequence: delta.stop_sequence.map(Str::into_cow),
                usage: w.usage.unwrap_or_default(),
            })
        }
        "message_stop" => Event::MessageStop,
        "error" => {
            let w: ErrorEventWire<'a> = serde_json::from_str(data)?;
            let e = w.error.unwrap_or_default();
            Event::Error(StreamError {
                kind: e.kind.map(Str::into_cow),
                message: e.message.map(Str::into_cow),
            })
        }
        _ => return Ok(None),
    }))
}

/// SSE decoding plus event parsing: the front half shared by the usage tap
/// and format translators. Each consumer sees the raw SSE event (for
/// pass-through) and its parse.
#[derive(Debug, Default)]
pub struct EventDecoder {
    sse: crate::sse::SseDecoder,
}

impl EventDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one chunk; calls `on_event` per completed event and returns how
    /// many there were.
    pub fn feed<F>(&mut self, chunk: &[u8], mut on_event: F) -> usize
    where
        F: FnMut(crate::sse::SseEvent<'_>, Result<Event<'_>, EventError>),
    {
        self.sse
            .feed(chunk, |raw| on_event(raw, parse_event(raw.event, raw.data)))
    }

    /// End of stream; see [`SseDecoder::finish`](crate::sse::SseDecoder::finish).
    pub fn finish(&mut self) -> crate::sse::Leftover {
        self.sse.finish()
    }
}

// ---- wire shapes -----------------------------------------------------------

/// A JSON string that borrows from the input when it has no escapes.
/// (`Option<Cow<str>>` with `#[serde(borrow)]` always copies; this does not.)
#[derive(Debug, Default)]
struct Str<'a>(Cow<'a, str>);

impl<'a> Str<'a> {
    fn into_cow(self) -> Cow<'a, str> {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct IndexWire {
    #[serde(default)]
    index: u64,
}

#[derive(Deserialize)]
struct DeltaEventWire<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    delta: DeltaWire<'a>,
}

#[derive(Deserialize)]
struct DeltaWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    text: Option<Str<'a>>,
    #[serde(borrow)]
    thinking: Option<Str<'a>>,
    #[serde(borrow)]
    signature: Option<Str<'a>>,
    #[serde(borrow)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow)]
    citation: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<Str<'a>>,
}

impl<'a> DeltaWire<'a> {
    fn into_delta(self) -> Delta<'a> {
        let kind = self.kind.map(Str::into_cow).unwrap_or_default();
        let text = |s: Option<Str<'a>>| s.map(Str::into_cow).unwrap_or_default();
        match &*kind {
            "text_delta" => Delta::Text(text(self.text)),
            "thinking_delta" => Delta::Thinking(text(self.thinking)),
            "signature_delta" => Delta::Signature(text(self.signature)),
            "input_json_delta" => Delta::InputJson(text(self.partial_json)),
            "citations_delta" => Delta::Citation(self.citation),
            "compaction_delta" => Delta::Compaction(self.content.map(Str::into_cow)),
            _ => Delta::Other { kind },
        }
    }
}

#[derive(Deserialize)]
struct BlockStartWire<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    content_block: &'a RawValue,
}

#[derive(Deserialize)]
struct BlockWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct MessageStartWire<'a> {
    #[serde(borrow)]
    message: MessageWire<'a>,
}

#[derive(Deserialize)]
struct MessageWire<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    model: Option<Str<'a>>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct MessageDeltaWire<'a> {
    #[serde(borrow)]
    delta: Option<StopWire<'a>>,
    usage: Option<Usage>,
}

#[derive(Deserialize, Default)]
struct StopWire<'a> {
    #[serde(borrow)]
    stop_reason: Option<Str<'a>>,
    #[serde(borrow)]
    stop_sequence: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ErrorEventWire<'a> {
    #[serde(borrow)]
    error: Option<ErrorWire<'a>>,
}

#[derive(Deserialize, Default)]
struct ErrorWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    message: Option<Str<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_delta_borrows() {
        let data = r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Hi"}   }"#;
        match parse_event("content_block_delta", data).unwrap() {
            Event::ContentBlockDelta {
                index: 2,
                delta: Delta::Text(Cow::Borrowed("Hi")),
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaped_text_is_owned() {
        let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\nb"}}"#;
        match parse_event("content_block_delta", data).unwrap() {
            Event::ContentBlockDelta {
                delta: Delta::Text(t),
                ..
            } => assert_eq!(t, "a\nb"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_event_name_uses_type() {
        let ev = parse_event("message", r#"{"type":"message_stop"}"#).unwrap();
        assert!(matches!(ev, Event::MessageStop));
        let ev = parse_event("message", r#"{"type":"brand_new"}"#).unwrap();
        assert!(matches!(ev, Event::Unknown { kind } if kind == "brand_new"));
    }

    #[test]
    fn error_event() {
        let data = r#"{"type":"error","error":{"details":null,"type":"overloaded_error","message":"Overloaded"} }"#;
        match parse_event("error", data).unwrap() {
            Event::Error(e) => {
                assert_eq!(e.kind.as_deref(), Some("overloaded_error"));
                assert_eq!(e.message.as_deref(), Some("Overloaded"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_json_is_error() {
        assert!(parse_event("message_start", "{not json").is_err());
    }
}
