//! Input-token estimate of a whole Messages request, per model generation.
//!
//! Two parts:
//! - **text**: a one-pass, allocation-free scan shaped like a BPE pre-tokenizer. It
//!   charges each character by its class and the class before it: a word start (after a
//!   blank, after punctuation, after a digit), a letter deep in a long word, a camelCase
//!   hump, ALL CAPS, a digit (digits are short tokens; a blank before one is a token of
//!   its own), a run of blanks (indentation, alignment), a newline (cheaper right after
//!   punctuation), punctuation (a run merges), a character of another script. The
//!   weights were fitted on the recorded requests whose real counts are known
//!   (`fixtures/`, calibration half, model and hyperparameters chosen by cross-validation
//!   within that half; see `scripts/estimator_accuracy.py`), in thousandths of a token;
//! - **what Anthropic adds**: the tool-use system prompt (by `tool_choice`, per model,
//!   without its parallel-use part when `disable_parallel_tool_use`), the framing of the
//!   request, messages, tool definitions and `tool_use` / `tool_result` blocks, the text
//!   server tools and MCP servers bring, thinking, citations and structured-output
//!   instructions, images by each generation's formula, PDF pages. Thinking of earlier
//!   turns is not counted (except on the models that keep it), and everything before a
//!   `compaction` block is dropped, as upstream does.
//!
//! The newer tokenizer (generation 2) is documented as "approximately 30 percent more
//! tokens" for the same text, and only that ratio is documented: text weights are multiplied
//! by 1.3 there; fixed framing is not. (On the few recorded requests of such models, Fable 5,
//! Opus 5, Sonnet 5, Opus 4.7 / 4.8, the text ran nearer 1.15×: the documented ratio errs
//! high, which is the safe side for admission.)

use serde_json::{Map, Value};

use crate::tokens::{base64_decode_prefix, image_dimensions_b64};

/// Thousandths of a token.
const MILLI: u64 = 1000;

/// The model an estimate is for: its tokenizer generation, image tier and the
/// size of the tool-use system prompt Anthropic adds when `tools` is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// 1: earlier models; 2: the newer tokenizer (its text 1.3× the tokens, as documented).
    pub tokenizer: u8,
    /// 1: up to 1,568 px, about w×h/750, at most ≈1,600 tokens; 2: up to
    /// 2,576 px at ⌈w/28⌉×⌈h/28⌉, at most 4,784.
    pub image_tier: u8,
    /// Tool-use system prompt with `tool_choice` auto or none.
    pub tool_prompt_auto: u32,
    /// Tool-use system prompt with `tool_choice` any or tool.
    pub tool_prompt_any: u32,
    /// The model keeps every earlier turn's thinking in context (Opus 4.5+, Sonnet 4.6+
    /// and the newer lines); otherwise only the thinking of a tool-use turn in progress counts.
    pub keep_thinking: bool,
}

/// Anthropic's documented tool-use system prompt for the Claude 4 models:
/// 346 tokens with `tool_choice` auto/none, 313 with any/tool.
pub const TOOL_PROMPT_AUTO: u32 = 346;
/// See [`TOOL_PROMPT_AUTO`].
pub const TOOL_PROMPT_ANY: u32 = 313;

impl Default for Generation {
    fn default() -> Self {
        Self {
            tokenizer: 1,
            image_tier: 1,
            tool_prompt_auto: TOOL_PROMPT_AUTO,
            tool_prompt_any: TOOL_PROMPT_ANY,
            keep_thinking: false,
        }
    }
}

impl Generation {
    /// Text weight multiplier as a fraction (numerator, denominator).
    fn text_ratio(self) -> (u64, u64) {
        if self.tokenizer >= 2 {
            (13, 10)
        } else {
            (1, 1)
        }
    }
}

// -- text ------------------------------------------------------------------------------------

/// Character classes of the scan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Blank,
    Newline,
    Punct,
    Control,
    Other,
}

const fn ascii_classes() -> [Class; 128] {
    let mut t = [Class::Punct; 128];
    let mut b = 0u8;
    while b < 128 {
        t[b as usize] = if b.is_ascii_lowercase() {
            Class::Lower
        } else if b.is_ascii_uppercase() {
            Class::Upper
        } else if b.is_ascii_digit() {
            Class::Digit
        } else if b == b' ' || b == b'\t' || b == b'\r' {
            Class::Blank
        } else if b == b'\n' {
            Class::Newline
        } else if b.is_ascii_control() {
            Class::Control
        } else {
            Class::Punct
        };
        b += 1;
    }
    t
}

const CLASSES: [Class; 128] = ascii_classes();

// Fitted weights, in thousandths of a token (calibration half of the recorded corpus).
/// A letter starting a word after a blank, a newline or the start (" word" is one token).
const W_WORD: u64 = 869;
/// A word right after punctuation mostly merges with it (`"type`, `(word`).
const W_WORD_AFTER_PUNCT: u64 = 333;
/// A word right after a digit (`2nd`, `7B`) or a character of another script.
const W_WORD_AFTER_OTHER: u64 = 300;
/// Letters 2–6 of a word: common words are one token.
const W_LETTER: u64 = 52;
/// Letters from the 7th on: long and rare words split.
const W_LETTER_LONG: u64 = 100;
/// An upper-case letter after an upper-case letter (ALL CAPS splits finely).
const W_UPPER_RUN: u64 = 413;
/// A lower→upper hump (camelCase starts a new piece).
const W_CAMEL: u64 = 300;
/// A digit starting a number after a letter, punctuation or a newline.
const W_DIGIT_START: u64 = 662;
/// A digit after a blank: the blank is a token of its own, then the digit.
const W_BLANK_DIGIT: u64 = 2_200;
/// Each further digit: numbers split into short digit groups.
const W_DIGIT: u64 = 529;
/// The second blank of a run (indentation, alignment: the run becomes a token).
const W_BLANK_RUN_START: u64 = 1_200;
/// Each further blank of a run.
const W_BLANK_RUN: u64 = 482;
const W_NEWLINE: u64 = 820;
const W_NEWLINE_AFTER_PUNCT: u64 = 970;
const W_NEWLINE_AFTER_BLANK: u64 = 800;
/// A newline after a newline joins it.
const W_NEWLINE_RUN: u64 = 0;
const W_PUNCT: u64 = 1_134;
/// Punctuation after a blank (" (", " =").
const W_BLANK_PUNCT: u64 = 680;
/// Punctuation after punctuation merges (`":"`, `},{`, `...`).
const W_PUNCT_RUN: u64 = 409;
const W_CONTROL: u64 = 1_000;

/// Weight of one non-ASCII character, by script (the recorded corpus holds almost no
/// other scripts: these follow tokenizer behaviour: accented Latin mostly joins words,
/// CJK is about a token per character, emoji and rare planes more).
fn other_weight(c: char) -> u64 {
    match u32::from(c) {
        0x80..=0x036F | 0x1E00..=0x1EFF => 400,
        0x0370..=0x07FF => 550,
        0x2000..=0x2BFF => 800,
        0x2E80..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF => {
            1000
        }
        0x0800..=0xFFFF => 700,
        _ => 1300,
    }
}

/// Text weight in thousandths of a token for the earlier tokenizer.
pub fn text_milli(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut total = 0u64;
    let mut prev = Class::Newline;
    let mut run = 0u32; // letters in the current word
    let mut blanks = 0u32; // blanks in the current run
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let class = if b < 0x80 {
            i += 1;
            CLASSES[usize::from(b)]
        } else {
            // `text` is valid UTF-8 and `i` is always on a char boundary here.
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            i += c.len_utf8();
            total += other_weight(c);
            prev = Class::Other;
            blanks = 0;
            continue;
        };
        total += match (prev, class) {
            (Class::Lower, Class::Upper) => {
                run = 1;
                W_CAMEL
            }
            (Class::Upper, Class::Upper) => {
                run += 1;
                W_UPPER_RUN
            }
            (Class::Lower | Class::Upper, Class::Lower) => {
                run += 1;
                if run > 6 {
                    W_LETTER_LONG
                } else {
                    W_LETTER
                }
            }
            (_, Class::Lower | Class::Upper) => {
                run = 1;
                match prev {
                    Class::Punct => W_WORD_AFTER_PUNCT,
                    Class::Digit | Class::Other => W_WORD_AFTER_OTHER,
                    _ => W_WORD,
                }
            }
            (Class::Digit, Class::Digit) => W_DIGIT,
            (Class::Blank, Class::Digit) => W_BLANK_DIGIT,
            (_, Class::Digit) => W_DIGIT_START,
            (Class::Blank, Class::Blank) => {
                blanks += 1;
                if blanks == 2 {
                    W_BLANK_RUN_START
                } else {
                    W_BLANK_RUN
                }
            }
            (_, Class::Blank) => {
                blanks = 1;
                0
            }
            (Class::Newline, Class::Newline) => W_NEWLINE_RUN,
            (Class::Punct, Class::Newline) => W_NEWLINE_AFTER_PUNCT,
            (Class::Blank, Class::Newline) => W_NEWLINE_AFTER_BLANK,
            (_, Class::Newline) => W_NEWLINE,
            (Class::Punct, Class::Punct) => W_PUNCT_RUN,
            (Class::Blank, Class::Punct) => W_BLANK_PUNCT,
            (_, Class::Punct) => W_PUNCT,
            (_, Class::Control | Class::Other) => W_CONTROL,
        };
        prev = class;
    }
    total
}

// -- request framing (thousandths of a token, fitted) ----------------------------------------

/// The request's own framing, with one turn: a system prompt costs only its text.
const F_REQUEST: u64 = 3_249;
const F_MESSAGE: u64 = 3_672;
/// A `tool_use` block and a `tool_result` block each (rendered with their markup upstream:
/// a call and its result cost about 50 tokens besides their content).
const F_TOOL_USE: u64 = 25_411;
const F_TOOL_RESULT: u64 = 25_411;
/// Any other block (server tool results, search results…): its fields as JSON plus this.
const F_OTHER_BLOCK: u64 = 11_084;
/// An image block's framing, besides the image's own tokens.
const F_IMAGE: u64 = 2_699;
const F_JSON_OBJECT: u64 = 373;
const F_JSON_KEY: u64 = 4_000;
const F_JSON_STRING: u64 = 382;
const F_JSON_ARRAY: u64 = 4_000;
const F_JSON_ITEM: u64 = 530;
const F_JSON_LITERAL: u64 = 2_829;
/// `thinking: {type: enabled}` adds instructions (`adaptive` adds nothing measurable).
const F_THINKING_ENABLED: u64 = 28_866;
/// `output_config.format`: the structured-output instructions (the schema is charged as JSON).
const F_OUTPUT_FORMAT: u64 = 110_227;
const F_TASK_BUDGET: u64 = 37_886;
/// A document block's wrapper (source, title and citation framing): two recorded text
/// documents cost 36 and 81 tokens more than their text.
const F_DOCUMENT: u64 = 58_000;
/// The instructions that come with a compaction block.
const F_COMPACTION: u64 = 94_089;
/// The citation instructions, once per request that enables citations on a document or
/// a search result.
const CITATIONS: u64 = 540;
/// What `tool_choice.disable_parallel_tool_use` takes off the tool-use system prompt
/// (its paragraph on parallel calls).
const PARALLEL_PROMPT: u64 = 208;

/// Tokens an Anthropic-defined (server or client) tool adds by its `type`, without
/// a date suffix. Fitted on the recorded requests (`message_start` or first iteration
/// counts) except bash and text editor, Anthropic's documented figures.
const SERVER_TOOLS: &[(&str, u64)] = &[
    ("web_search", 1_707),
    ("web_fetch", 494),
    ("code_execution", 1_740),
    ("memory", 1_068),
    ("tool_search_tool_bm25", 216),
    ("tool_search_tool_regex", 211),
    ("advisor", 643),
    ("bash", 245),
    ("text_editor", 700),
    ("computer", 1_295),
];
/// A server tool this table does not know.
const SERVER_TOOL_OTHER: u64 = 500;
/// An MCP server's tool definitions are fetched upstream and not in the request:
/// a fixed allowance per server (no recorded request counts one by itself).
const MCP_SERVER: u64 = 600;

/// Tokens for an image of unknown size: the tier's cap.
fn image_cap(tier: u8) -> u64 {
    if tier >= 2 {
        IMAGE2_MAX_TOKENS
    } else {
        crate::tokens::IMAGE_MAX_TOKENS
    }
}

/// Tier 2: long edge up to 2,576 px, ⌈w/28⌉×⌈h/28⌉ visual tokens, at most 4,784.
pub const IMAGE2_MAX_TOKENS: u64 = 4784;
const IMAGE2_MAX_EDGE: f64 = 2576.0;
const IMAGE2_PATCH: f64 = 28.0;

/// Tokens for a `width` × `height` image on a model of image tier `tier`.
pub fn image_tokens(tier: u8, width: u32, height: u32) -> u64 {
    if tier < 2 {
        return crate::tokens::image_tokens_for(width, height);
    }
    if width == 0 || height == 0 {
        return IMAGE2_MAX_TOKENS;
    }
    let (mut w, mut h) = (f64::from(width), f64::from(height));
    let long = w.max(h);
    if long > IMAGE2_MAX_EDGE {
        let s = IMAGE2_MAX_EDGE / long;
        w = (w * s).round().max(1.0);
        h = (h * s).round().max(1.0);
    }
    let patches = |w: f64, h: f64| (w / IMAGE2_PATCH).ceil() * (h / IMAGE2_PATCH).ceil();
    #[allow(clippy::cast_precision_loss)]
    let cap = IMAGE2_MAX_TOKENS as f64;
    if patches(w, h) > cap {
        // scale down until the patch grid fits the cap
        let mut s = (cap / patches(w, h)).sqrt();
        while s > 0.0 && patches((w * s).floor().max(1.0), (h * s).floor().max(1.0)) > cap {
            s *= 0.99;
        }
        w = (w * s).floor().max(1.0);
        h = (h * s).floor().max(1.0);
    }
    // Bounded by the cap above, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let tokens = patches(w, h) as u64;
    tokens.clamp(1, IMAGE2_MAX_TOKENS)
}

/// A PDF page: its text plus an image of the page. Anthropic quotes 1,500–3,000
/// tokens a page; the recorded one-page PDFs cost 1,540 (a sparse page) and 2,605 (a page
/// of text) on tier-1 models, 2,608 fitted. Tier 2 renders pages larger: the documented
/// 1.3 ratio is applied.
fn pdf_page_tokens(tier: u8) -> u64 {
    if tier >= 2 {
        3_390
    } else {
        2_608
    }
}
/// Rough compressed PDF bytes per page when page objects can't be counted.
const PDF_BYTES_PER_PAGE: usize = 60_000;
/// A document by URL or file id is not in the request: one page assumed.
const UNSEEN_DOCUMENT_PAGES: u64 = 1;

/// Running totals: text (scaled by the tokenizer) and fixed framing, in thousandths.
#[derive(Default)]
struct Cost {
    text: u64,
    fixed: u64,
    /// A document or search result asks for citations.
    citations: bool,
}

impl Cost {
    fn text(&mut self, s: &str) {
        self.text += text_milli(s);
    }
    fn tokens(&mut self, n: u64) {
        self.fixed += n * MILLI;
    }
}

/// Estimated input tokens of a parsed Messages request for the model `gen` describes.
pub fn estimate_request(req: &Map<String, Value>, gen: Generation) -> u64 {
    let mut cost = Cost::default();
    cost.fixed += F_REQUEST;
    if let Some(system) = req.get("system") {
        content(system, &mut cost, false, gen);
    }
    let empty = Vec::new();
    let messages = match req.get("messages") {
        Some(Value::Array(m)) => m,
        _ => &empty,
    };
    let (start_message, start_block) = compaction_start(messages);
    if start_message.is_some() {
        cost.fixed += F_COMPACTION;
    }
    let (first, skip) = (start_message.unwrap_or(0), start_block);
    let live = live_turn(messages);
    for (i, message) in messages.iter().enumerate().skip(first) {
        cost.fixed += F_MESSAGE;
        let Some(body) = message.get("content") else {
            continue;
        };
        match body {
            Value::Array(blocks) if i == first && skip > 0 => {
                blocks_cost(
                    &blocks[skip.min(blocks.len())..],
                    &mut cost,
                    live == Some(i),
                    gen,
                );
            }
            other => content(other, &mut cost, gen.keep_thinking || live == Some(i), gen),
        }
    }
    tools_cost(req, messages, &mut cost, gen);
    if req
        .get("thinking")
        .is_some_and(|t| str_field(t, "type") == Some("enabled"))
    {
        cost.fixed += F_THINKING_ENABLED;
    }
    if cost.citations {
        cost.tokens(CITATIONS);
    }
    if let Some(config) = req.get("output_config") {
        if let Some(format) = config.get("format").filter(|f| f.is_object()) {
            cost.fixed += F_OUTPUT_FORMAT;
            if let Some(schema) = format.get("schema") {
                json(schema, &mut cost);
            }
        }
        if config.get("task_budget").is_some_and(|b| !b.is_null()) {
            cost.fixed += F_TASK_BUDGET;
        }
    }
    if let Some(Value::Array(servers)) = req.get("mcp_servers") {
        cost.tokens(MCP_SERVER * servers.len() as u64);
    }
    let (num, den) = gen.text_ratio();
    (cost.text * num / den + cost.fixed).div_ceil(MILLI)
}

/// The last `compaction` block: upstream drops everything before it.
fn compaction_start(messages: &[Value]) -> (Option<usize>, usize) {
    let mut at = (None, 0);
    for (i, m) in messages.iter().enumerate() {
        if let Some(Value::Array(blocks)) = m.get("content") {
            for (j, b) in blocks.iter().enumerate() {
                if str_field(b, "type") == Some("compaction") {
                    at = (Some(i), j);
                }
            }
        }
    }
    at
}

/// The assistant turn whose thinking still counts: the one a trailing user turn
/// of tool results answers (a tool-use loop in progress). Thinking of earlier
/// turns is stripped upstream and not counted.
fn live_turn(messages: &[Value]) -> Option<usize> {
    let n = messages.len();
    if n < 2 || str_field(&messages[n - 2], "role") != Some("assistant") {
        return None;
    }
    let Some(Value::Array(last)) = messages[n - 1].get("content") else {
        return None;
    };
    last.iter()
        .any(|b| str_field(b, "type") == Some("tool_result"))
        .then_some(n - 2)
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// Message or system content: a string or a list of blocks.
fn content(body: &Value, cost: &mut Cost, live: bool, gen: Generation) {
    match body {
        Value::String(s) => cost.text(s),
        Value::Array(blocks) => blocks_cost(blocks, cost, live, gen),
        Value::Null => {}
        other => json(other, cost),
    }
}

fn blocks_cost(blocks: &[Value], cost: &mut Cost, live: bool, gen: Generation) {
    for block in blocks {
        block_cost(block, cost, live, gen);
    }
}

/// The block asks for citations (`citations: {enabled: true}`).
fn cites(obj: &Map<String, Value>) -> bool {
    obj.get("citations")
        .and_then(|c| c.get("enabled"))
        .and_then(Value::as_bool)
        == Some(true)
}

fn block_cost(block: &Value, cost: &mut Cost, live: bool, gen: Generation) {
    let Value::Object(obj) = block else {
        content(block, cost, live, gen);
        return;
    };
    let field = |key: &str| obj.get(key).and_then(Value::as_str).unwrap_or("");
    match field("type") {
        "text" => cost.text(field("text")),
        "thinking" => {
            if live {
                cost.text(field("thinking"));
            }
        }
        // Opaque redacted thinking: its cost is not knowable, and earlier turns' are not
        // counted. A tool reference expands to a deferred tool's definition, charged with
        // the tools.
        "redacted_thinking" | "tool_reference" => {}
        "compaction" => cost.text(field("content")),
        "image" => {
            cost.fixed += F_IMAGE;
            cost.tokens(image_block(obj.get("source"), gen.image_tier));
        }
        "document" => {
            cost.fixed += F_DOCUMENT;
            cost.citations |= cites(obj);
            cost.text(field("title"));
            cost.text(field("context"));
            document_cost(obj.get("source"), cost, gen);
        }
        "tool_use" | "server_tool_use" | "mcp_tool_use" => {
            cost.fixed += F_TOOL_USE;
            cost.text(field("name"));
            if let Some(input) = obj.get("input") {
                json(input, cost);
            }
        }
        "tool_result" | "mcp_tool_result" => {
            cost.fixed += F_TOOL_RESULT;
            if let Some(body) = obj.get("content") {
                content(body, cost, false, gen);
            }
        }
        "search_result" => {
            cost.citations |= cites(obj);
            cost.text(field("title"));
            cost.text(field("source"));
            if let Some(body) = obj.get("content") {
                content(body, cost, false, gen);
            }
        }
        // Server tool results and anything newer: their fields as JSON.
        _ => {
            cost.fixed += F_OTHER_BLOCK + F_JSON_OBJECT;
            for (key, value) in obj {
                if key != "type" && key != "cache_control" {
                    cost.fixed += F_JSON_KEY;
                    cost.text(key);
                    json(value, cost);
                }
            }
        }
    }
}

/// Tool definitions and the tool-use system prompt. Tools marked `defer_loading`
/// count only once a `tool_reference` block has loaded them.
fn tools_cost(req: &Map<String, Value>, messages: &[Value], cost: &mut Cost, gen: Generation) {
    let Some(Value::Array(tools)) = req.get("tools") else {
        return;
    };
    if tools.is_empty() {
        return;
    }
    let choice = req.get("tool_choice");
    let forced = matches!(
        choice.and_then(|c| str_field(c, "type")),
        Some("any" | "tool")
    );
    let prompt = u64::from(if forced {
        gen.tool_prompt_any
    } else {
        gen.tool_prompt_auto
    });
    let serial = choice
        .and_then(|c| c.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        == Some(true);
    cost.tokens(if serial {
        prompt.saturating_sub(PARALLEL_PROMPT)
    } else {
        prompt
    });
    // one walk of the conversation for the names tool_reference blocks load, only when some
    // tool is deferred (borrowed names: no copy of the text)
    let deferred = tools
        .iter()
        .any(|t| t.get("defer_loading").and_then(Value::as_bool) == Some(true));
    let mut loaded: Vec<&str> = Vec::new();
    if deferred {
        for m in messages {
            if let Some(c) = m.get("content") {
                references(c, &mut loaded);
            }
        }
        loaded.sort_unstable();
    }
    for tool in tools {
        if tool.get("defer_loading").and_then(Value::as_bool) == Some(true) {
            let name = str_field(tool, "name").unwrap_or("");
            if loaded.binary_search(&name).is_err() {
                continue;
            }
        }
        match str_field(tool, "type") {
            None | Some("custom") => {
                cost.text(str_field(tool, "name").unwrap_or(""));
                cost.text(str_field(tool, "description").unwrap_or(""));
                if let Some(schema) = tool.get("input_schema") {
                    json(schema, cost);
                }
            }
            Some(kind) => cost.tokens(server_tool_tokens(kind)),
        }
    }
}

fn server_tool_tokens(kind: &str) -> u64 {
    // strip a `_YYYYMMDD` version suffix
    let base = match kind.rsplit_once('_') {
        Some((head, tail)) if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => kind,
    };
    SERVER_TOOLS
        .iter()
        .find(|(name, _)| base == *name || base.starts_with(name))
        .map_or(SERVER_TOOL_OTHER, |(_, t)| *t)
}

/// The tool names `tool_reference` blocks in `content` (and in the content of the blocks
/// it holds, such as tool results) load.
fn references<'v>(content: &'v Value, out: &mut Vec<&'v str>) {
    match content {
        Value::Array(items) => {
            for item in items {
                references(item, out);
            }
        }
        Value::Object(obj) => {
            if obj.get("type").and_then(Value::as_str) == Some("tool_reference") {
                if let Some(name) = obj.get("tool_name").and_then(Value::as_str) {
                    out.push(name);
                }
            } else if let Some(inner) = obj.get("content") {
                references(inner, out);
            }
        }
        _ => {}
    }
}

/// A JSON value as the upstream renders it: structure plus the text of keys and strings.
fn json(v: &Value, cost: &mut Cost) {
    match v {
        Value::Object(obj) => {
            cost.fixed += F_JSON_OBJECT;
            for (key, value) in obj {
                cost.fixed += F_JSON_KEY;
                cost.text(key);
                json(value, cost);
            }
        }
        Value::Array(items) => {
            cost.fixed += F_JSON_ARRAY + F_JSON_ITEM * items.len() as u64;
            for item in items {
                json(item, cost);
            }
        }
        Value::String(s) => {
            cost.fixed += F_JSON_STRING;
            cost.text(s);
        }
        Value::Bool(_) | Value::Null => cost.fixed += F_JSON_LITERAL,
        Value::Number(n) => cost.text += number_milli(n),
    }
}

/// A number's digits, without formatting it.
fn number_milli(n: &serde_json::Number) -> u64 {
    let digits = |mut x: u64| {
        let mut d = 1;
        while x >= 10 {
            x /= 10;
            d += 1;
        }
        d
    };
    if let Some(u) = n.as_u64() {
        W_DIGIT_START + W_DIGIT * (digits(u) - 1)
    } else if let Some(i) = n.as_i64() {
        W_PUNCT + W_DIGIT_START + W_DIGIT * (digits(i.unsigned_abs()) - 1)
    } else {
        // a float: a digit, the point, a few decimals
        W_DIGIT_START + W_PUNCT + 3 * W_DIGIT
    }
}

fn image_block(source: Option<&Value>, tier: u8) -> u64 {
    let Some(source) = source else {
        return image_cap(tier);
    };
    if str_field(source, "type") != Some("base64") {
        // URL or file: the image is not in the request; its size is unknown
        return image_cap(tier);
    }
    let data = str_field(source, "data").unwrap_or("");
    image_dimensions_b64(data).map_or(image_cap(tier), |(w, h)| image_tokens(tier, w, h))
}

fn document_cost(source: Option<&Value>, cost: &mut Cost, gen: Generation) {
    let Some(source) = source else { return };
    match str_field(source, "type").unwrap_or("") {
        "text" => cost.text(str_field(source, "data").unwrap_or("")),
        "content" => {
            if let Some(body) = source.get("content") {
                content(body, cost, false, gen);
            }
        }
        "base64" => {
            let data = str_field(source, "data").unwrap_or("");
            cost.tokens(pdf_pages(data) * pdf_page_tokens(gen.image_tier));
        }
        _ => cost.tokens(UNSEEN_DOCUMENT_PAGES * pdf_page_tokens(gen.image_tier)),
    }
}

/// Page count of a base64 PDF: count `/Type /Page` objects, falling back to
/// size when pages hide inside compressed object streams.
fn pdf_pages(b64: &str) -> u64 {
    let pdf = base64_decode_prefix(b64, usize::MAX);
    let mut pages = 0u64;
    for needle in [&b"/Type /Page"[..], &b"/Type/Page"[..]] {
        for pos in memchr::memmem::find_iter(&pdf, needle) {
            if pdf.get(pos + needle.len()) != Some(&b's') {
                pages += 1;
            }
        }
    }
    if pages == 0 {
        pages = (pdf.len() / PDF_BYTES_PER_PAGE + 1) as u64;
    }
    pages
}
