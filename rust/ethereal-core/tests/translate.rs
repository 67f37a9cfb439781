//! Both translators over the recorded corpus give the same bytes however the
//! stream is chunked (any sizes, every split point, a byte at a time) and
//! whatever its line ends (LF, CRLF, CR).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{split_by, streams, translate_chat, translate_responses};
use proptest::prelude::*;

/// A translator run over a stream's chunks.
type Translate = fn(&[&[u8]]) -> Vec<u8>;

/// Each translator, by name.
const TRANSLATORS: [(&str, Translate); 2] =
    [("chat", translate_chat), ("responses", translate_responses)];

#[test]
fn every_split_point_of_small_streams() {
    for (name, data) in streams().iter().filter(|(_, d)| d.len() < 3000) {
        for (kind, translate) in TRANSLATORS {
            let whole = translate(&[data]);
            for cut in 1..data.len() {
                let (a, b) = data.split_at(cut);
                assert_eq!(translate(&[a, b]), whole, "{kind}: {name} split at {cut}");
            }
        }
    }
}

#[test]
fn crlf_and_cr_line_ends_translate_the_same() {
    for (name, data) in streams() {
        let text = String::from_utf8(data.clone()).unwrap();
        for (kind, translate) in TRANSLATORS {
            let whole = translate(&[data]);
            for sep in ["\r\n", "\r"] {
                let other = text.replace('\n', sep);
                assert_eq!(translate(&[other.as_bytes()]), whole, "{kind}: {name} with {sep:?}");
            }
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
        for (_, translate) in TRANSLATORS {
            prop_assert_eq!(translate(&split_by(data, &sizes)), translate(&[data]));
        }
    }

    #[test]
    fn byte_at_a_time_or_random_cut_same_output(pick in 0usize..1000, cut in 0usize..100_000) {
        let (_, data) = &streams()[pick % streams().len()];
        let cut = cut % (data.len() + 1);
        let (a, b) = data.split_at(cut);
        for (_, translate) in TRANSLATORS {
            let whole = translate(&[data]);
            prop_assert_eq!(translate(&[a, b]), whole.clone());
            if data.len() < 4000 {
                let bytes: Vec<&[u8]> = data.chunks(1).collect();
                prop_assert_eq!(translate(&bytes), whole);
            }
        }
    }
}
