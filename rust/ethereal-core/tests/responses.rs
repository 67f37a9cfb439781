//! `ResponsesTranslator` over the recorded corpus: every frame is one event
//! whose JSON `type` is its SSE name with consecutive `sequence_number`s,
//! every stream ends with exactly one of `response.completed` /
//! `.incomplete` / `.failed`, and items are done in the order they were
//! added. Chunking invariance: `tests/translate.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{responses_frames, streams, translate_responses, RESPONSES_FINAL};

#[test]
fn events_are_tagged_numbered_and_end_once() {
    for (name, data) in streams() {
        let out = translate_responses(&[data]);
        let mut added = Vec::new();
        let mut done = Vec::new();
        let mut finished = None;
        for (event, v) in responses_frames(name, &out) {
            if RESPONSES_FINAL.contains(&event.as_str()) {
                if event != "response.failed" {
                    assert!(v["response"]["usage"]["total_tokens"].is_u64(), "{name}");
                }
                assert_eq!(
                    v["response"]["output"].as_array().unwrap().len(),
                    done.len(),
                    "{name}"
                );
                finished = Some(event.clone());
            }
            if event == "response.output_item.added" {
                assert_eq!(v["output_index"], added.len() as u64, "{name}");
                added.push(v["item"]["id"].clone());
            }
            if event == "response.output_item.done" {
                done.push(v["item"]["id"].clone());
            }
        }
        if finished.as_deref() != Some("response.failed") {
            assert_eq!(added, done, "{name}: every item is done, in order");
        }
    }
}
