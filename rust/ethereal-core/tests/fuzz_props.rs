//! Property-based fuzzing with arbitrary bytes and arbitrary chunkings: the SSE
//! decoder, the usage tap, both translators (chat and Responses), the token
//! estimator and the JSON shape scan never panic, and every streaming part gives
//! the same result however its input is split, invalid UTF-8 included.
//!
//! Cases per property: `PROPTEST_CASES` (default 256, what `make test` runs);
//! `scripts/fuzz.sh` runs the same properties with many more cases, time-bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{chat_frames, chat_opts, responses_frames, responses_opts, run, split_by, streams};
use ethereal_core::openai_chat::ChatEmitter;
use ethereal_core::responses::ResponsesEmitter;
use ethereal_core::shape::{scan, scan_locate, MAX_DEPTH};
use ethereal_core::sse::parse_all;
use ethereal_core::{estimate_tokens, SseDecoder, StreamTap};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// Arbitrary bytes biased toward SSE and JSON syntax, so the parsers get past their
/// first byte: raw noise, field names, line ends, event payload fragments.
fn sse_noise() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        prop::sample::select(vec![
            &b"data: "[..], b"event: ", b"id: ", b"retry: ", b":", b"\n", b"\r", b"\r\n", b"\n\n",
            br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            br#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\u00e9"}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#,
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#,
            b"message_start", b"content_block_delta", b"message_delta", b"message_stop", b"ping",
            "\u{FEFF}".as_bytes(), "😀".as_bytes(), b"\xff\xfe", b"{", b"}", b"[", b"]", b"\"",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    prop::collection::vec(token, 0..48).prop_map(|parts| parts.concat())
}

/// A recorded stream with random bytes overwritten, inserted or removed.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..24),
    )
        .prop_map(|(pick, edits)| {
            let mut data = streams()[pick.index(streams().len())].1.clone();
            for (at, byte, op) in edits {
                if data.is_empty() {
                    break;
                }
                let i = at.index(data.len());
                match op {
                    0 => data[i] = byte,
                    1 => data.insert(i, byte),
                    _ => {
                        data.remove(i);
                    }
                }
            }
            data
        })
}

/// A recorded stream with invalid UTF-8 written into it: stray continuation bytes,
/// lead bytes without their continuation, bytes never valid in UTF-8, overlong and
/// surrogate encodings, characters cut short. The chunkings then split them too.
fn invalid_utf8_stream() -> impl Strategy<Value = Vec<u8>> {
    let bad = prop::sample::select(vec![
        &b"\x80"[..], b"\xbf", b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98",
        b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
    ]);
    (any::<prop::sample::Index>(), prop::collection::vec((any::<prop::sample::Index>(), bad), 1..6))
        .prop_map(|(pick, edits)| {
            let mut data = streams()[pick.index(streams().len())].1.clone();
            for (at, bytes) in edits {
                let i = at.index(data.len() + 1);
                data.splice(i..i, bytes.iter().copied());
            }
            data
        })
}

fn any_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        sse_noise(),
        mutated_stream(),
        invalid_utf8_stream(),
        prop::collection::vec(any::<u8>(), 0..512)
    ]
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..64, 1..16)
}

#[derive(Debug, PartialEq, Eq)]
struct Tapped {
    events: usize,
    usage: ethereal_core::FinalUsage,
    estimate: u64,
    stop: Option<String>,
}

fn tap(chunks: &[&[u8]]) -> Tapped {
    let mut t = StreamTap::new();
    let mut events = 0;
    for c in chunks {
        events += t.feed(c);
    }
    t.finish();
    Tapped {
        events,
        usage: t.usage(),
        estimate: t.tracker().estimated_output_tokens(),
        stop: t.tracker().stop_reason.clone(),
    }
}

/// Both translators over the same chunks: `(chat output, Responses output, usage)`.
/// The usage is the one engine's, so it must not depend on the wire format.
fn translate(chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>, ethereal_core::FinalUsage) {
    let (chat, usage) = run::<ChatEmitter>(&chat_opts(), chunks);
    let (responses, same) = run::<ResponsesEmitter>(&responses_opts(), chunks);
    assert_eq!(usage, same, "chat and Responses metered the stream differently");
    (chat, responses, usage)
}

/// JSON documents built from arbitrary pieces: valid ones, broken ones, deep ones.
fn json_noise() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        "{", "}", "[", "]", ",", ":", "\"", "\\", "\"model\"", "\"mod\\u0065l\"", "\"a\"", "1", "null", " ",
        "\"x\\\"y\"", "\"messages\"", "\"content\"", "\"type\"", "\"text\"", "\"tool_use\"", "\"input\"", "é",
    ]);
    prop_oneof![
        prop::collection::vec(piece, 0..64).prop_map(|p| p.concat().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
        (0usize..3000).prop_map(|d| format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"tool_use","name":"t","input":{}1{}}}]}}]}}"#,
            "[".repeat(d),
            "]".repeat(d)
        )
        .into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sse_decoder_any_bytes_any_chunking(data in any_stream(), sizes in sizes()) {
        let whole = parse_all(&data);
        let mut decoder = SseDecoder::new();
        let mut chunked = Vec::new();
        for c in split_by(&data, &sizes) {
            decoder.feed(c, |e| chunked.push((e.event.to_owned(), e.data.to_owned())));
        }
        let _ = decoder.finish();
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn tap_any_bytes_any_chunking(data in any_stream(), sizes in sizes()) {
        prop_assert_eq!(tap(&[&data]), tap(&split_by(&data, &sizes)));
    }

    #[test]
    fn translators_any_bytes_any_chunking(data in any_stream(), sizes in sizes()) {
        let whole = translate(&[&data]);
        prop_assert_eq!(&whole, &translate(&split_by(&data, &sizes)));
        // every frame either writes is well-formed, and each ends its stream once
        chat_frames("chat", &whole.0);
        responses_frames("responses", &whole.1);
    }

    #[test]
    fn estimator_and_shape_never_panic(body in json_noise()) {
        let estimate = estimate_tokens(&body);
        let shape = scan(&body);
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
            // serde_json parsed it (within its depth limit of 128): the scan agrees it is balanced
            prop_assert!(shape.is_ok());
            if value.is_object() {
                prop_assert!(estimate.is_ok());
            }
        }
        if let Ok(s) = &shape {
            if s.max_depth > MAX_DEPTH {
                prop_assert!(estimate.is_err());
            }
        }
    }

    #[test]
    fn located_value_is_the_value_serde_reads(body in json_noise()) {
        let Ok(shape) = scan_locate(&body, Some("model")) else { return Ok(()) };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Ok(());
        };
        if shape.duplicate_key.is_some() {
            return Ok(());
        }
        match (shape.located, map.get("model")) {
            (Some((a, b)), Some(expected)) => {
                let got: serde_json::Value = serde_json::from_slice(&body[a..b]).expect("span is one value");
                prop_assert_eq!(&got, expected);
            }
            (None, None) => {}
            (got, expected) => prop_assert!(false, "located {:?}, serde {:?}", got, expected),
        }
    }
}

/// Found by `translator_any_bytes_any_chunking`: a backslash before a multi-byte
/// character in a delta's text made the fast string path slice inside the character.
#[test]
fn backslash_before_multibyte_char_is_malformed_not_a_panic() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\\\u{e9}b\"}}\n\n";
    let (chat, responses, _) = translate(&[stream.as_bytes()]);
    assert!(!chat.is_empty() && !responses.is_empty());
    let mut t = StreamTap::new();
    t.feed(stream.as_bytes());
    t.finish();
}

/// Found by `translator_any_bytes_any_chunking`: an event with invalid UTF-8 was read
/// raw by the whole-frame fast path but lossily by the decoder, so the estimate
/// depended on where the network split the stream. The chat translator had been
/// given the guard; the Responses translator, a copy of its driver, had not
/// (`"output_tokens":342` whole, 343 split a byte at a time) until both ran on
/// one engine: now 343 both ways, for both.
#[test]
fn invalid_utf8_in_an_event_is_read_the_same_however_split() {
    let (_, recorded) = streams()
        .iter()
        .find(|(name, _)| name.contains("text_editor_code_execution_tool_stream"))
        .expect("recorded stream");
    // the two byte edits proptest shrank the failure to
    let mut data = recorded.clone();
    let at = data.windows(22).position(|w| w == b"ution_create_result\",\"").expect("a result block");
    data[at + 20] = 0x80;
    let at = data.windows(13).position(|w| w == b"\"expires_at\":").expect("an expiry");
    data[at + 11] = 0;
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    let whole = translate(&[&data]);
    assert_eq!(whole, translate(&bytes));
    assert_eq!(whole.2.output_tokens, 343);
    assert_eq!(tap(&[&data]), tap(&bytes));
}

/// Invalid UTF-8 inside a text delta, the event whole in one chunk (the fast path)
/// or split inside the bad sequence (the decoder): both translators replace it the
/// same way, and the text reads as it does in one chunk.
#[test]
fn invalid_utf8_split_inside_a_delta() {
    let stream = [
        &b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n"[..],
        b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\xe2\x82b\xffc\"}}\n\n",
        b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ]
    .concat();
    let whole = translate(&[&stream]);
    let bad = stream.windows(2).position(|w| w == b"\xe2\x82").unwrap();
    for cut in bad - 3..bad + 6 {
        let (a, b) = stream.split_at(cut);
        assert_eq!(translate(&[a, b]), whole, "split at {cut}");
    }
    let chat = String::from_utf8(whole.0).unwrap();
    assert!(chat.contains("{\"content\":\"a\u{fffd}b\u{fffd}c\"}"), "{chat}");
    let responses = String::from_utf8(whole.1).unwrap();
    assert!(responses.contains("\"text\":\"a\u{fffd}b\u{fffd}c\""), "{responses}");
}
