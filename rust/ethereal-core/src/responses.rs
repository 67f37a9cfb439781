//! Anthropic Messages SSE in, `OpenAI` Responses API stream events out
//! (`event: <type>\ndata: {"type":"<type>","sequence_number":N,…}\n\n`).
//!
//! Works from the hub [`Event`](crate::Event) type and feeds the same [`UsageTracker`] as the
//! native route's `StreamTap` and the chat translator, so a translated stream
//! is metered exactly like a native one.
//!
//! Every event carries `type` (equal to the SSE event name: Codex reads the
//! tag from the data and skips events without it) and a `sequence_number`
//! counting from 0. Ids are stable: items are `<prefix>_<response suffix>_<output index>`,
//! function calls keep Claude's `toolu_…` id as `call_id` (it round-trips).
//!
//! Mapping:
//! - `message_start` → `response.created`, `response.in_progress` (the
//!   response object under `response`, `status: in_progress`, `output: []`);
//! - a run of `text` blocks → one `message` item (`output_item.added`), each
//!   block one `output_text` part (`content_part.added`, `output_text.delta`s,
//!   `output_text.done`, `content_part.done`); the item is done
//!   (`output_item.done`) when a block that makes another item starts, or at
//!   the end. Blocks that make nothing (server tool results, other server
//!   tools) neither open nor close it;
//! - `thinking` → a `reasoning` item: one `summary_text` part fed by
//!   `reasoning_summary_text.delta`s; when done, its `encrypted_content` is
//!   [`REASONING_PREFIX`] + base64 of the Claude block as JSON
//!   (`{"type":"thinking","thinking","signature"}`), so a client that sends the
//!   item back restores the exact block. `redacted_thinking` → a reasoning item
//!   with an empty summary carrying `{"type":"redacted_thinking","data"}`;
//! - `tool_use` → `function_call` (`function_call_arguments.delta`/`.done`),
//!   with `namespace` + the inner name for a flattened namespace tool; a
//!   custom (freeform) tool → `custom_tool_call` whose `input` is the string
//!   parameter, decoded from the JSON fragments as they stream
//!   (`custom_tool_call_input.delta`/`.done`); the `text.format` tool → its
//!   input as `output_text` of a message;
//! - a `web_search` server tool → a `web_search_call` item with its query;
//! - `message_stop` → `response.completed`, or `response.incomplete`
//!   (`max_output_tokens` for `max_tokens` / context window, `content_filter`
//!   for `refusal`), with `output` (every done item) and `usage` (input
//!   including cache reads and writes, `cached_tokens`, output,
//!   `reasoning_tokens` estimated from the thinking text);
//! - an `error` event, or upstream EOF before `message_stop` → `response.failed`
//!   with `error {code, message}`; nothing follows.
//!
//! [`ResponsesEmitter`] is the wire format; framing, parsing, usage and EOF are
//! the [`Translator`] engine's, shared with the chat translator.

use std::io::Write as _;

use serde::Deserialize;

use crate::event::{BlockStart, Delta};
use crate::jsonw::{base64_encode, push_u64, write_json_str};
use crate::tap::{FinalUsage, UsageTracker};
use crate::tokens::estimate_text_tokens;
use crate::translate::{self, Emitter, Translator};

/// Incremental Anthropic SSE → Responses stream translator.
pub type ResponsesTranslator = Translator<ResponsesEmitter>;

/// Prefix of the `encrypted_content` ethereal writes (a versioned format).
pub const REASONING_PREFIX: &str = "eth1r.";

/// How the translator renders a stream.
#[derive(Debug, Clone, Default)]
pub struct ResponsesOptions {
    /// The response id (`resp_…`); item ids are derived from what follows `resp_`.
    pub response_id: String,
    /// The response object's members that come from the request, as JSON
    /// without the braces (`"id":…,"object":"response","created_at":…,"model":…,…`):
    /// written as given, then `status`, `error`, `incomplete_details`, `output`, `usage`.
    pub head: String,
    /// Claude tool names that stand for custom (freeform) tools, whose one
    /// string parameter `input` is the call's input.
    pub custom_tools: Vec<String>,
    /// Flattened namespace tools: (Claude tool name, namespace, function name).
    pub namespaced: Vec<(String, String, String)>,
    /// The tool `text.format` was translated to: its input is the answer text.
    pub json_tool: Option<String>,
}

/// `OpenAI`'s Responses `error.code` for an Anthropic error type.
pub fn response_error_code(anthropic_type: &str) -> &'static str {
    match anthropic_type {
        "rate_limit_error" => "rate_limit_exceeded",
        "invalid_request_error" => "invalid_prompt",
        _ => "server_error",
    }
}

/// `incomplete_details.reason` for a stop reason, `None` when the response is complete.
pub fn incomplete_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => Some("max_output_tokens"),
        Some("refusal") => Some("content_filter"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Message,
    Reasoning,
    Function,
    Custom,
    WebSearch,
}

/// One output item.
#[derive(Debug)]
struct Item {
    kind: ItemKind,
    id: String,
    output_index: usize,
    /// `,"item_id":"<id>","output_index":N`, written into every event about the item.
    reference: Vec<u8>,
    /// Message: the parts' texts. Reasoning: the thinking text (one entry).
    parts: Vec<String>,
    /// Function: arguments; custom: raw JSON of the Claude input; web search: input JSON.
    raw: String,
    /// Function/custom call: the client's tool name and namespace, Claude's id.
    name: String,
    namespace: Option<String>,
    call_id: String,
    /// Reasoning: the signature so far.
    signature: String,
    /// Function/custom: the whole input given in `content_block_start`.
    start_input: Option<String>,
    /// Custom: the string parameter decoded so far.
    custom: CustomInput,
}

impl Item {
    fn new(kind: ItemKind, id: String, output_index: usize) -> Self {
        let mut item_ref = Vec::with_capacity(id.len() + 32);
        item_ref.extend_from_slice(b",\"item_id\":");
        write_json_str(&mut item_ref, &id);
        item_ref.extend_from_slice(b",\"output_index\":");
        push_u64(&mut item_ref, output_index as u64);
        Self {
            kind,
            id,
            output_index,
            reference: item_ref,
            parts: Vec::new(),
            raw: String::new(),
            name: String::new(),
            namespace: None,
            call_id: String::new(),
            signature: String::new(),
            start_input: None,
            custom: CustomInput::default(),
        }
    }
}

/// What an Anthropic content block feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// A text part of the open message.
    Text,
    /// The `text.format` tool: its input fragments are message text.
    JsonText,
    /// Index into `items`.
    Reasoning(usize),
    Function(usize),
    Custom(usize),
    WebSearch(usize),
    Ignored,
}

#[derive(Debug)]
struct BlockEntry {
    index: u64,
    kind: Block,
}

#[derive(Deserialize)]
struct QueryWire {
    query: Option<String>,
}

#[derive(Deserialize)]
struct CustomWire {
    input: Option<serde_json::Value>,
}

/// Incremental decoder of the string value of a one-key JSON object
/// (`{"input": "…"}`) as its text arrives in fragments: the decoded text only
/// grows, one complete character or escape at a time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum CustomState {
    /// Before the `:` (inside the key string: `true`).
    #[default]
    Key,
    KeyString(bool),
    /// After the `:`, before the value's opening quote.
    Colon,
    Value,
    /// An escape collected so far (`\`, `\u12`, `\ud83d\ude`…).
    Escape(String),
    /// After the closing quote.
    Closed,
    /// Not the expected shape: no more incremental text (the final input is
    /// worked out from the whole JSON at the end).
    Failed,
}

#[derive(Debug, Default)]
struct CustomInput {
    state: CustomState,
    /// The key being read (its characters as written, escapes not decoded).
    key: String,
    decoded: String,
}

impl CustomInput {
    /// Feed a fragment; returns the byte offset in `decoded` where this
    /// fragment's new text starts.
    fn feed(&mut self, fragment: &str) -> usize {
        let before = self.decoded.len();
        for c in fragment.chars() {
            self.step(c);
        }
        before
    }

    fn step(&mut self, c: char) {
        let state = std::mem::take(&mut self.state);
        self.state = match state {
            CustomState::Key => match c {
                '"' => {
                    self.key.clear();
                    CustomState::KeyString(false)
                }
                // only the `input` parameter streams; anything else waits for the whole JSON
                ':' if self.key == "input" => CustomState::Colon,
                ':' => CustomState::Failed,
                _ => CustomState::Key,
            },
            CustomState::KeyString(escaped) => match c {
                _ if escaped => {
                    self.key.push(c);
                    CustomState::KeyString(false)
                }
                '\\' => CustomState::KeyString(true),
                '"' => CustomState::Key,
                _ => {
                    self.key.push(c);
                    CustomState::KeyString(false)
                }
            },
            CustomState::Colon => match c {
                '"' => CustomState::Value,
                ' ' | '\t' | '\n' | '\r' => CustomState::Colon,
                _ => CustomState::Failed,
            },
            CustomState::Value => match c {
                '"' => CustomState::Closed,
                '\\' => CustomState::Escape(String::from("\\")),
                _ => {
                    self.decoded.push(c);
                    CustomState::Value
                }
            },
            CustomState::Escape(mut esc) => {
                esc.push(c);
                self.escape(esc)
            }
            other @ (CustomState::Closed | CustomState::Failed) => other,
        };
    }

    /// An escape with one more character: decoded when complete.
    fn escape(&mut self, esc: String) -> CustomState {
        let b = esc.as_bytes();
        let complete = match b.get(1) {
            Some(b'u') => match b.len() {
                6 => !is_high_surrogate(&esc[2..6]),
                // a high surrogate waits for its `\uXXXX` pair
                7 => b[6] != b'\\',
                8 => b[7] != b'u',
                12 => true,
                _ => false,
            },
            _ => true,
        };
        if !complete {
            return CustomState::Escape(esc);
        }
        let literal = format!("\"{esc}\"");
        match serde_json::from_str::<String>(&literal) {
            Ok(s) => {
                self.decoded.push_str(&s);
                CustomState::Value
            }
            Err(_) => CustomState::Failed,
        }
    }
}

fn is_high_surrogate(hex: &str) -> bool {
    u32::from_str_radix(hex, 16).is_ok_and(|u| (0xD800..0xDC00).contains(&u))
}

/// The custom tool's input from the whole Claude input JSON: the `input`
/// string, else the JSON text itself.
fn custom_final(raw: &str) -> String {
    match serde_json::from_str::<CustomWire>(raw) {
        Ok(CustomWire {
            input: Some(serde_json::Value::String(s)),
        }) => s,
        _ => raw.to_owned(),
    }
}

/// The Responses API wire format (see the module docs).
#[derive(Debug)]
pub struct ResponsesEmitter {
    head: String,
    /// What item ids are built from (the response id without `resp_`).
    suffix: String,
    custom_tools: Vec<String>,
    namespaced: Vec<(String, String, String)>,
    json_tool: Option<String>,
    seq: u64,
    /// `response.created` went out.
    started: bool,
    items: Vec<Item>,
    /// Index into `items` of the message taking text blocks.
    open_message: Option<usize>,
    /// Every done item's JSON, comma-separated: the final `output`.
    output: Vec<u8>,
    blocks: Vec<BlockEntry>,
    /// Estimated tokens of the thinking text of the done reasoning items.
    reasoning_tokens: u64,
    /// Scratch buffer for item JSON.
    scratch: Vec<u8>,
}

impl ResponsesEmitter {
    // ---- framing ---------------------------------------------------------------

    /// `event: <kind>\ndata: {"type":"<kind>","sequence_number":N` — the caller
    /// adds the other members and [`end`].
    fn begin(&mut self, out: &mut Vec<u8>, kind: &str) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"sequence_number\":");
        push_u64(out, self.seq);
        self.seq += 1;
    }

    /// `,"item_id":…,"output_index":N`
    fn item_ref(&self, out: &mut Vec<u8>, item: usize) {
        out.extend_from_slice(&self.items[item].reference);
    }

    fn response_object(
        &self,
        out: &mut Vec<u8>,
        status: &str,
        error: Option<(&str, &str)>,
        incomplete: Option<&str>,
        usage: Option<&FinalUsage>,
    ) {
        out.push(b'{');
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\",\"error\":");
        match error {
            Some((code, message)) => {
                out.extend_from_slice(b"{\"code\":\"");
                out.extend_from_slice(code.as_bytes());
                out.extend_from_slice(b"\",\"message\":");
                write_json_str(out, message);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"incomplete_details\":");
        match incomplete {
            Some(reason) => {
                out.extend_from_slice(b"{\"reason\":\"");
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\"}");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"output\":[");
        out.extend_from_slice(&self.output);
        out.push(b']');
        if let Some(u) = usage {
            out.extend_from_slice(b",\"usage\":");
            self.write_usage(out, u);
        }
        out.push(b'}');
    }

    fn write_usage(&self, out: &mut Vec<u8>, u: &FinalUsage) {
        let writes = u.cache_creation_5m + u.cache_creation_1h;
        let input = u.input_tokens + writes + u.cache_read_input_tokens;
        let _ = write!(
            out,
            "{{\"input_tokens\":{input},\"input_tokens_details\":{{\"cached_tokens\":{},\
             \"cache_write_tokens\":{writes}}},\"output_tokens\":{},\"output_tokens_details\":\
             {{\"reasoning_tokens\":{}}},\"total_tokens\":{}}}",
            u.cache_read_input_tokens,
            u.output_tokens,
            self.reasoning_tokens.min(u.output_tokens),
            input + u.output_tokens,
        );
    }

    /// `response.created` and `response.in_progress`, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        for kind in ["response.created", "response.in_progress"] {
            self.begin(out, kind);
            out.extend_from_slice(b",\"response\":");
            self.response_object(out, "in_progress", None, None, None);
            out.extend_from_slice(b"}\n\n");
        }
    }

    fn new_item(&mut self, kind: ItemKind, prefix: &str) -> usize {
        let output_index = self.items.len();
        let id = format!("{prefix}_{}_{output_index}", self.suffix);
        self.items.push(Item::new(kind, id, output_index));
        output_index
    }

    /// A `kind` event of the item as rendered into `scratch`.
    #[inline]
    fn item_event(&mut self, out: &mut Vec<u8>, kind: &str, item: usize) {
        self.begin(out, kind);
        let _ = write!(
            out,
            ",\"output_index\":{},\"item\":",
            self.items[item].output_index
        );
        out.extend_from_slice(&self.scratch);
        out.extend_from_slice(b"}\n\n");
    }

    /// `response.output_item.added` with the item as rendered into `scratch`.
    fn item_added(&mut self, out: &mut Vec<u8>, item: usize) {
        self.item_event(out, "response.output_item.added", item);
    }

    /// `response.output_item.done` with the item in `scratch`, which joins `output`.
    fn item_done(&mut self, out: &mut Vec<u8>, item: usize) {
        self.item_event(out, "response.output_item.done", item);
        if !self.output.is_empty() {
            self.output.push(b',');
        }
        self.output.extend_from_slice(&self.scratch);
    }

    // ---- blocks ----------------------------------------------------------------

    fn block_mut(&mut self, index: u64) -> Option<&mut BlockEntry> {
        self.blocks.iter_mut().rev().find(|b| b.index == index)
    }

    // ---- messages --------------------------------------------------------------

    /// The open message (opened now if there is none).
    fn message(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(i) = self.open_message {
            return i;
        }
        let i = self.new_item(ItemKind::Message, "msg");
        self.scratch.clear();
        self.scratch.extend_from_slice(b"{\"id\":");
        write_json_str(&mut self.scratch, &self.items[i].id);
        self.scratch.extend_from_slice(
            b",\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}",
        );
        self.item_added(out, i);
        self.open_message = Some(i);
        i
    }

    /// A new `output_text` part in the open message.
    fn open_part(&mut self, out: &mut Vec<u8>) {
        let i = self.message(out);
        self.items[i].parts.push(String::new());
        self.begin(out, "response.content_part.added");
        self.item_ref(out, i);
        let _ = write!(
            out,
            ",\"content_index\":{},\"part\":{{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[],\"logprobs\":[]}}}}\n\n",
            self.items[i].parts.len() - 1
        );
    }

    fn text_delta(&mut self, out: &mut Vec<u8>, text: &str) {
        let Some(i) = self.open_message else {
            return;
        };
        if text.is_empty() || self.items[i].parts.is_empty() {
            return;
        }
        let content_index = self.items[i].parts.len() - 1;
        if let Some(part) = self.items[i].parts.last_mut() {
            part.push_str(text);
        }
        self.begin(out, "response.output_text.delta");
        self.item_ref(out, i);
        out.extend_from_slice(b",\"content_index\":");
        push_u64(out, content_index as u64);
        out.extend_from_slice(b",\"delta\":");
        write_json_str(out, text);
        out.extend_from_slice(b",\"logprobs\":[]}\n\n");
    }

    /// `output_text.done` and `content_part.done` for the message's last part.
    fn close_part(&mut self, out: &mut Vec<u8>) {
        let Some(i) = self.open_message else {
            return;
        };
        let Some(text) = self.items[i].parts.last() else {
            return;
        };
        let content_index = self.items[i].parts.len() - 1;
        self.scratch.clear();
        write_json_str(&mut self.scratch, text);
        self.begin(out, "response.output_text.done");
        self.item_ref(out, i);
        let _ = write!(out, ",\"content_index\":{content_index},\"text\":");
        out.extend_from_slice(&self.scratch);
        out.extend_from_slice(b",\"logprobs\":[]}\n\n");
        self.begin(out, "response.content_part.done");
        self.item_ref(out, i);
        let _ = write!(
            out,
            ",\"content_index\":{content_index},\"part\":{{\"type\":\"output_text\",\"text\":"
        );
        out.extend_from_slice(&self.scratch);
        out.extend_from_slice(b",\"annotations\":[],\"logprobs\":[]}}\n\n");
    }

    /// The open message is done (before another item starts, or at the end).
    fn close_message(&mut self, out: &mut Vec<u8>) {
        let Some(i) = self.open_message.take() else {
            return;
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(b"{\"id\":");
        write_json_str(&mut self.scratch, &self.items[i].id);
        self.scratch.extend_from_slice(
            b",\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[",
        );
        for (k, text) in self.items[i].parts.iter().enumerate() {
            if k > 0 {
                self.scratch.push(b',');
            }
            self.scratch
                .extend_from_slice(b"{\"type\":\"output_text\",\"text\":");
            write_json_str(&mut self.scratch, text);
            self.scratch
                .extend_from_slice(b",\"annotations\":[],\"logprobs\":[]}");
        }
        self.scratch.extend_from_slice(b"]}");
        self.item_done(out, i);
    }

    // ---- reasoning -------------------------------------------------------------

    /// Starts a reasoning item's JSON in `scratch`, up to its `summary` value.
    #[inline]
    fn reasoning_head(&mut self, i: usize) {
        self.scratch.clear();
        self.scratch.extend_from_slice(b"{\"id\":");
        write_json_str(&mut self.scratch, &self.items[i].id);
        self.scratch
            .extend_from_slice(b",\"type\":\"reasoning\",\"summary\":");
    }

    /// Ends a reasoning item in `scratch` (after its summary) with `encoded`, the thinking
    /// block it stands for, as its `encrypted_content`, and emits it done.
    #[inline]
    fn reasoning_done_with(&mut self, out: &mut Vec<u8>, i: usize, encoded: &[u8]) {
        self.scratch.extend_from_slice(b",\"encrypted_content\":\"");
        self.scratch.extend_from_slice(REASONING_PREFIX.as_bytes());
        base64_encode(&mut self.scratch, encoded);
        self.scratch.extend_from_slice(b"\"}");
        self.item_done(out, i);
    }

    fn reasoning_start(&mut self, out: &mut Vec<u8>) -> usize {
        self.close_message(out);
        let i = self.new_item(ItemKind::Reasoning, "rs");
        self.items[i].parts.push(String::new());
        self.reasoning_head(i);
        self.scratch.extend_from_slice(b"[]}");
        self.item_added(out, i);
        self.begin(out, "response.reasoning_summary_part.added");
        self.item_ref(out, i);
        out.extend_from_slice(
            b",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"\"}}\n\n",
        );
        i
    }

    fn reasoning_delta(&mut self, out: &mut Vec<u8>, i: usize, text: &str) {
        if text.is_empty() {
            return;
        }
        self.items[i].parts[0].push_str(text);
        self.begin(out, "response.reasoning_summary_text.delta");
        self.item_ref(out, i);
        out.extend_from_slice(b",\"summary_index\":0,\"delta\":");
        write_json_str(out, text);
        out.extend_from_slice(b"}\n\n");
    }

    fn reasoning_done(&mut self, out: &mut Vec<u8>, i: usize) {
        let text = std::mem::take(&mut self.items[i].parts[0]);
        self.reasoning_tokens += estimate_text_tokens(&text);
        let mut encoded = Vec::with_capacity(text.len() + 64);
        encoded.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":");
        write_json_str(&mut encoded, &text);
        encoded.extend_from_slice(b",\"signature\":");
        write_json_str(&mut encoded, &self.items[i].signature);
        encoded.push(b'}');
        let mut quoted = Vec::with_capacity(text.len() + 2);
        write_json_str(&mut quoted, &text);
        self.begin(out, "response.reasoning_summary_text.done");
        self.item_ref(out, i);
        out.extend_from_slice(b",\"summary_index\":0,\"text\":");
        out.extend_from_slice(&quoted);
        out.extend_from_slice(b"}\n\n");
        self.begin(out, "response.reasoning_summary_part.done");
        self.item_ref(out, i);
        out.extend_from_slice(
            b",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":",
        );
        out.extend_from_slice(&quoted);
        out.extend_from_slice(b"}}\n\n");
        self.reasoning_head(i);
        self.scratch
            .extend_from_slice(b"[{\"type\":\"summary_text\",\"text\":");
        self.scratch.extend_from_slice(&quoted);
        self.scratch.extend_from_slice(b"}]");
        self.reasoning_done_with(out, i, &encoded);
    }

    /// A `redacted_thinking` block: a reasoning item added and done at once.
    fn redacted(&mut self, out: &mut Vec<u8>, data: &str) {
        self.close_message(out);
        let i = self.new_item(ItemKind::Reasoning, "rs");
        self.reasoning_head(i);
        self.scratch.extend_from_slice(b"[]}");
        self.item_added(out, i);
        let mut encoded = Vec::with_capacity(data.len() + 40);
        encoded.extend_from_slice(b"{\"type\":\"redacted_thinking\",\"data\":");
        write_json_str(&mut encoded, data);
        encoded.push(b'}');
        self.reasoning_head(i);
        self.scratch.extend_from_slice(b"[]");
        self.reasoning_done_with(out, i, &encoded);
    }

    // ---- tool calls ------------------------------------------------------------

    fn tool_start(
        &mut self,
        start: &BlockStart<'_>,
        input: Option<String>,
        out: &mut Vec<u8>,
    ) -> Block {
        let name = start.name.as_deref().unwrap_or("");
        if self.json_tool.as_deref() == Some(name) {
            self.open_part(out);
            return Block::JsonText;
        }
        self.close_message(out);
        let custom = self.custom_tools.iter().any(|t| t == name);
        let (kind, prefix) = if custom {
            (ItemKind::Custom, "ctc")
        } else {
            (ItemKind::Function, "fc")
        };
        let i = self.new_item(kind, prefix);
        let (client_name, namespace) =
            match self.namespaced.iter().find(|(flat, _, _)| flat == name) {
                Some((_, ns, inner)) => (inner.clone(), Some(ns.clone())),
                None => (name.to_owned(), None),
            };
        let item = &mut self.items[i];
        item.name = client_name;
        item.namespace = namespace;
        start
            .id
            .as_deref()
            .unwrap_or("")
            .clone_into(&mut item.call_id);
        item.start_input = input;
        self.call_json(i, "in_progress", "");
        self.item_added(out, i);
        if custom {
            Block::Custom(i)
        } else {
            Block::Function(i)
        }
    }

    /// A function or custom call item as JSON, into `scratch`.
    fn call_json(&mut self, i: usize, status: &str, payload: &str) {
        let item = &self.items[i];
        let s = &mut self.scratch;
        s.clear();
        s.extend_from_slice(b"{\"id\":");
        write_json_str(s, &item.id);
        if item.kind == ItemKind::Custom {
            s.extend_from_slice(b",\"type\":\"custom_tool_call\",\"call_id\":");
        } else {
            s.extend_from_slice(b",\"type\":\"function_call\",\"status\":\"");
            s.extend_from_slice(status.as_bytes());
            s.extend_from_slice(b"\",\"call_id\":");
        }
        write_json_str(s, &item.call_id);
        if let Some(ns) = &item.namespace {
            s.extend_from_slice(b",\"namespace\":");
            write_json_str(s, ns);
        }
        s.extend_from_slice(b",\"name\":");
        write_json_str(s, &item.name);
        if item.kind == ItemKind::Custom {
            s.extend_from_slice(b",\"input\":");
        } else {
            s.extend_from_slice(b",\"arguments\":");
        }
        write_json_str(s, payload);
        s.push(b'}');
    }

    fn function_done(&mut self, out: &mut Vec<u8>, i: usize) {
        if self.items[i].raw.is_empty() {
            // No fragment: the input given whole at the start, `{}` at least,
            // so `arguments` always parses.
            let args = self.items[i]
                .start_input
                .take()
                .unwrap_or_else(|| "{}".to_owned());
            self.begin(out, "response.function_call_arguments.delta");
            self.item_ref(out, i);
            out.extend_from_slice(b",\"delta\":");
            write_json_str(out, &args);
            out.extend_from_slice(b"}\n\n");
            self.items[i].raw = args;
        }
        let args = std::mem::take(&mut self.items[i].raw);
        self.begin(out, "response.function_call_arguments.done");
        self.item_ref(out, i);
        out.extend_from_slice(b",\"name\":");
        write_json_str(out, &self.items[i].name);
        out.extend_from_slice(b",\"arguments\":");
        write_json_str(out, &args);
        out.extend_from_slice(b"}\n\n");
        self.call_json(i, "completed", &args);
        self.item_done(out, i);
    }

    /// The custom input text decoded since byte `from`, as a delta event.
    fn custom_delta(&mut self, out: &mut Vec<u8>, i: usize, from: usize) {
        let decoded = &self.items[i].custom.decoded;
        if decoded.len() <= from {
            return;
        }
        let mut delta = Vec::with_capacity(decoded.len() - from + 2);
        write_json_str(&mut delta, &decoded[from..]);
        self.begin(out, "response.custom_tool_call_input.delta");
        self.item_ref(out, i);
        out.extend_from_slice(b",\"delta\":");
        out.extend_from_slice(&delta);
        out.extend_from_slice(b"}\n\n");
    }

    fn custom_done(&mut self, out: &mut Vec<u8>, i: usize) {
        let raw = std::mem::take(&mut self.items[i].raw);
        let raw = if raw.is_empty() {
            self.items[i].start_input.take().unwrap_or_default()
        } else {
            raw
        };
        let input = custom_final(&raw);
        // The rest of the input when what streamed is its beginning (always,
        // unless the JSON had an unexpected shape).
        let streamed = self.items[i].custom.decoded.len();
        if input.len() > streamed && input.starts_with(self.items[i].custom.decoded.as_str()) {
            self.items[i].custom.decoded.clone_from(&input);
            self.custom_delta(out, i, streamed);
        }
        self.begin(out, "response.custom_tool_call_input.done");
        self.item_ref(out, i);
        out.extend_from_slice(b",\"input\":");
        write_json_str(out, &input);
        out.extend_from_slice(b"}\n\n");
        self.call_json(i, "completed", &input);
        self.item_done(out, i);
    }

    // ---- web search ------------------------------------------------------------

    fn web_search_json(&mut self, i: usize, status: &str, query: &str) {
        let s = &mut self.scratch;
        s.clear();
        s.extend_from_slice(b"{\"id\":");
        write_json_str(s, &self.items[i].id);
        s.extend_from_slice(b",\"type\":\"web_search_call\",\"status\":\"");
        s.extend_from_slice(status.as_bytes());
        s.extend_from_slice(b"\",\"action\":{\"type\":\"search\",\"query\":");
        write_json_str(s, query);
        s.extend_from_slice(b"}}");
    }

    fn web_search_start(&mut self, out: &mut Vec<u8>) -> usize {
        self.close_message(out);
        let i = self.new_item(ItemKind::WebSearch, "ws");
        self.web_search_json(i, "in_progress", "");
        self.item_added(out, i);
        for kind in [
            "response.web_search_call.in_progress",
            "response.web_search_call.searching",
        ] {
            self.web_search_event(out, kind, i);
        }
        i
    }

    /// A `response.web_search_call.*` progress event of item `i`.
    #[inline]
    fn web_search_event(&mut self, out: &mut Vec<u8>, kind: &str, i: usize) {
        self.begin(out, kind);
        let _ = write!(
            out,
            ",\"output_index\":{},\"item_id\":",
            self.items[i].output_index
        );
        write_json_str(out, &self.items[i].id);
        out.extend_from_slice(b"}\n\n");
    }

    fn web_search_done(&mut self, out: &mut Vec<u8>, i: usize) {
        let raw = std::mem::take(&mut self.items[i].raw);
        let query = serde_json::from_str::<QueryWire>(&raw)
            .ok()
            .and_then(|w| w.query)
            .unwrap_or_default();
        self.web_search_event(out, "response.web_search_call.completed", i);
        self.web_search_json(i, "completed", &query);
        self.item_done(out, i);
    }
}

impl Emitter for ResponsesEmitter {
    type Options = ResponsesOptions;

    fn new(opts: &ResponsesOptions) -> Self {
        let suffix = opts
            .response_id
            .strip_prefix("resp_")
            .unwrap_or(&opts.response_id)
            .to_owned();
        let head = if opts.head.is_empty() {
            let mut h = Vec::new();
            h.extend_from_slice(b"\"id\":");
            write_json_str(&mut h, &opts.response_id);
            h.extend_from_slice(b",\"object\":\"response\"");
            String::from_utf8(h).unwrap_or_default()
        } else {
            opts.head.clone()
        };
        Self {
            head,
            suffix,
            custom_tools: opts.custom_tools.clone(),
            namespaced: opts.namespaced.clone(),
            json_tool: opts.json_tool.clone(),
            seq: 0,
            started: false,
            items: Vec::new(),
            open_message: None,
            output: Vec::new(),
            blocks: Vec::new(),
            reasoning_tokens: 0,
            scratch: Vec::new(),
        }
    }

    fn message_start(&mut self, out: &mut Vec<u8>) {
        self.start(out);
    }

    fn block_start(&mut self, start: &BlockStart<'_>, out: &mut Vec<u8>) {
        self.start(out);
        let kind = match &*start.kind {
            "text" => {
                self.open_part(out);
                if let Some(text) = start.text() {
                    self.text_delta(out, &text);
                }
                Block::Text
            }
            "thinking" => {
                let (text, signature) = start.thinking();
                let item = self.reasoning_start(out);
                self.items[item].signature.push_str(&signature);
                self.reasoning_delta(out, item, &text);
                Block::Reasoning(item)
            }
            "redacted_thinking" => {
                let data = start.redacted_data();
                self.redacted(out, &data);
                Block::Ignored
            }
            "tool_use" => self.tool_start(start, start.input().map(str::to_owned), out),
            "server_tool_use" if start.name.as_deref() == Some("web_search") => {
                Block::WebSearch(self.web_search_start(out))
            }
            _ => Block::Ignored,
        };
        self.blocks.push(BlockEntry {
            index: start.index,
            kind,
        });
    }

    fn block_delta(&mut self, index: u64, delta: &Delta<'_>, out: &mut Vec<u8>) {
        let Some(kind) = self.block_mut(index).map(|b| b.kind) else {
            return;
        };
        match (kind, delta) {
            (Block::Text, Delta::Text(text)) => self.text_delta(out, text),
            (Block::JsonText, Delta::InputJson(part)) => self.text_delta(out, part),
            (Block::Reasoning(i), Delta::Thinking(text)) => self.reasoning_delta(out, i, text),
            (Block::Reasoning(i), Delta::Signature(sig)) => self.items[i].signature.push_str(sig),
            (Block::Function(i), Delta::InputJson(part)) if !part.is_empty() => {
                self.items[i].raw.push_str(part);
                self.begin(out, "response.function_call_arguments.delta");
                self.item_ref(out, i);
                out.extend_from_slice(b",\"delta\":");
                write_json_str(out, part);
                out.extend_from_slice(b"}\n\n");
            }
            (Block::Custom(i), Delta::InputJson(part)) => {
                self.items[i].raw.push_str(part);
                let from = self.items[i].custom.feed(part);
                self.custom_delta(out, i, from);
            }
            (Block::WebSearch(i), Delta::InputJson(part)) => self.items[i].raw.push_str(part),
            _ => {}
        }
    }

    fn block_stop(&mut self, index: u64, out: &mut Vec<u8>) {
        let Some(kind) = self.block_mut(index).map(|b| b.kind) else {
            return;
        };
        match kind {
            Block::Text | Block::JsonText => self.close_part(out),
            Block::Reasoning(i) => self.reasoning_done(out, i),
            Block::Function(i) => self.function_done(out, i),
            Block::Custom(i) => self.custom_done(out, i),
            Block::WebSearch(i) => self.web_search_done(out, i),
            Block::Ignored => {}
        }
    }

    fn message_stop(&mut self, tracker: &UsageTracker, out: &mut Vec<u8>) {
        self.start(out);
        self.close_message(out);
        let reason = incomplete_reason(tracker.stop_reason.as_deref());
        let (kind, status) = match reason {
            Some(_) => ("response.incomplete", "incomplete"),
            None => ("response.completed", "completed"),
        };
        self.begin(out, kind);
        out.extend_from_slice(b",\"response\":");
        self.response_object(out, status, None, reason, Some(&tracker.usage()));
        out.extend_from_slice(b"}\n\n");
    }

    fn error(&mut self, kind: &str, message: &str, tracker: &UsageTracker, out: &mut Vec<u8>) {
        let code = response_error_code(kind);
        self.start(out);
        self.begin(out, "response.failed");
        out.extend_from_slice(b",\"response\":");
        // usage only once the upstream reported it: before that it would be an estimate
        let usage = tracker.saw_message_delta.then(|| tracker.usage());
        self.response_object(out, "failed", Some((code, message)), None, usage.as_ref());
        out.extend_from_slice(b"}\n\n");
    }
}

impl Translator<ResponsesEmitter> {
    /// Output items emitted so far.
    pub fn items(&self) -> usize {
        self.emitter().items.len()
    }

    /// Events emitted so far.
    pub fn events_out(&self) -> u64 {
        self.emitter().seq
    }
}

/// Translate a whole stream in one go (tests, tools).
pub fn translate_all(opts: &ResponsesOptions, stream: &[u8]) -> Vec<u8> {
    translate::translate_all::<ResponsesEmitter>(opts, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonw::base64_encode;
    use crate::sse::Leftover;
    use serde_json::Value;

    fn opts() -> ResponsesOptions {
        ResponsesOptions {
            response_id: "resp_abc".into(),
            head: r#""id":"resp_abc","object":"response","created_at":7,"model":"claude-x""#.into(),
            custom_tools: vec!["apply_patch".into()],
            namespaced: vec![("ns__f".into(), "ns".into(), "f".into())],
            json_tool: None,
        }
    }

    fn ev(name: &str, data: &str) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"cache_read_input_tokens":2,"output_tokens":1}}}"#;

    fn stop(reason: &str) -> String {
        [
            ev(
                "message_delta",
                &format!(
                    r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}"}},"usage":{{"output_tokens":30}}}}"#
                ),
            ),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat()
    }

    /// (event name, data) pairs, checking the framing rules on the way.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).unwrap();
        let mut got = Vec::new();
        for (seq, frame) in text.trim_end_matches("\n\n").split("\n\n").enumerate() {
            let (name, data) = frame
                .strip_prefix("event: ")
                .and_then(|f| f.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("bad frame {frame}"));
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], name, "{frame}");
            assert_eq!(v["sequence_number"], seq as u64, "{frame}");
            got.push((name.to_owned(), v));
        }
        got
    }

    fn names(evs: &[(String, Value)]) -> Vec<&str> {
        evs.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn text_stream() {
        let stream = [
            ev("message_start", START),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            stop("end_turn"),
        ]
        .concat();
        let evs = events(&translate_all(&opts(), stream.as_bytes()));
        assert_eq!(
            names(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(evs[0].1["response"]["status"], "in_progress");
        assert_eq!(evs[0].1["response"]["id"], "resp_abc");
        assert_eq!(evs[6].1["text"], "Hi there");
        let done = &evs[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["id"], "msg_abc_0");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hi there");
        assert_eq!(
            done["usage"],
            serde_json::json!({"input_tokens":7,"input_tokens_details":{"cached_tokens":2,"cache_write_tokens":0},
                "output_tokens":30,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":37})
        );
    }

    #[test]
    fn thinking_tools_and_custom_tools() {
        let stream = [
            ev("message_start", START),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think."}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"ZGF0"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_a","name":"ns__f","input":{}}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"x\":1}"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":2}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_b","name":"apply_patch","input":{}}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"input\": \"*** Begin\\n\\u00e9\\ud83d"}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"\\ude00 \\\"q\\\"\"}"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":3}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":4,"content_block":{"type":"tool_use","id":"toolu_c","name":"g","input":{"y":2}}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":4}"#),
            stop("tool_use"),
        ]
        .concat();
        let evs = events(&translate_all(&opts(), stream.as_bytes()));
        let done: Vec<&Value> = evs
            .iter()
            .filter(|(n, _)| n == "response.output_item.done")
            .map(|(_, v)| &v["item"])
            .collect();
        assert_eq!(done.len(), 5);
        assert_eq!(done[0]["type"], "reasoning");
        assert_eq!(done[0]["summary"][0]["text"], "Let me think.");
        let enc = done[0]["encrypted_content"].as_str().unwrap();
        assert!(enc.starts_with(REASONING_PREFIX));
        let mut want = Vec::new();
        base64_encode(
            &mut want,
            br#"{"type":"thinking","thinking":"Let me think.","signature":"c2ln"}"#,
        );
        assert_eq!(
            &enc[REASONING_PREFIX.len()..],
            std::str::from_utf8(&want).unwrap()
        );
        assert_eq!(done[1]["summary"], serde_json::json!([]));
        assert_eq!(
            done[2],
            &serde_json::json!({"id":"fc_abc_2","type":"function_call","status":"completed","call_id":"toolu_a",
                "namespace":"ns","name":"f","arguments":"{\"x\":1}"})
        );
        assert_eq!(done[3]["type"], "custom_tool_call");
        assert_eq!(done[3]["input"], "*** Begin\n\u{e9}\u{1f600} \"q\"");
        let custom_deltas: Vec<&str> = evs
            .iter()
            .filter(|(n, _)| n == "response.custom_tool_call_input.delta")
            .map(|(_, v)| v["delta"].as_str().unwrap())
            .collect();
        assert_eq!(custom_deltas, ["*** Begin\n\u{e9}", "\u{1f600} \"q\""]);
        assert_eq!(done[4]["arguments"], "{\"y\":2}");
        let last = &evs.last().unwrap().1;
        assert_eq!(last["type"], "response.completed");
        assert_eq!(last["response"]["output"].as_array().unwrap().len(), 5);
        assert!(
            last["response"]["usage"]["output_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
    }

    #[test]
    fn max_tokens_is_incomplete() {
        let stream = [ev("message_start", START), stop("max_tokens")].concat();
        let evs = events(&translate_all(&opts(), stream.as_bytes()));
        let (name, v) = evs.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(v["response"]["status"], "incomplete");
        assert_eq!(
            v["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    #[test]
    fn error_event_fails_and_ends() {
        let stream = [
            ev("message_start", START),
            ev(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            stop("end_turn"),
        ]
        .concat();
        let evs = events(&translate_all(&opts(), stream.as_bytes()));
        let (name, v) = evs.last().unwrap();
        assert_eq!(name, "response.failed");
        assert_eq!(
            v["response"]["error"],
            serde_json::json!({"code":"server_error","message":"Overloaded"})
        );
    }

    #[test]
    fn cut_stream_fails_once() {
        let mut t = ResponsesTranslator::new(&opts());
        let mut out = Vec::new();
        t.feed(ev("message_start", START).as_bytes(), &mut out);
        t.feed(b"event: content_block_start\ndata: {\"ty", &mut out);
        t.finish(&mut out);
        let evs = events(&out);
        assert_eq!(evs.last().unwrap().0, "response.failed");
        assert!(t.leftover().is_some_and(Leftover::any));
        let mut again = Vec::new();
        t.finish(&mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn web_search_call_and_text_around_it() {
        let stream = [
            ev("message_start", START),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Searching."}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"rust\"}"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":2,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_1","content":[]}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":2}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":3,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"Found"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":3}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":4,"content_block":{"citations":[],"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":4,"delta":{"type":"text_delta","text":" it."}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":4}"#),
            stop("end_turn"),
        ]
        .concat();
        let evs = events(&translate_all(&opts(), stream.as_bytes()));
        let output = &evs.last().unwrap().1["response"]["output"];
        assert_eq!(output[0]["content"][0]["text"], "Searching.");
        assert_eq!(output[1]["type"], "web_search_call");
        assert_eq!(output[1]["action"]["query"], "rust");
        assert_eq!(output[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(output[2]["content"][1]["text"], " it.");
    }

    #[test]
    fn json_tool_streams_as_text() {
        let o = ResponsesOptions {
            json_tool: Some("json_response".into()),
            ..opts()
        };
        let stream = [
            ev("message_start", START),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_j","name":"json_response","input":{}}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            stop("tool_use"),
        ]
        .concat();
        let evs = events(&translate_all(&o, stream.as_bytes()));
        let last = &evs.last().unwrap().1["response"];
        assert_eq!(last["status"], "completed");
        assert_eq!(last["output"][0]["content"][0]["text"], "{\"a\":1}");
    }

    #[test]
    fn custom_decoder_vectors() {
        for (fragments, want) in [
            (vec![r#"{"input":"abc"}"#], "abc"),
            (
                vec![r#"{"inp"#, r"ut", r#"": "#, r#""a\"#, r#"nb"}"#],
                "a\nb",
            ),
            (
                vec![r#"{"input":"\u00"#, r"e9\ud83d\u", r#"de00"}"#],
                "\u{e9}\u{1f600}",
            ),
            (vec![r#"{"input": 5}"#], ""),
            (vec![r#"{"q": "x"}"#], ""),
        ] {
            let mut c = CustomInput::default();
            for f in fragments {
                c.feed(f);
            }
            assert_eq!(c.decoded, want);
        }
        assert_eq!(custom_final(r#"{"input": 5}"#), r#"{"input": 5}"#);
        assert_eq!(custom_final(r#"{"input":"x"}"#), "x");
    }
}
