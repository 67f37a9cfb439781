//! `estimate_tokens` over whole Messages request bodies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use ethereal_core::tokens::{image_dimensions, image_tokens_for, IMAGE_MAX_TOKENS};
use ethereal_core::{estimate_text_tokens, estimate_tokens, EstimateError};
use serde_json::json;

const ENGLISH: &str = "The gateway forwards each request to the upstream, watches the stream on its \
way back, and bills what was produced. When a client disconnects early, the tap still knows how many \
tokens were generated, so budgets stay honest. Reservations are made before the call and settled after it.";

fn est(body: &serde_json::Value) -> u64 {
    estimate_tokens(body.to_string().as_bytes()).unwrap()
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

fn image_body(data: &str, media: &str) -> serde_json::Value {
    json!({"messages":[{"role":"user","content":[
        {"type":"image","source":{"type":"base64","media_type":media,"data":data}}]}]})
}

#[test]
fn english_is_about_chars_over_four() {
    let text = ENGLISH.repeat(20);
    let body = json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":text}]});
    let got = est(&body) as f64;
    let want = text.chars().count() as f64 / 4.0;
    assert!(
        (got / want - 1.0).abs() < 0.15,
        "got {got}, chars/4 = {want}"
    );
    let text_only = estimate_text_tokens(&text) as f64;
    assert!(
        (text_only / want - 1.0).abs() < 0.05,
        "text {text_only} vs {want}"
    );
}

#[test]
fn cjk_costs_more_per_char() {
    let zh = "网关在请求到达上游之前估算令牌数量。".repeat(10);
    let n = zh.chars().count() as u64;
    let t = estimate_text_tokens(&zh);
    assert!(t >= n * 9 / 10 && t <= n * 11 / 10, "{t} vs {n} chars");
    assert!(estimate_text_tokens("Привет, как дела?") > estimate_text_tokens("Hello, how are you"));
}

#[test]
fn digits_and_punctuation_are_heavier() {
    assert!(estimate_text_tokens("1234567890123456") > estimate_text_tokens("abcdefghijklmnop"));
    assert!(estimate_text_tokens("{}[](),;:{}[](),") > estimate_text_tokens("abcdefghijklmnop"));
}

#[test]
fn system_string_and_blocks_agree() {
    let s = est(&json!({"system": ENGLISH, "messages": []}));
    let b = est(&json!({"system": [{"type":"text","text": ENGLISH}], "messages": []}));
    assert_eq!(s, b);
    assert!(s > estimate_text_tokens(ENGLISH));
}

#[test]
fn messages_add_overhead_and_content() {
    let one = est(&json!({"messages":[{"role":"user","content":"hi"}]}));
    let two = est(
        &json!({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hi"}]}),
    );
    assert!(two > one && two - one <= 6, "{one} {two}");
    assert_eq!(est(&json!({})), 0);
}

#[test]
fn tools_count_name_description_and_schema() {
    let base = json!({"messages":[{"role":"user","content":"weather?"}]});
    let mut with_tool = base.clone();
    with_tool["tools"] = json!([{
        "name":"get_weather",
        "description":"Get the current weather in a given location",
        "input_schema":{"type":"object","properties":{"location":{"type":"string","description":"City and state"}},"required":["location"]}
    }]);
    let extra = est(&with_tool) - est(&base);
    assert!((30..=80).contains(&extra), "tool adds {extra}");
    let mut server_tool = base.clone();
    server_tool["tools"] = json!([{"type":"web_search_20250305","name":"web_search","max_uses":5}]);
    assert!(est(&server_tool) > est(&base));
}

#[test]
fn tool_use_and_result_blocks() {
    let body = json!({"messages":[
        {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"location":"San Francisco, CA"}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text": ENGLISH}]}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content": ENGLISH}]},
        {"role":"assistant","content":[{"type":"thinking","thinking": ENGLISH, "signature":"sig"}]},
    ]});
    let t = est(&body);
    let e = estimate_text_tokens(ENGLISH);
    assert!(t > 3 * e && t < 3 * e + 60, "{t} vs 3×{e}");
}

#[test]
fn documents() {
    let text_doc = est(&json!({"messages":[{"role":"user","content":[
        {"type":"document","source":{"type":"text","media_type":"text/plain","data": ENGLISH}}]}]}));
    assert!(text_doc >= estimate_text_tokens(ENGLISH));
    let pdf = b64(b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R 3 0 R] >>\n2 0 obj << /Type /Page >>\n3 0 obj << /Type/Page >>\n");
    let pdf_doc = est(&json!({"messages":[{"role":"user","content":[
        {"type":"document","source":{"type":"base64","media_type":"application/pdf","data": pdf}}]}]}));
    assert!((4000..4100).contains(&pdf_doc), "{pdf_doc}");
}

#[test]
fn png_by_pixel_count() {
    let t = est(&image_body(&b64(&png(1000, 1000)), "image/png"));
    assert!((1334..1345).contains(&t), "{t}");
    let small = est(&image_body(&b64(&png(200, 100)), "image/png"));
    assert!((27..40).contains(&small), "{small}");
    let huge = est(&image_body(&b64(&png(8000, 6000)), "image/png"));
    assert!(huge <= IMAGE_MAX_TOKENS + 10 && huge > 1500, "{huge}");
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
    let t = est(&image_body(&b64(&jpeg), "image/jpeg"));
    assert_eq!(t, 4 + image_tokens_for(640, 480));
}

#[test]
fn unknown_images_cost_the_cap() {
    assert_eq!(
        est(&image_body("bm90IGFuIGltYWdl", "image/png")),
        4 + IMAGE_MAX_TOKENS
    );
    let url = json!({"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]});
    assert_eq!(est(&url), 4 + IMAGE_MAX_TOKENS);
}

#[test]
fn escaped_json_text() {
    let raw = br#"{"messages":[{"role":"user","content":"caf\u00e9 \u65e5\u672c"}]}"#;
    assert_eq!(
        estimate_tokens(raw).unwrap(),
        4 + estimate_text_tokens("café 日本")
    );
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
