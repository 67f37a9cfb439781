//! Shared helpers: the recorded fixture corpus, chunkings, and both
//! translators run and their output checked.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::path::PathBuf;

use ethereal_core::openai_chat::{ChatEmitter, ChatOptions};
use ethereal_core::responses::{ResponsesEmitter, ResponsesOptions};
use ethereal_core::translate::{translate_chunks, Emitter};
use ethereal_core::FinalUsage;
use serde_json::Value;

/// `$ETHEREAL_FIXTURES`, else the `fixtures/` corpus in the repository.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("ETHEREAL_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
        PathBuf::from,
    );
    assert!(
        dir.is_dir(),
        "fixture corpus not found at {} (set ETHEREAL_FIXTURES)",
        dir.display()
    );
    dir
}

fn files_in(sub: &str, exts: &[&str]) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir().join(sub);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| exts.iter().any(|x| e == *x)))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The raw recorded Anthropic streams (real API traffic).
pub fn recorded_streams() -> Vec<(String, Vec<u8>)> {
    let streams = files_in("anthropic/recorded/sse-extracted", &["sse"]);
    assert!(
        streams.len() >= 10,
        "expected the recorded corpus, found {}",
        streams.len()
    );
    streams
}

/// Recorded streams plus the SDK's hand-written stream fixtures.
pub fn all_streams() -> Vec<(String, Vec<u8>)> {
    let mut streams = recorded_streams();
    streams.extend(files_in(
        "anthropic/stream-fixtures-sdk-python",
        &["sse", "txt"],
    ));
    streams
}

/// [`all_streams`], read once per test binary.
pub fn streams() -> &'static [(String, Vec<u8>)] {
    static STREAMS: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    STREAMS.get_or_init(all_streams)
}

/// `data` cut into chunks of the given sizes, cycled (a size of 0 counts as 1).
pub fn split_by<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(n.clamp(1, rest.len()));
        chunks.push(head);
        rest = tail;
    }
    chunks
}

pub fn chat_opts() -> ChatOptions {
    ChatOptions {
        model: "claude-sonnet-4-5".into(),
        completion_id: "chatcmpl-x".into(),
        created: 1_700_000_000,
        include_usage: true,
        ..ChatOptions::default()
    }
}

pub fn responses_opts() -> ResponsesOptions {
    ResponsesOptions {
        response_id: "resp_x".into(),
        head: r#""id":"resp_x","object":"response","created_at":1700000000,"model":"claude-sonnet-4-5""#
            .into(),
        ..ResponsesOptions::default()
    }
}

/// What a translator gave for a stream fed in these chunks: its output and usage.
pub fn run<E: Emitter>(opts: &E::Options, chunks: &[&[u8]]) -> (Vec<u8>, FinalUsage) {
    let (out, t) = translate_chunks::<E>(opts, chunks);
    (out, t.usage())
}

/// Chat output with [`chat_opts`].
pub fn translate_chat(chunks: &[&[u8]]) -> Vec<u8> {
    run::<ChatEmitter>(&chat_opts(), chunks).0
}

/// Responses output with [`responses_opts`].
pub fn translate_responses(chunks: &[&[u8]]) -> Vec<u8> {
    run::<ResponsesEmitter>(&responses_opts(), chunks).0
}

/// Chat output's frames, checked: each is `data: ` and a JSON chunk (`choices`)
/// or error, and the stream ends with `[DONE]` or the error. Panics otherwise.
pub fn chat_frames(name: &str, out: &[u8]) -> Vec<Value> {
    let out = std::str::from_utf8(out).unwrap_or_else(|e| panic!("{name}: {e}"));
    let frames: Vec<&str> = out.trim_end_matches("\n\n").split("\n\n").collect();
    let mut values = Vec::new();
    for frame in &frames {
        let payload = frame
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("{name}: {frame}"));
        if payload != "[DONE]" {
            let v: Value =
                serde_json::from_str(payload).unwrap_or_else(|e| panic!("{name}: {e}: {payload}"));
            assert!(
                v.get("choices").is_some() || v.get("error").is_some(),
                "{name}: {payload}"
            );
            values.push(v);
        }
    }
    let last = frames.last().unwrap();
    assert!(
        *last == "data: [DONE]" || last.starts_with("data: {\"error\""),
        "{name} ends with {last}"
    );
    values
}

/// The events that end a Responses stream.
pub const RESPONSES_FINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Responses output's `(event, data)` frames, checked: each data's `type` is its
/// event name, `sequence_number`s count from 0, and exactly one final event
/// comes last. Panics otherwise.
pub fn responses_frames(name: &str, out: &[u8]) -> Vec<(String, Value)> {
    let out = std::str::from_utf8(out).unwrap_or_else(|e| panic!("{name}: {e}"));
    let frames: Vec<&str> = out.trim_end_matches("\n\n").split("\n\n").collect();
    let mut events = Vec::new();
    for (seq, frame) in frames.iter().enumerate() {
        let (event, data) = frame
            .strip_prefix("event: ")
            .and_then(|f| f.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("{name}: {frame}"));
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{name}: {e}: {data}"));
        assert_eq!(v["type"], event, "{name}");
        assert_eq!(v["sequence_number"], seq as u64, "{name}");
        assert_eq!(
            RESPONSES_FINAL.contains(&event),
            seq == frames.len() - 1,
            "{name}: {event} at {seq} of {}",
            frames.len()
        );
        events.push((event.to_owned(), v));
    }
    assert!(frames[0].starts_with("event: response.created\n"), "{name}");
    events
}
