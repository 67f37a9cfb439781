//! Throughput of the stream tap over the recorded corpus and of
//! `estimate_tokens` on representative request bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use ethereal_core::openai_chat::{ChatEmitter, ChatOptions};
use ethereal_core::responses::{ResponsesEmitter, ResponsesOptions};
use ethereal_core::translate::{Emitter, Translator};
use ethereal_core::{estimate_tokens, SseDecoder, StreamTap};

fn corpus() -> Vec<u8> {
    // All recorded streams back to back: one tap per stream in the loop below.
    common::recorded_streams()
        .into_iter()
        .flat_map(|(_, d)| d)
        .collect()
}

fn bench_tap(c: &mut Criterion) {
    let streams: Vec<Vec<u8>> = common::recorded_streams()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let total: usize = streams.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("tap");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("whole", |b| {
        b.iter(|| {
            for s in &streams {
                let mut tap = StreamTap::new();
                tap.feed(black_box(s));
                tap.finish();
                black_box(tap.usage());
            }
        });
    });
    for chunk in [1024usize, 4096] {
        group.bench_with_input(BenchmarkId::new("chunked", chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                for s in &streams {
                    let mut tap = StreamTap::new();
                    for c in s.chunks(chunk) {
                        tap.feed(black_box(c));
                    }
                    tap.finish();
                    black_box(tap.usage());
                }
            });
        });
    }
    group.bench_function("sse_decode_only", |b| {
        let all = corpus();
        b.iter(|| {
            let mut d = SseDecoder::new();
            let mut n = 0usize;
            d.feed(black_box(&all), |e| n += e.data.len());
            black_box(n)
        });
    });
    group.finish();
}

fn bench_estimate(c: &mut Criterion) {
    let english = "The gateway forwards each request to the upstream and bills what was produced. "
        .repeat(600);
    let chat = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "system": [{"type": "text", "text": english.clone()}],
        "messages": (0..20).map(|i| serde_json::json!({
            "role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": [{"type": "text", "text": english[..2000].to_owned()}]
        })).collect::<Vec<_>>(),
        "tools": (0..10).map(|i| serde_json::json!({
            "name": format!("tool_{i}"), "description": "Look something up in the catalogue by id.",
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}, "limit": {"type": "integer"}}}
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x04\0\0\0\x03\0".to_vec();
    png.resize(300_000, 7);
    let image_b64: String = png
        .chunks(3)
        .flat_map(|c| {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            (0..4).map(move |k| A[(n >> (18 - 6 * k)) as usize & 63] as char)
        })
        .collect();
    let image = serde_json::json!({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image_b64}},
        {"type": "text", "text": "What is in this picture?"}]}]})
    .to_string();
    let small = r#"{"model":"claude-haiku-4-5","max_tokens":100,"messages":[{"role":"user","content":"Hello, Claude"}]}"#.to_owned();

    let mut group = c.benchmark_group("estimate_tokens");
    for (name, body) in [("small", small), ("chat_90k", chat), ("image_400k", image)] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| estimate_tokens(black_box(body.as_bytes())).unwrap());
        });
    }
    group.finish();
}

/// The two translators over the recorded corpus, one feed per SSE event (what
/// an upstream connection delivers), side by side.
fn bench_translate(c: &mut Criterion) {
    let streams: Vec<Vec<Vec<u8>>> = common::recorded_streams()
        .into_iter()
        .map(|(_, d)| {
            d.split_inclusive(|&b| b == b'\n')
                .fold(Vec::<Vec<u8>>::new(), |mut evs, line| {
                    match evs.last_mut() {
                        Some(last) if !last.ends_with(b"\n\n") => last.extend_from_slice(line),
                        _ => evs.push(line.to_vec()),
                    }
                    evs
                })
        })
        .collect();
    let total: usize = streams.iter().flatten().map(Vec::len).sum();
    let chat = ChatOptions {
        model: "claude-sonnet-4-5".into(),
        completion_id: "chatcmpl-bench".into(),
        created: 1_760_000_000,
        include_usage: true,
        ..ChatOptions::default()
    };
    let responses = ResponsesOptions {
        response_id: "resp_bench".into(),
        head: r#""id":"resp_bench","object":"response","created_at":1760000000,"model":"claude-sonnet-4-5""#.into(),
        ..ResponsesOptions::default()
    };
    let mut group = c.benchmark_group("translate_per_event");
    group.throughput(Throughput::Bytes(total as u64));
    bench_translator::<ChatEmitter>(&mut group, "chat", &chat, &streams);
    bench_translator::<ResponsesEmitter>(&mut group, "responses", &responses, &streams);
    group.finish();
}

/// One translator over the streams, fed one event at a time.
fn bench_translator<E: Emitter>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    opts: &E::Options,
    streams: &[Vec<Vec<u8>>],
) {
    group.bench_function(name, |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter(|| {
            for s in streams {
                let mut t = Translator::<E>::new(opts);
                for e in s {
                    out.clear();
                    t.feed(black_box(e), &mut out);
                }
                t.finish(&mut out);
            }
        });
    });
}

criterion_group!(benches, bench_tap, bench_estimate, bench_translate);
criterion_main!(benches);
