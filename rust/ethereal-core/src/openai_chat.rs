//! Anthropic Messages SSE in, `OpenAI` Chat Completions `chat.completion.chunk`
//! stream out (`data: {compact json}\n\n` frames, then `data: [DONE]`).
//!
//! Works from the hub [`Event`](crate::Event) type, so the usage accounting is the very
//! same [`UsageTracker`] the native route's `StreamTap` uses: a translated
//! stream is metered exactly like a native one.
//!
//! Mapping (one frame per upstream event that carries something):
//! - `message_start` → the role chunk `{"role":"assistant","content":""}`;
//! - `text_delta` → `{"content":…}`; `thinking_delta` → `{"reasoning_content":…}`.
//!   Text that follows a non-text block (a server tool call and its result)
//!   starts with a blank line, so paragraphs around a web search do not run
//!   together;
//! - a client `tool_use` block → a `tool_calls` entry with its own `index`
//!   (0, 1, … in block order), `id`, `type` and `function.name`, then its
//!   `input_json_delta`s as `function.arguments` fragments. A call whose input
//!   came whole in `content_block_start` (no deltas) gets that input as one
//!   fragment, so `arguments` is always parseable JSON (`{}` at least);
//! - server tools, their results, citations, compaction and redacted
//!   thinking produce no frame (an `OpenAI` client could not act on them);
//! - `message_stop` → the `finish_reason` chunk (its delta carries
//!   `reasoning_signature` when the reply had thinking, see
//!   [`encode_reasoning_signature`]), the usage chunk (`choices: []`) when
//!   `include_usage`, then `data: [DONE]`;
//! - an `error` event → `data: {"error":{message,type,param,code}}` and the
//!   stream ends (nothing more is emitted, no `[DONE]`);
//! - upstream EOF before `message_stop` → the same error frame (see [`Translator::finish`]).
//!
//! Optional modes: a "JSON tool" (the forced tool `response_format` is
//! translated to) whose input becomes `content`, and legacy `functions`
//! clients, who get `function_call` instead of `tool_calls`.
//!
//! [`ChatEmitter`] is the wire format; framing, parsing, usage and EOF are the
//! [`Translator`] engine's, shared with the Responses translator. About 0.2 µs
//! per upstream event.

use std::io::Write as _;

use crate::event::{BlockStart, Delta};
use crate::jsonw::{write_escaped, write_json_str};
use crate::tap::{FinalUsage, UsageTracker};
use crate::translate::{self, Emitter, Translator};

/// Incremental Anthropic SSE → `chat.completion.chunk` translator.
pub type ChatTranslator = Translator<ChatEmitter>;

/// Prefix of the opaque multi-block form of `reasoning_signature`.
pub const SIGNATURE_PREFIX: &str = "eth1~";

/// How the translator renders a stream.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// `model` of every chunk.
    pub model: String,
    /// `id` of every chunk (`chatcmpl-…`).
    pub completion_id: String,
    /// `created` of every chunk (Unix seconds).
    pub created: i64,
    /// `stream_options.include_usage`: a final chunk with `choices: []` and `usage`.
    pub include_usage: bool,
    /// Name of the tool a `response_format` was translated to: its input is the answer (`content`).
    pub json_tool: Option<String>,
    /// The request used legacy `functions`: answer with `function_call`.
    pub legacy_functions: bool,
}

/// One piece of reasoning, kept so a follow-up turn can restore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reasoning {
    /// A thinking block: how many chars (Unicode scalar values) of
    /// `reasoning_content` it contributed, and its signature.
    Thinking { chars: usize, signature: String },
    /// A `redacted_thinking` block's opaque `data`.
    Redacted { data: String },
}

/// The `reasoning_signature` value for a reply's reasoning blocks, or `None`
/// when there is nothing to restore.
///
/// One thinking block (the usual case) → its raw signature. Anything else
/// (several blocks, redacted thinking) → `eth1~` followed by `~`-separated
/// entries `t<chars>:<signature>` / `r:<data>`; `reasoning_content` is the
/// blocks' texts concatenated, split back by the char counts. Signatures and
/// redacted data are base64, so `~` and `:` never occur inside them.
pub fn encode_reasoning_signature(blocks: &[Reasoning]) -> Option<String> {
    match blocks {
        [] => None,
        [Reasoning::Thinking { signature, .. }] => {
            (!signature.is_empty()).then(|| signature.clone())
        }
        _ => {
            let mut out = String::from(SIGNATURE_PREFIX);
            for (i, block) in blocks.iter().enumerate() {
                if i > 0 {
                    out.push('~');
                }
                match block {
                    Reasoning::Thinking { chars, signature } => {
                        out.push('t');
                        out.push_str(&chars.to_string());
                        out.push(':');
                        out.push_str(signature);
                    }
                    Reasoning::Redacted { data } => {
                        out.push_str("r:");
                        out.push_str(data);
                    }
                }
            }
            Some(out)
        }
    }
}

/// `OpenAI`'s `(type, code)` for an Anthropic error type (the same table as
/// `ethereal.errors`, so in-stream and HTTP errors agree).
pub fn openai_error_kind(anthropic_type: &str) -> (&'static str, Option<&'static str>) {
    match anthropic_type {
        "invalid_request_error" => ("invalid_request_error", None),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        "permission_error" => ("invalid_request_error", Some("model_not_allowed")),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        "overloaded_error" => ("server_error", Some("overloaded")),
        "timeout_error" => ("server_error", Some("timeout")),
        _ => ("server_error", None),
    }
}

/// `OpenAI`'s `finish_reason` for an Anthropic `stop_reason`.
///
/// `tool_use` is `tool_calls` only when the client got a tool call (else
/// `function_call` in legacy mode, or `stop` when the only call was the
/// JSON tool); `pause_turn` (server tools paused) is a plain `stop`.
pub fn finish_reason(stop_reason: Option<&str>, tool_calls: bool, legacy: bool) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("refusal") => "content_filter",
        Some("tool_use") if tool_calls => {
            if legacy {
                "function_call"
            } else {
                "tool_calls"
            }
        }
        _ => "stop",
    }
}

/// What an Anthropic content block turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// Index into `reasoning`.
    Thinking(usize),
    /// A client tool call: its `tool_calls[].index`.
    Tool(u32),
    /// The JSON tool: input fragments become `content`.
    JsonTool,
    /// The legacy `function_call` (only the first call of a reply).
    Function,
    /// Nothing to show an `OpenAI` client.
    Ignored,
}

/// One content block of the reply.
#[derive(Debug)]
struct BlockEntry {
    /// Anthropic's block index.
    index: u64,
    kind: Block,
    /// A tool block sent at least one argument fragment.
    sent_args: bool,
    /// A tool block's `input` as given in `content_block_start`.
    start_input: Option<String>,
}

/// The `chat.completion.chunk` wire format (see the module docs).
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct ChatEmitter {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":`
    choice_prefix: Vec<u8>,
    /// `data: {"id":…,…,"model":…,"choices":[],"usage":`
    usage_prefix: Vec<u8>,
    include_usage: bool,
    json_tool: Option<String>,
    legacy: bool,
    /// The role chunk went out.
    started: bool,
    /// The reply's blocks in order (the current one is last).
    blocks: Vec<BlockEntry>,
    /// Client tool calls announced so far (the next `tool_calls` index).
    tool_calls: u32,
    /// The legacy `function_call` was announced.
    function_called: bool,
    /// Some `content` went out.
    content_sent: bool,
    /// A non-text block followed that content: the next text starts a new
    /// paragraph (text around server tool calls would otherwise run together).
    break_pending: bool,
    reasoning: Vec<Reasoning>,
}

const CHOICE_OPEN: &[u8] = b"\"choices\":[{\"index\":0,\"delta\":";
const CHOICE_CLOSE: &[u8] = b",\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

impl ChatEmitter {
    /// The role chunk, once, before anything else.
    fn role(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            out.extend_from_slice(&self.choice_prefix);
            out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
            out.extend_from_slice(CHOICE_CLOSE);
        }
    }

    /// Open a choice chunk whose delta follows.
    fn open(&mut self, out: &mut Vec<u8>) {
        self.role(out);
        out.extend_from_slice(&self.choice_prefix);
    }

    /// One chunk whose delta is `{"<key>":"<text>"}`.
    fn string_delta(&mut self, out: &mut Vec<u8>, key: &[u8], text: &str) {
        if text.is_empty() {
            return;
        }
        self.open(out);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        write_json_str(out, text);
        out.push(b'}');
        out.extend_from_slice(CHOICE_CLOSE);
    }

    /// A `content` fragment, after a paragraph break if one is pending.
    fn content(&mut self, out: &mut Vec<u8>, text: &str) {
        if text.is_empty() {
            return;
        }
        self.open(out);
        out.extend_from_slice(b"{\"content\":\"");
        if self.break_pending {
            out.extend_from_slice(b"\\n\\n");
            self.break_pending = false;
        }
        write_escaped(out, text);
        out.extend_from_slice(b"\"}");
        out.extend_from_slice(CHOICE_CLOSE);
        self.content_sent = true;
    }

    fn tool_args(&mut self, out: &mut Vec<u8>, index: u32, args: &str) {
        self.open(out);
        let _ = write!(
            out,
            "{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"arguments\":"
        );
        write_json_str(out, args);
        out.extend_from_slice(b"}}]}");
        out.extend_from_slice(CHOICE_CLOSE);
    }

    fn function_args(&mut self, out: &mut Vec<u8>, args: &str) {
        self.open(out);
        out.extend_from_slice(b"{\"function_call\":{\"arguments\":");
        write_json_str(out, args);
        out.extend_from_slice(b"}}");
        out.extend_from_slice(CHOICE_CLOSE);
    }

    fn block_mut(&mut self, index: u64) -> Option<&mut BlockEntry> {
        self.blocks.iter_mut().rev().find(|b| b.index == index)
    }

    fn tool_start(&mut self, start: &BlockStart<'_>, out: &mut Vec<u8>) -> Block {
        let name = start.name.as_deref().unwrap_or("");
        if self.json_tool.as_deref() == Some(name) {
            return Block::JsonTool;
        }
        if self.legacy {
            if self.function_called {
                return Block::Ignored;
            }
            self.function_called = true;
            self.open(out);
            out.extend_from_slice(b"{\"function_call\":{\"name\":");
            write_json_str(out, name);
            out.extend_from_slice(b",\"arguments\":\"\"}}");
            out.extend_from_slice(CHOICE_CLOSE);
            return Block::Function;
        }
        let index = self.tool_calls;
        self.tool_calls += 1;
        self.open(out);
        let _ = write!(out, "{{\"tool_calls\":[{{\"index\":{index},\"id\":");
        write_json_str(out, start.id.as_deref().unwrap_or(""));
        out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        write_json_str(out, name);
        out.extend_from_slice(b",\"arguments\":\"\"}}]}");
        out.extend_from_slice(CHOICE_CLOSE);
        Block::Tool(index)
    }

    /// One argument fragment of a tool block, wherever its kind sends it.
    fn send_args(&mut self, kind: Block, args: &str, out: &mut Vec<u8>) {
        match kind {
            Block::Tool(k) => self.tool_args(out, k, args),
            Block::JsonTool => self.content(out, args),
            Block::Function => self.function_args(out, args),
            _ => {}
        }
    }

    /// Client tool calls emitted so far.
    pub fn tool_calls(&self) -> u32 {
        self.tool_calls
    }

    /// The reply's reasoning blocks so far.
    pub fn reasoning(&self) -> &[Reasoning] {
        &self.reasoning
    }
}

impl Emitter for ChatEmitter {
    type Options = ChatOptions;

    fn new(opts: &ChatOptions) -> Self {
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"data: {\"id\":");
        write_json_str(&mut head, &opts.completion_id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        let _ = write!(head, "{}", opts.created);
        head.extend_from_slice(b",\"model\":");
        write_json_str(&mut head, &opts.model);
        head.push(b',');
        let mut choice_prefix = head.clone();
        choice_prefix.extend_from_slice(CHOICE_OPEN);
        let mut usage_prefix = head;
        usage_prefix.extend_from_slice(b"\"choices\":[],\"usage\":");
        Self {
            choice_prefix,
            usage_prefix,
            include_usage: opts.include_usage,
            json_tool: opts.json_tool.clone(),
            legacy: opts.legacy_functions,
            started: false,
            blocks: Vec::new(),
            tool_calls: 0,
            function_called: false,
            content_sent: false,
            break_pending: false,
            reasoning: Vec::new(),
        }
    }

    fn message_start(&mut self, out: &mut Vec<u8>) {
        self.role(out);
    }

    fn block_start(&mut self, start: &BlockStart<'_>, out: &mut Vec<u8>) {
        if self.content_sent && start.kind != "text" {
            self.break_pending = true;
        }
        let mut start_input = None;
        let kind = match &*start.kind {
            "text" => {
                if let Some(text) = start.text() {
                    self.content(out, &text);
                }
                Block::Text
            }
            "thinking" => {
                let (text, signature) = start.thinking();
                self.string_delta(out, b"reasoning_content", &text);
                self.reasoning.push(Reasoning::Thinking {
                    chars: text.chars().count(),
                    signature: signature.into_owned(),
                });
                Block::Thinking(self.reasoning.len() - 1)
            }
            "redacted_thinking" => {
                let data = start.redacted_data();
                self.reasoning.push(Reasoning::Redacted {
                    data: data.into_owned(),
                });
                Block::Ignored
            }
            "tool_use" => {
                // `input: {}` is how every streamed call starts; it is sent
                // only if no argument fragment follows.
                start_input = start.input().map(str::to_owned);
                self.tool_start(start, out)
            }
            _ => Block::Ignored,
        };
        self.blocks.push(BlockEntry {
            index: start.index,
            kind,
            sent_args: false,
            start_input,
        });
    }

    fn block_delta(&mut self, index: u64, delta: &Delta<'_>, out: &mut Vec<u8>) {
        let Some(kind) = self.block_mut(index).map(|b| b.kind) else {
            return;
        };
        let args = match (kind, delta) {
            (Block::Text, Delta::Text(text)) => {
                self.content(out, text);
                return;
            }
            (Block::Thinking(i), Delta::Thinking(text)) => {
                if let Some(Reasoning::Thinking { chars, .. }) = self.reasoning.get_mut(i) {
                    *chars += text.chars().count();
                }
                self.string_delta(out, b"reasoning_content", text);
                return;
            }
            (Block::Thinking(i), Delta::Signature(sig)) => {
                if let Some(Reasoning::Thinking { signature, .. }) = self.reasoning.get_mut(i) {
                    signature.push_str(sig);
                }
                return;
            }
            (Block::Tool(_) | Block::JsonTool | Block::Function, Delta::InputJson(part))
                if !part.is_empty() =>
            {
                part
            }
            _ => return,
        };
        self.send_args(kind, args, out);
        if let Some(b) = self.block_mut(index) {
            b.sent_args = true;
        }
    }

    fn block_stop(&mut self, index: u64, out: &mut Vec<u8>) {
        let Some(b) = self.block_mut(index) else {
            return;
        };
        // A call with no argument fragment: its whole input, `{}` at least,
        // so `arguments` always parses.
        if b.sent_args || !matches!(b.kind, Block::Tool(_) | Block::JsonTool | Block::Function) {
            return;
        }
        b.sent_args = true;
        let kind = b.kind;
        let input = b.start_input.take();
        self.send_args(kind, input.as_deref().unwrap_or("{}"), out);
    }

    fn message_stop(&mut self, tracker: &UsageTracker, out: &mut Vec<u8>) {
        let reason = finish_reason(
            tracker.stop_reason.as_deref(),
            self.tool_calls > 0 || self.function_called,
            self.legacy,
        );
        self.open(out);
        match encode_reasoning_signature(&self.reasoning) {
            Some(sig) => {
                out.extend_from_slice(b"{\"reasoning_signature\":");
                write_json_str(out, &sig);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"{}"),
        }
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":\"");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\"}]}\n\n");
        if self.include_usage {
            out.extend_from_slice(&self.usage_prefix);
            write_usage(out, &tracker.usage());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(DONE);
    }

    fn error(&mut self, anthropic_type: &str, message: &str, _: &UsageTracker, out: &mut Vec<u8>) {
        let (kind, code) = openai_error_kind(anthropic_type);
        out.extend_from_slice(b"data: {\"error\":{\"message\":");
        write_json_str(out, message);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"param\":null,\"code\":");
        match code {
            Some(code) => {
                out.push(b'"');
                out.extend_from_slice(code.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}}\n\n");
    }
}

/// `OpenAI` usage: `prompt_tokens` counts every input token, cached or not.
fn write_usage(out: &mut Vec<u8>, u: &FinalUsage) {
    let writes = u.cache_creation_5m + u.cache_creation_1h;
    let prompt = u.input_tokens + writes + u.cache_read_input_tokens;
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{},\"total_tokens\":{},\
         \"prompt_tokens_details\":{{\"cached_tokens\":{},\"cache_write_tokens\":{writes}}}}}",
        u.output_tokens,
        prompt + u.output_tokens,
        u.cache_read_input_tokens,
    );
}

impl Translator<ChatEmitter> {
    /// Client tool calls emitted so far.
    pub fn tool_calls(&self) -> u32 {
        self.emitter().tool_calls()
    }

    /// The reply's reasoning blocks so far.
    pub fn reasoning(&self) -> &[Reasoning] {
        self.emitter().reasoning()
    }
}

/// Translate a whole stream in one go (tests, tools).
pub fn translate_all(opts: &ChatOptions, stream: &[u8]) -> Vec<u8> {
    translate::translate_all::<ChatEmitter>(opts, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Leftover;

    fn opts(include_usage: bool) -> ChatOptions {
        ChatOptions {
            model: "claude-x".into(),
            completion_id: "chatcmpl-1".into(),
            created: 7,
            include_usage,
            ..ChatOptions::default()
        }
    }

    fn ev(name: &str, data: &str) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    #[test]
    fn signature_forms() {
        assert_eq!(encode_reasoning_signature(&[]), None);
        let one = [Reasoning::Thinking {
            chars: 3,
            signature: "c2ln".into(),
        }];
        assert_eq!(encode_reasoning_signature(&one).as_deref(), Some("c2ln"));
        let two = [
            Reasoning::Redacted {
                data: "ZGF0".into(),
            },
            Reasoning::Thinking {
                chars: 12,
                signature: "c2ln".into(),
            },
        ];
        assert_eq!(
            encode_reasoning_signature(&two).as_deref(),
            Some("eth1~r:ZGF0~t12:c2ln")
        );
    }

    #[test]
    fn text_stream() {
        let stream = [
            ev("message_start", r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"cache_read_input_tokens":2,"output_tokens":1}}}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let out = String::from_utf8(translate_all(&opts(true), stream.as_bytes())).unwrap();
        let head = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"claude-x","#;
        let expected = [
            format!("{head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"),
            format!("{head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hi\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"),
            format!("{head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n"),
            format!("{head}\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10,\"prompt_tokens_details\":{{\"cached_tokens\":2,\"cache_write_tokens\":0}}}}}}\n\n"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn parallel_tools_get_their_own_index() {
        let stream = [
            ev("message_start", r#"{"type":"message_start","message":{"id":"m"}}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_a","name":"f","input":{}}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"x\":1}"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_b","name":"g","input":{}}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let out = String::from_utf8(translate_all(&opts(false), stream.as_bytes())).unwrap();
        assert!(out.contains(r#"{"tool_calls":[{"index":0,"id":"toolu_a","type":"function","function":{"name":"f","arguments":""}}]}"#));
        assert!(
            out.contains(r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":1}"}}]}"#)
        );
        assert!(out.contains(r#"{"tool_calls":[{"index":1,"id":"toolu_b","type":"function","function":{"name":"g","arguments":""}}]}"#));
        assert!(out.contains(r#"{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}"#));
        assert!(out.contains(r#""finish_reason":"tool_calls""#));
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn error_event_ends_stream() {
        let stream = [
            ev("message_start", r#"{"type":"message_start","message":{"id":"m"}}"#),
            ev("error", r#"{"type":"error","error":{"details":null,"type":"overloaded_error","message":"Overloaded"} }"#),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let out = String::from_utf8(translate_all(&opts(true), stream.as_bytes())).unwrap();
        assert!(out.ends_with(
            "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\n"
        ));
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn cut_stream_ends_with_error() {
        let stream = ev(
            "message_start",
            r#"{"type":"message_start","message":{"id":"m"}}"#,
        );
        let mut t = ChatTranslator::new(&opts(false));
        let mut out = Vec::new();
        t.feed(stream.as_bytes(), &mut out);
        t.feed(b"event: content_block_start\ndata: {\"ty", &mut out);
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"));
        assert!(t.leftover().is_some_and(Leftover::any));
        let mut again = Vec::new();
        t.finish(&mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn text_after_server_tool_starts_a_paragraph() {
        let stream = [
            ev("message_start", r#"{"type":"message_start","message":{"id":"m"}}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Searching."}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Found"}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":2}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":3,"content_block":{"citations":[],"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":" it."}}"#),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":3}"#),
            ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let out = String::from_utf8(translate_all(&opts(false), stream.as_bytes())).unwrap();
        let contents: Vec<&str> = out
            .split("\"content\":\"")
            .skip(2)
            .map(|s| s.split('"').next().unwrap())
            .collect();
        assert_eq!(contents, ["Searching.", "\\n\\nFound", " it."]);
    }
}
