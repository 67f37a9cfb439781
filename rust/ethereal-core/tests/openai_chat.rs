//! `ChatTranslator` over the recorded corpus: every frame is one JSON
//! document, and the stream ends with `[DONE]` (or an error frame for streams
//! that are cut). Chunking invariance: `tests/translate.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{chat_frames, streams, translate_chat};

#[test]
fn frames_are_json_and_streams_end() {
    for (name, data) in streams() {
        chat_frames(name, &translate_chat(&[data]));
    }
}
