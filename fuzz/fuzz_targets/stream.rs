//! Upstream SSE bytes, split where the first input byte says: the decoder, the tap and
//! both translators (chat and Responses) must not panic, must give the same result as
//! one whole chunk, and must meter the stream alike.
#![no_main]

use ethereal_core::openai_chat::{ChatEmitter, ChatOptions};
use ethereal_core::responses::{ResponsesEmitter, ResponsesOptions};
use ethereal_core::translate::{translate_chunks, Emitter};
use ethereal_core::{FinalUsage, SseDecoder, StreamTap};
use libfuzzer_sys::fuzz_target;

fn translate<E: Emitter>(opts: &E::Options, chunks: &[&[u8]]) -> (Vec<u8>, FinalUsage) {
    let (out, t) = translate_chunks::<E>(opts, chunks);
    (out, t.usage())
}

type Run = (Vec<(String, String)>, FinalUsage, Vec<u8>, Vec<u8>);

fn run(chunks: &[&[u8]]) -> Run {
    let mut decoder = SseDecoder::new();
    let mut tap = StreamTap::new();
    let mut events = Vec::new();
    for c in chunks {
        decoder.feed(c, |e| events.push((e.event.to_owned(), e.data.to_owned())));
        tap.feed(c);
    }
    tap.finish();
    let chat_opts = ChatOptions { include_usage: true, ..ChatOptions::default() };
    let (chat, chat_usage) = translate::<ChatEmitter>(&chat_opts, chunks);
    let responses_opts = ResponsesOptions { response_id: "resp_f".into(), ..ResponsesOptions::default() };
    let (responses, responses_usage) = translate::<ResponsesEmitter>(&responses_opts, chunks);
    assert_eq!(chat_usage, responses_usage);
    (events, tap.usage(), chat, responses)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step % 64) + 1;
    let chunks: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(run(&[body]), run(&chunks));
});
