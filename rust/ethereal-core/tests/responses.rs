//! `ResponsesTranslator` over the recorded corpus: every frame is one event
//! whose JSON `type` is its SSE name with consecutive `sequence_number`s,
//! every stream ends with exactly one of `response.completed` /
//! `.incomplete` / `.failed`, and any chunking (and CRLF / CR line ends)
//! gives the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use ethereal_core::responses::{ResponsesOptions, ResponsesTranslator};
use proptest::prelude::*;
use serde_json::Value;

fn streams() -> &'static [(String, Vec<u8>)] {
    static STREAMS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    STREAMS.get_or_init(common::all_streams)
}

fn opts() -> ResponsesOptions {
    ResponsesOptions {
        response_id: "resp_x".into(),
        head: r#""id":"resp_x","object":"response","created_at":1700000000,"model":"claude-sonnet-4-5""#
            .into(),
        ..ResponsesOptions::default()
    }
}

fn translate(chunks: &[&[u8]]) -> Vec<u8> {
    let mut t = ResponsesTranslator::new(&opts());
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

const FINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

#[test]
fn events_are_tagged_numbered_and_end_once() {
    for (name, data) in streams() {
        let out = String::from_utf8(translate(&[data])).unwrap();
        let frames: Vec<&str> = out.trim_end_matches("\n\n").split("\n\n").collect();
        let mut finals = 0;
        let mut added = Vec::new();
        let mut done = Vec::new();
        for (seq, frame) in frames.iter().enumerate() {
            let (event, data) = frame
                .strip_prefix("event: ")
                .and_then(|f| f.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("{name}: {frame}"));
            let v: Value =
                serde_json::from_str(data).unwrap_or_else(|e| panic!("{name}: {e}: {data}"));
            assert_eq!(v["type"], event, "{name}");
            assert_eq!(v["sequence_number"], seq as u64, "{name}");
            if FINAL.contains(&event) {
                finals += 1;
                assert_eq!(seq, frames.len() - 1, "{name}: {event} is not last");
                if event != "response.failed" {
                    assert!(v["response"]["usage"]["total_tokens"].is_u64(), "{name}");
                }
                assert_eq!(
                    v["response"]["output"].as_array().unwrap().len(),
                    done.len(),
                    "{name}"
                );
            }
            if event == "response.output_item.added" {
                assert_eq!(v["output_index"], added.len() as u64, "{name}");
                added.push(v["item"]["id"].clone());
            }
            if event == "response.output_item.done" {
                done.push(v["item"]["id"].clone());
            }
        }
        assert_eq!(finals, 1, "{name}");
        assert!(frames[0].starts_with("event: response.created\n"), "{name}");
        if out.contains("response.completed") || out.contains("response.incomplete") {
            assert_eq!(added, done, "{name}: every item is done, in order");
        }
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
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

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
