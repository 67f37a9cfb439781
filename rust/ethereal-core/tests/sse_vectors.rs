//! One-line vectors for the SSE decoder, each fed whole, byte by byte and
//! split at every pair of positions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ethereal_core::sse::{Leftover, SseDecoder};

type Events = Vec<(String, String)>;

fn ev(pairs: &[(&str, &str)]) -> Events {
    pairs
        .iter()
        .map(|(e, d)| ((*e).to_owned(), (*d).to_owned()))
        .collect()
}

fn decode(chunks: &[&[u8]]) -> (Events, Leftover) {
    let mut d = SseDecoder::new();
    let mut out = Vec::new();
    let mut counted = 0;
    for c in chunks {
        counted += d.feed(c, |e| out.push((e.event.to_owned(), e.data.to_owned())));
    }
    assert_eq!(
        counted,
        out.len(),
        "feed() return values must add up to the events seen"
    );
    (out, d.finish())
}

/// (input, expected events)
fn vectors() -> Vec<(&'static [u8], Events)> {
    vec![
        (b"data: a\n\n", ev(&[("message", "a")])),
        (b"data:a\n\n", ev(&[("message", "a")])),
        (b"data:  a\n\n", ev(&[("message", " a")])),
        (b"event: x\ndata: 1\n\n", ev(&[("x", "1")])),
        (b"event: x\r\ndata: 1\r\n\r\n", ev(&[("x", "1")])),
        (b"event: x\rdata: 1\r\r", ev(&[("x", "1")])),
        (b"data: a\r\n\n", ev(&[("message", "a")])),
        (b"data: a\n\r\n", ev(&[("message", "a")])),
        (b"data: a\ndata: b\n\n", ev(&[("message", "a\nb")])),
        (
            b"data: a\r\ndata:\r\ndata: b\r\n\r\n",
            ev(&[("message", "a\n\nb")]),
        ),
        (b": comment\ndata: a\n\n", ev(&[("message", "a")])),
        (b":\n:ping\n\n", ev(&[])),
        (
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
            ev(&[("ping", "{\"type\": \"ping\"}")]),
        ),
        (b"retry: 1000\ndata: a\n\n", ev(&[("message", "a")])),
        (b"retry: soon\ndata: a\n\n", ev(&[("message", "a")])),
        (b"id: 1\ndata: a\n\n", ev(&[("message", "a")])),
        (b"unknown: x\ndata: a\n\n", ev(&[("message", "a")])),
        (b"data\n\n", ev(&[("message", "")])),
        (b"data:\n\n", ev(&[("message", "")])),
        (b"event: x\n\n", ev(&[])),
        (b"event: x\n\ndata: a\n\n", ev(&[("message", "a")])),
        (b"event:\ndata: a\n\n", ev(&[("message", "a")])),
        (b"\n\n\ndata: a\n\n", ev(&[("message", "a")])),
        (
            b"data: a\n\nevent: y\ndata: b\n\n",
            ev(&[("message", "a"), ("y", "b")]),
        ),
        (b"data: a\n", ev(&[])),
        (b"data: a", ev(&[])),
        (
            "data: ü€😀 日本\n\n".as_bytes(),
            ev(&[("message", "ü€😀 日本")]),
        ),
        ("\u{FEFF}data: a\n\n".as_bytes(), ev(&[("message", "a")])),
        ("\u{FEFF}\u{FEFF}data: a\n\n".as_bytes(), ev(&[])),
        (
            "data: \u{FEFF}a\n\n".as_bytes(),
            ev(&[("message", "\u{FEFF}a")]),
        ),
        (b"data: a:b: c\n\n", ev(&[("message", "a:b: c")])),
        (b"DATA: a\n\n", ev(&[])),
        (b"data: \xFFz\n\n", ev(&[("message", "\u{FFFD}z")])),
    ]
}

#[test]
fn vectors_whole() {
    for (input, want) in vectors() {
        assert_eq!(
            decode(&[input]).0,
            want,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn vectors_byte_by_byte() {
    for (input, want) in vectors() {
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            decode(&chunks).0,
            want,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn vectors_split_at_every_pair_of_positions() {
    for (input, want) in vectors() {
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let chunks = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(
                    decode(&chunks).0,
                    want,
                    "input {:?} split at {i},{j}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }
}

#[test]
fn cr_at_chunk_end_then_lf() {
    // "\r" ends chunk 1, "\n" starts chunk 2: one terminator, not two (a
    // second would dispatch early and split "a" from "b").
    let (got, _) = decode(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
    assert_eq!(got, ev(&[("message", "a\nb")]));
}

#[test]
fn leftovers_at_eof() {
    assert!(!decode(&[b"data: a\n\n"]).1.any());
    let (_, left) = decode(&[b"data: a\n"]);
    assert!(left.partial_event && !left.partial_line);
    let (_, left) = decode(&[b"data: a\n\ndata: b"]);
    assert!(left.partial_line);
    let (_, left) = decode(&[b"event: x\n"]);
    assert!(left.partial_event);
    let (_, left) = decode(&[b"\xEF\xBB"]);
    assert!(left.partial_line);
}

#[test]
fn retry_and_id_are_tracked() {
    let mut d = SseDecoder::new();
    let mut ids = Vec::new();
    d.feed(
        b"retry: 2500\nid: e1\ndata: a\n\nid\ndata: b\n\nid: x\0y\ndata: c\n\n",
        |e| {
            ids.push(e.id.to_owned());
        },
    );
    assert_eq!(d.retry(), Some(2500));
    assert_eq!(ids, ["e1", "", ""]);
}
