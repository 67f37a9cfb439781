//! `estimate_tokens` over whole Messages request bodies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value
)]

use ethereal_core::estimate::{image_tokens, text_milli, IMAGE2_MAX_TOKENS};
use ethereal_core::tokens::{image_dimensions, image_tokens_for, IMAGE_MAX_TOKENS};
use ethereal_core::{
    estimate_text_tokens, estimate_tokens, estimate_tokens_for, EstimateError, Generation,
};
use serde_json::json;

const ENGLISH: &str = "The gateway forwards each request to the upstream, watches the stream on its \
way back, and bills what was produced. When a client disconnects early, the tap still knows how many \
tokens were generated, so budgets stay honest. Reservations are made before the call and settled after it.";

fn est(body: &serde_json::Value) -> u64 {
    estimate_tokens(body.to_string().as_bytes()).unwrap()
}

const GEN2: Generation = Generation {
    tokenizer: 2,
    image_tier: 2,
    tool_prompt_auto: 463,
    tool_prompt_any: 419,
    keep_thinking: false,
};

fn est2(body: &serde_json::Value) -> u64 {
    estimate_tokens_for(body.to_string().as_bytes(), GEN2).unwrap()
}

fn user(content: serde_json::Value) -> serde_json::Value {
    json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":content}]})
}

/// Tokens of a piece of text as the request estimate charges it (thousandths, rounded up).
fn text_tokens(s: &str) -> f64 {
    text_milli(s) as f64 / 1000.0
}

fn within(got: u64, want: u64, pct: f64) -> bool {
    (got as f64 / want as f64 - 1.0).abs() * 100.0 <= pct
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    v
}

/// What a request with one image costs besides the image: the request, its message and the
/// image block's framing (a URL image is charged exactly the tier's cap).
fn image_framing(gen: Generation) -> u64 {
    let url = user(json!([{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]));
    let cap = if gen.image_tier >= 2 {
        IMAGE2_MAX_TOKENS
    } else {
        IMAGE_MAX_TOKENS
    };
    estimate_tokens_for(url.to_string().as_bytes(), gen).unwrap() - cap
}

fn image_body(data: &str, media: &str) -> serde_json::Value {
    json!({"messages":[{"role":"user","content":[
        {"type":"image","source":{"type":"base64","media_type":media,"data":data}}]}]})
}

#[test]
fn recorded_english_requests() {
    // Real counts from the fixture corpus (Sonnet 4.5 / Opus 4.6, tokenizer 1).
    let python = "Please explain what Python is and its main use cases. ".repeat(100);
    let got = est(
        &json!({"messages":[{"role":"user","content":[{"type":"text","text": python.trim_end()}]}]}),
    );
    assert!(within(got, 1114, 10.0), "{got} vs 1114");
    assert!(within(est(&user(json!("What is 2+2?"))), 14, 10.0));
    let fox = "The quick brown fox jumps over the lazydog.";
    let got = est(&user(json!([{"type":"text","text": fox}])));
    assert!(got.abs_diff(19) <= 3, "{got} vs 19");
}

#[test]
fn script_classes() {
    // English prose: about a token per common word.
    let prose = text_tokens(ENGLISH);
    let words = ENGLISH.split_whitespace().count() as f64;
    assert!(
        prose > 0.9 * words && prose < 1.5 * words,
        "{prose} for {words} words"
    );
    // CJK: about one token per character; Cyrillic and Greek about half; emoji more than one.
    let zh = "网关在请求到达上游之前估算令牌数量。";
    let n = zh.chars().count() as f64;
    assert!(
        (text_tokens(zh) / n - 1.0).abs() < 0.15,
        "{}",
        text_tokens(zh)
    );
    let ru = "Шлюз оценивает число токенов до отправки запроса";
    let ratio = text_tokens(ru) / ru.chars().count() as f64;
    assert!((0.45..0.65).contains(&ratio), "{ratio}");
    assert!(text_tokens("🙂🙂") > 2.0);
    // Accented Latin joins words: cheaper per character than Cyrillic.
    assert!(text_tokens("crème brûlée à la française") < text_tokens("Шлюз оценивает число"));
    // Mixed scripts are additive.
    assert_eq!(
        text_milli(&format!("{ENGLISH}{zh}")),
        text_milli(ENGLISH) + text_milli(zh)
    );
}

#[test]
fn content_kinds() {
    let code = "fn main() {\n    let xs: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{:?}\", xs);\n}\n";
    let json_text =
        r#"{"id":42,"name":"widget","tags":["a","b"],"price":{"amount":"12.50","currency":"EUR"}}"#;
    let per_char = |s: &str| text_tokens(s) / s.len() as f64;
    // code and JSON split finer than prose
    assert!(
        per_char(code) > per_char(ENGLISH) * 1.4,
        "{} vs {}",
        per_char(code),
        per_char(ENGLISH)
    );
    assert!(per_char(json_text) > per_char(ENGLISH) * 1.4);
    // numbers: digits are short tokens, about one per two digits
    let digits = text_tokens("1234567890");
    assert!((4.0..7.0).contains(&digits), "{digits}");
    // a blank before a digit is a token of its own ("What is 2 + 2?" costs two more than "2+2")
    assert!(text_tokens(" 2") > 2.0 * text_tokens("2"));
    // whitespace runs are not free: about half a token a blank past the first two
    let indent = text_tokens(&format!("x{}y", " ".repeat(100)));
    assert!((40.0..60.0).contains(&indent), "{indent}");
    // a word right after punctuation mostly merges with it
    assert!(text_tokens("\"type") < text_tokens("\" type"));
    // camelCase and ALL CAPS split
    assert!(text_tokens("getUserAccountBalance") > text_tokens("get user account balance") * 0.6);
    assert!(text_tokens("ANTHROPIC_MAGIC_STRING") > text_tokens("anthropic magic string") * 1.5);
    // a long word costs more than a short one
    assert!(text_tokens(" internationalization") > text_tokens(" nation") + 1.0);
}

#[test]
fn newer_tokenizer_is_more_text() {
    // documented as "approximately 30 percent more": the ratio applied to text
    let text = ENGLISH.repeat(40);
    let body = user(json!(text));
    let (one, two) = (est(&body) as f64, est2(&body) as f64);
    assert!((two / one - 1.3).abs() < 0.01, "{one} {two}");
    // framing is not text: a near-empty request barely moves
    let tiny = user(json!("hi"));
    assert!(est2(&tiny) - est(&tiny) <= 1);
}

#[test]
fn system_string_and_blocks() {
    let s = est(&json!({"system": ENGLISH, "messages": []}));
    let b = est(&json!({"system": [{"type":"text","text": ENGLISH}], "messages": []}));
    assert!(b == s, "a system prompt costs its text, string or blocks: {s} {b}");
    assert!(s as f64 > text_tokens(ENGLISH));
}

#[test]
fn messages_add_framing() {
    let one = est(&json!({"messages":[{"role":"user","content":"hi"}]}));
    let two = est(
        &json!({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hi"}]}),
    );
    assert!(two > one && two - one <= 5, "{one} {two}");
    assert_eq!(est(&json!({})), 4);
    // recorded: "What is the capital of France?" alone costs 14 (7 of text, 7 around it)
    assert!(est(&user(json!("What is the capital of France?"))).abs_diff(14) <= 1);
}

#[test]
fn tool_use_system_prompt_by_tool_choice() {
    let base = json!({"messages":[{"role":"user","content":"weather?"}]});
    let tool = json!({
        "name":"get_weather",
        "description":"Get the current weather in a given location",
        "input_schema":{"type":"object","properties":{"location":{"type":"string","description":"City and state"}},"required":["location"]}
    });
    let mut auto = base.clone();
    auto["tools"] = json!([tool.clone()]);
    let definition = est(&auto) - est(&base) - 346;
    assert!(
        (25..=60).contains(&definition),
        "definition costs {definition}"
    );
    let mut forced = auto.clone();
    forced["tool_choice"] = json!({"type":"any"});
    assert_eq!(est(&auto) - est(&forced), 346 - 313);
    // the model's own prompt size
    assert_eq!(est2(&auto) - est2(&forced), 463 - 419);
    let custom = Generation {
        tool_prompt_auto: 500,
        ..Generation::default()
    };
    let with = estimate_tokens_for(auto.to_string().as_bytes(), custom).unwrap();
    assert_eq!(with, est(&auto) + 154);
}

#[test]
fn serial_tool_use_drops_the_parallel_prompt() {
    let tool = json!({"name":"f","description":"d","input_schema":{"type":"object","properties":{}}});
    let mut auto = user(json!("go"));
    auto["tools"] = json!([tool]);
    let mut serial = auto.clone();
    serial["tool_choice"] = json!({"type":"auto","disable_parallel_tool_use":true});
    assert_eq!(est(&auto) - est(&serial), 208);
    // never below nothing
    let tiny = Generation {
        tool_prompt_auto: 100,
        ..Generation::default()
    };
    let without = estimate_tokens_for(user(json!("go")).to_string().as_bytes(), tiny).unwrap();
    let with = estimate_tokens_for(serial.to_string().as_bytes(), tiny).unwrap();
    assert!(with >= without);
}

#[test]
fn citations_add_their_instructions_once() {
    let doc = |cite: bool| {
        json!({"type":"document","title":"facts.txt","citations":{"enabled":cite},
            "source":{"type":"text","media_type":"text/plain","data":"Ruby was created by Matz."}})
    };
    let plain = est(&user(json!([doc(false)])));
    let cited = est(&user(json!([doc(true)])));
    assert_eq!(cited - plain, 540);
    let two = est(&user(json!([doc(true), doc(true)])));
    let two_plain = est(&user(json!([doc(false), doc(false)])));
    assert_eq!(two - two_plain, 540);
    // a search result returned by a tool asks for them too
    let result = |cite: bool| {
        json!({"messages":[
            {"role":"user","content":"who?"},
            {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"kb","input":{"q":"ruby"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[
                {"type":"search_result","source":"https://x","title":"Ruby","citations":{"enabled":cite},
                 "content":[{"type":"text","text":"Matz, 1993."}]}]}]}]})
    };
    assert_eq!(est(&result(true)) - est(&result(false)), 540);
}

#[test]
fn server_tools_and_mcp_servers() {
    let base = json!({"messages":[{"role":"user","content":"news?"}]});
    let mut search = base.clone();
    search["tools"] = json!([{"type":"web_search_20250305","name":"web_search","max_uses":5}]);
    assert_eq!(est(&search) - est(&base), 346 + 1707);
    let mut fetch = base.clone();
    fetch["tools"] = json!([{"type":"web_fetch_20260209","name":"web_fetch"}]);
    assert_eq!(est(&fetch) - est(&base), 346 + 494);
    let mut unknown = base.clone();
    unknown["tools"] = json!([{"type":"browser_toolset_20260801","name":"browser"}]);
    assert_eq!(est(&unknown) - est(&base), 346 + 500);
    let mut mcp = base.clone();
    mcp["mcp_servers"] = json!([{"type":"url","url":"https://a/mcp","name":"a"},{"type":"url","url":"https://b/mcp","name":"b"}]);
    assert_eq!(est(&mcp) - est(&base), 1200);
}

#[test]
fn deferred_tools_count_once_referenced() {
    let deferred = json!({"name":"lookup","description":"Look an order up","defer_loading":true,
        "input_schema":{"type":"object","properties":{"id":{"type":"string"}}}});
    let search = json!({"type":"tool_search_tool_bm25_20251119","name":"tool_search"});
    let first = json!({"messages":[{"role":"user","content":"find it"}],"tools":[search.clone(), deferred.clone()]});
    let without =
        json!({"messages":[{"role":"user","content":"find it"}],"tools":[search.clone()]});
    assert_eq!(est(&first), est(&without));
    let loaded = json!({"messages":[
        {"role":"user","content":"find it"},
        {"role":"assistant","content":[{"type":"server_tool_use","id":"s1","name":"tool_search","input":{"query":"order"}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"s1","content":[{"type":"tool_reference","tool_name":"lookup"}]}]}],
        "tools":[search, deferred]});
    let mut not_loaded = loaded.clone();
    not_loaded["tools"][1]["name"] = json!("other");
    assert!(est(&loaded) > est(&not_loaded) + 10);
}

#[test]
fn tool_use_and_result_blocks() {
    let body = json!({"messages":[
        {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"location":"San Francisco, CA"}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text": ENGLISH}]}]},
    ]});
    // a call and its result cost about 50 tokens of markup besides their content
    let t = est(&body) as f64;
    let e = text_tokens(ENGLISH);
    assert!(t > e + 50.0 && t < e + 90.0, "{t} vs {e}");
}

#[test]
fn thinking_counts_only_in_the_live_tool_turn() {
    let thinking = json!({"type":"thinking","thinking": ENGLISH.repeat(5), "signature":"sig"});
    let earlier = json!({"messages":[
        {"role":"user","content":"q"},
        {"role":"assistant","content":[thinking.clone(), {"type":"text","text":"a"}]},
        {"role":"user","content":"q2"}]});
    let mut stripped = earlier.clone();
    stripped["messages"][1]["content"] = json!([{"type":"text","text":"a"}]);
    assert!(
        est(&earlier) <= est(&stripped) + 1,
        "earlier turns' thinking is not counted"
    );
    let live = json!({"messages":[
        {"role":"user","content":"q"},
        {"role":"assistant","content":[thinking, {"type":"tool_use","id":"t","name":"f","input":{}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"ok"}]}]});
    let mut live_stripped = live.clone();
    live_stripped["messages"][1]["content"] =
        json!([{"type":"tool_use","id":"t","name":"f","input":{}}]);
    assert!(est(&live) as f64 > est(&live_stripped) as f64 + 4.0 * text_tokens(ENGLISH));
    // models that keep earlier turns' thinking count it
    let keeps = Generation {
        keep_thinking: true,
        ..Generation::default()
    };
    let kept = estimate_tokens_for(earlier.to_string().as_bytes(), keeps).unwrap();
    assert!(kept as f64 > est(&stripped) as f64 + 4.0 * text_tokens(ENGLISH));
    // thinking enabled adds instructions
    let mut on = user(json!("q"));
    on["thinking"] = json!({"type":"enabled","budget_tokens":2048});
    assert!((25..=30).contains(&(est(&on) - est(&user(json!("q"))))));
}

#[test]
fn compaction_drops_what_came_before() {
    let long = ENGLISH.repeat(50);
    let body = json!({"messages":[
        {"role":"user","content":long},
        {"role":"assistant","content":[{"type":"compaction","content":"Summary: they talked."},{"type":"text","text":"ok"}]},
        {"role":"user","content":"and then?"}]});
    let t = est(&body);
    assert!(t < 150, "{t}");
}

#[test]
fn documents() {
    let text_doc = est(&user(json!([
        {"type":"document","source":{"type":"text","media_type":"text/plain","data": ENGLISH}}])));
    assert!(text_doc as f64 >= text_tokens(ENGLISH) + 58.0);
    let pdf = b64(b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R 3 0 R] >>\n2 0 obj << /Type /Page >>\n3 0 obj << /Type/Page >>\n");
    let body = user(
        json!([{"type":"document","source":{"type":"base64","media_type":"application/pdf","data": pdf}}]),
    );
    let framing = est(&user(json!([]))) + 58;
    assert_eq!(est(&body), framing + 2 * 2608);
    assert_eq!(est2(&body), framing + 2 * 3390);
    // a document by URL is not in the request: one page
    let remote = user(
        json!([{"type":"document","source":{"type":"url","url":"https://example.com/a.pdf"}}]),
    );
    assert_eq!(est(&remote), framing + 2608);
}

#[test]
fn images_tier_one_by_pixel_count() {
    let framing = image_framing(Generation::default());
    let t = est(&image_body(&b64(&png(1000, 1000)), "image/png"));
    assert_eq!(t - framing, 1334); // 1,000,000 / 750
    let small = est(&image_body(&b64(&png(200, 100)), "image/png"));
    assert_eq!(small - framing, 27);
    let huge = est(&image_body(&b64(&png(8000, 6000)), "image/png"));
    assert!(
        huge - framing <= IMAGE_MAX_TOKENS && huge - framing >= 1550,
        "{huge}"
    );
}

#[test]
fn images_tier_two_by_patches() {
    // ⌈w/28⌉ × ⌈h/28⌉ up to 2,576 px on the long edge, at most 4,784
    assert_eq!(image_tokens(2, 1000, 1000), 36 * 36);
    assert_eq!(image_tokens(2, 200, 100), 8 * 4);
    assert_eq!(image_tokens(2, 28, 28), 1);
    for (w, h) in [(2576, 2576), (8000, 6000), (2576, 1449)] {
        let t = image_tokens(2, w, h);
        assert!(
            t <= IMAGE2_MAX_TOKENS && t as f64 >= 0.95 * IMAGE2_MAX_TOKENS as f64,
            "{w}x{h}: {t}"
        );
    }
    assert_eq!(image_tokens(2, 1568, 1000), 56 * 36);
    assert_eq!(image_tokens(2, 4000, 1000), 92 * 23); // 2576 × 644 after resizing
    assert_eq!(image_tokens(1, 1000, 1000), image_tokens_for(1000, 1000));
    let framing = image_framing(GEN2);
    let t = est2(&image_body(&b64(&png(1000, 1000)), "image/png"));
    assert_eq!(t - framing, 1296);
}

#[test]
fn gif_webp_jpeg_headers() {
    let gif = b"GIF89a\x40\x01\xF0\x00\x00\x00\x00";
    assert_eq!(image_dimensions(gif), Some((320, 240)));
    // VP8X: 24-bit (w-1), (h-1) little-endian at 24 and 27.
    let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0A\0\0\0\0\0\0\0".to_vec();
    webp.extend_from_slice(&[0x3F, 0x01, 0x00, 0xEF, 0x00, 0x00]);
    assert_eq!(image_dimensions(&webp), Some((320, 240)));
    // JPEG: SOI, an APP0 segment, then SOF0 with height 480, width 640.
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
    jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0xE0, 0x02, 0x80, 0x03]);
    assert_eq!(image_dimensions(&jpeg), Some((640, 480)));
    let framing = image_framing(Generation::default());
    let t = est(&image_body(&b64(&jpeg), "image/jpeg"));
    assert_eq!(t - framing, image_tokens_for(640, 480));
}

#[test]
fn unknown_images_cost_the_tier_cap() {
    // the image block's own framing: under 3 tokens
    let framing = est(&user(json!([])));
    let url = user(json!([{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]));
    assert!((1..=3).contains(&(est(&url) - framing - IMAGE_MAX_TOKENS)));
    assert!((1..=3).contains(&(est2(&url) - framing - IMAGE2_MAX_TOKENS)));
    assert_eq!(
        est(&image_body("bm90IGFuIGltYWdl", "image/png")),
        est(&url),
        "an image whose size cannot be read costs the cap"
    );
}

#[test]
fn escaped_json_text() {
    let raw = br#"{"messages":[{"role":"user","content":"caf\u00e9 \u65e5\u672c"}]}"#;
    assert_eq!(
        estimate_tokens(raw).unwrap(),
        est(&json!({"messages":[{"role":"user","content":"café 日本"}]}))
    );
    assert!(estimate_text_tokens("café 日本") > 0);
}

#[test]
fn invalid_bodies() {
    assert!(matches!(
        estimate_tokens(b"not json"),
        Err(EstimateError::InvalidJson(_))
    ));
    assert!(matches!(
        estimate_tokens(b"\"str\""),
        Err(EstimateError::NotAnObject)
    ));
    assert!(matches!(
        estimate_tokens(b""),
        Err(EstimateError::InvalidJson(_))
    ));
}
