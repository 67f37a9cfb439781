//! The recorded stream corpus: chunking invariance (proptest) and usage
//! extraction checked against each stream's own `message_delta`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{split_by, streams};
use ethereal_core::sse::parse_all;
use ethereal_core::{FinalUsage, SseDecoder, StreamTap};
use proptest::prelude::*;
use serde_json::Value;

/// Everything observable about a tapped stream.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    events: Vec<(String, String)>,
    usage: FinalUsage,
    estimate: u64,
    stop_reason: Option<String>,
    message_id: Option<String>,
    event_count: u64,
}

fn observe(chunks: &[&[u8]]) -> Observed {
    let mut tap = StreamTap::new();
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    for c in chunks {
        tap.feed(c);
        decoder.feed(c, |e| events.push((e.event.to_owned(), e.data.to_owned())));
    }
    tap.finish();
    let t = tap.tracker();
    Observed {
        events,
        usage: tap.usage(),
        estimate: t.estimated_output_tokens(),
        stop_reason: t.stop_reason.clone(),
        message_id: t.message_id.clone(),
        event_count: t.events,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no lib.rs for the default regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_chunking_gives_same_events_and_usage(
        pick in any::<prop::sample::Index>(),
        sizes in prop::collection::vec(1usize..600, 1..40),
    ) {
        let (name, data) = &streams()[pick.index(streams().len())];
        let whole = observe(&[data]);
        let chunked = observe(&split_by(data, &sizes));
        prop_assert_eq!(whole, chunked, "{}", name);
    }

    #[test]
    fn random_sse_text_chunking_invariant(
        parts in prop::collection::vec(prop::sample::select(vec![
            "data", "event", "id", "retry", ":", ": ", " ", "\n", "\r", "\r\n", "x", "é", "😀", "\u{FEFF}", "12",
        ]), 0..60),
        sizes in prop::collection::vec(1usize..8, 1..10),
    ) {
        let text: String = parts.concat();
        let whole = parse_all(text.as_bytes());
        let mut decoder = SseDecoder::new();
        let mut chunked = Vec::new();
        for c in split_by(text.as_bytes(), &sizes) {
            decoder.feed(c, |e| chunked.push((e.event.to_owned(), e.data.to_owned())));
        }
        prop_assert_eq!(whole, chunked);
    }
}

/// Every stream split at every single byte position.
#[test]
fn every_two_way_split_of_every_stream() {
    for (name, data) in streams() {
        let whole = observe(&[data]);
        // Every position of the first KiB (message_start, first blocks), then
        // an odd stride over the rest so debug-build runs stay quick.
        let stride = (data.len() / 300) | 1;
        let positions = (0..data.len().min(1024)).chain((1024..data.len()).step_by(stride));
        for i in positions {
            let (a, b) = data.split_at(i);
            assert_eq!(observe(&[a, b]), whole, "{name} split at {i}");
        }
    }
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// The tap's usage equals the stream's own final `message_delta` (plus the
/// `message_start` values it does not repeat).
#[test]
fn usage_matches_final_message_delta() {
    for (name, data) in streams() {
        let events = parse_all(data);
        let payload = |kind: &str| -> Option<Value> {
            events
                .iter()
                .rev()
                .find(|(e, _)| e == kind)
                .map(|(_, d)| serde_json::from_str(d).unwrap())
        };
        let start = payload("message_start").unwrap_or_else(|| panic!("{name}: no message_start"));
        let start_usage = &start["message"]["usage"];
        let delta = payload("message_delta").unwrap_or_else(|| panic!("{name}: no message_delta"));
        let delta_usage = &delta["usage"];

        let mut tap = StreamTap::new();
        tap.feed(data);
        tap.finish();
        let u = tap.usage();
        let t = tap.tracker();

        assert!(u.exact, "{name}");
        // With `iterations` (compaction, advisor) the bill is their sum.
        let iterations = delta_usage["iterations"]
            .as_array()
            .filter(|a| !a.is_empty());
        let pick = |key: &str| match iterations {
            Some(its) => its.iter().filter_map(|it| num(it, key)).sum(),
            None => num(delta_usage, key)
                .or_else(|| num(start_usage, key))
                .unwrap_or(0),
        };
        assert_eq!(u.output_tokens, pick("output_tokens"), "{name}");
        assert_eq!(u.input_tokens, pick("input_tokens"), "{name}");
        assert_eq!(
            u.cache_read_input_tokens,
            pick("cache_read_input_tokens"),
            "{name}"
        );
        assert_eq!(
            u.cache_creation_5m + u.cache_creation_1h,
            pick("cache_creation_input_tokens"),
            "{name}"
        );
        let split = start_usage.get("cache_creation").filter(|v| v.is_object());
        assert_eq!(u.cache_split_reported, split.is_some(), "{name}");
        if let (Some(split), None) = (split, iterations) {
            assert_eq!(
                u.cache_creation_1h,
                num(split, "ephemeral_1h_input_tokens").unwrap_or(0),
                "{name}"
            );
        }
        assert_eq!(
            t.stop_reason.as_deref(),
            delta["delta"]["stop_reason"].as_str(),
            "{name}"
        );
        assert_eq!(
            t.message_id.as_deref(),
            start["message"]["id"].as_str(),
            "{name}"
        );
        assert_eq!(
            t.model.as_deref(),
            start["message"]["model"].as_str(),
            "{name}"
        );
        assert_eq!(t.events, events.len() as u64, "{name}");
        assert_eq!(t.malformed_events, 0, "{name}");
        assert!(t.error_type.is_none(), "{name}");
    }
}

/// Cut every recorded stream before its `message_delta`: the bill falls back
/// to an estimate that is in the right ballpark of the real output count.
#[test]
fn cut_streams_are_estimated() {
    for (name, data) in common::recorded_streams() {
        let cut = memchr::memmem::find(&data, b"event: message_delta").unwrap();
        let mut tap = StreamTap::new();
        tap.feed(&data[..cut]);
        tap.finish();
        let u = tap.usage();
        let mut full = StreamTap::new();
        full.feed(&data);
        let real = full.usage().output_tokens;
        assert!(!u.exact, "{name}");
        assert!(u.output_tokens >= 1, "{name}");
        assert!(
            u.output_tokens <= real * 3 + 20,
            "{name}: estimate {} vs real {real}",
            u.output_tokens
        );
        println!("{name}: estimate {} real {real}", u.output_tokens);
    }
}

#[test]
fn error_event_mid_stream() {
    let mut tap = StreamTap::new();
    let data = &streams()[0].1;
    let cut = memchr::memmem::find(data, b"event: content_block_stop").unwrap();
    tap.feed(&data[..cut]);
    tap.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"details\":null,\"type\":\"overloaded_error\",\"message\":\"Overloaded\"},\"request_id\":\"req_011C\"  }\n\n");
    assert!(!tap.finish().any());
    let t = tap.tracker();
    assert_eq!(t.error_type.as_deref(), Some("overloaded_error"));
    assert_eq!(t.error_message.as_deref(), Some("Overloaded"));
    assert!(!tap.usage().exact);
    assert!(!t.saw_message_stop);
}
