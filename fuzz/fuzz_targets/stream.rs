//! Upstream SSE bytes, split where the first input byte says: the decoder, the tap and
//! the chat translator must not panic, and must give the same result as one whole chunk.
#![no_main]

use ethereal_core::openai_chat::{ChatOptions, ChatTranslator};
use ethereal_core::{SseDecoder, StreamTap};
use libfuzzer_sys::fuzz_target;

fn run(chunks: &[&[u8]]) -> (Vec<(String, String)>, ethereal_core::FinalUsage, Vec<u8>) {
    let mut decoder = SseDecoder::new();
    let mut tap = StreamTap::new();
    let mut chat = ChatTranslator::new(&ChatOptions { include_usage: true, ..ChatOptions::default() });
    let mut events = Vec::new();
    let mut out = Vec::new();
    for c in chunks {
        decoder.feed(c, |e| events.push((e.event.to_owned(), e.data.to_owned())));
        tap.feed(c);
        chat.feed(c, &mut out);
    }
    tap.finish();
    chat.finish(&mut out);
    (events, tap.usage(), out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step % 64) + 1;
    let chunks: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(run(&[body]), run(&chunks));
});
