//! `ChatTranslator` over the recorded corpus: any chunking (and CRLF line
//! ends) gives the same bytes, every frame is one JSON document, and the
//! stream ends with `[DONE]` (or an error frame for streams that are cut).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use ethereal_core::openai_chat::{ChatOptions, ChatTranslator};
use proptest::prelude::*;
use serde_json::Value;

fn streams() -> &'static [(String, Vec<u8>)] {
    static STREAMS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    STREAMS.get_or_init(common::all_streams)
}

fn opts() -> ChatOptions {
    ChatOptions {
        model: "claude-sonnet-4-5".into(),
        completion_id: "chatcmpl-x".into(),
        created: 1_700_000_000,
        include_usage: true,
        ..ChatOptions::default()
    }
}

fn translate(chunks: &[&[u8]]) -> Vec<u8> {
    let mut t = ChatTranslator::new(&opts());
    let mut out = Vec::new();
    for c in chunks {
        t.feed(c, &mut out);
    }
    t.finish(&mut out);
    out
}

fn split_by<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(n.min(rest.len()));
        chunks.push(head);
        rest = tail;
    }
    chunks
}

#[test]
fn frames_are_json_and_streams_end() {
    for (name, data) in streams() {
        let out = String::from_utf8(translate(&[data])).unwrap();
        let frames: Vec<&str> = out.trim_end_matches("\n\n").split("\n\n").collect();
        let last = frames.last().unwrap();
        for frame in &frames {
            let payload = frame
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("{name}: {frame}"));
            if payload != "[DONE]" {
                let v: Value = serde_json::from_str(payload)
                    .unwrap_or_else(|e| panic!("{name}: {e}: {payload}"));
                assert!(
                    v.get("choices").is_some() || v.get("error").is_some(),
                    "{name}: {payload}"
                );
            }
        }
        assert!(
            *last == "data: [DONE]" || last.starts_with("data: {\"error\""),
            "{name} ends with {last}"
        );
    }
}

#[test]
fn every_split_point_of_small_streams() {
    for (name, data) in streams().iter().filter(|(_, d)| d.len() < 3000) {
        let whole = translate(&[data]);
        for cut in 1..data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(translate(&[a, b]), whole, "{name} split at {cut}");
        }
    }
}

#[test]
fn crlf_and_cr_line_ends_translate_the_same() {
    for (name, data) in streams() {
        let whole = translate(&[data]);
        let text = String::from_utf8(data.clone()).unwrap();
        for sep in ["\r\n", "\r"] {
            let other = text.replace('\n', sep);
            assert_eq!(translate(&[other.as_bytes()]), whole, "{name} with {sep:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chunking_same_output(
        pick in 0usize..1000,
        sizes in prop::collection::vec(1usize..512, 1..24),
    ) {
        let (_, data) = &streams()[pick % streams().len()];
        let whole = translate(&[data]);
        prop_assert_eq!(translate(&split_by(data, &sizes)), whole);
    }

    #[test]
    fn byte_at_a_time_or_random_cut_same_output(pick in 0usize..1000, cut in 0usize..100_000) {
        let (_, data) = &streams()[pick % streams().len()];
        let whole = translate(&[data]);
        let cut = cut % (data.len() + 1);
        let (a, b) = data.split_at(cut);
        prop_assert_eq!(translate(&[a, b]), whole.clone());
        if data.len() < 4000 {
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            prop_assert_eq!(translate(&bytes), whole);
        }
    }
}
