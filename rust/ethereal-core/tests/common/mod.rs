//! Shared helpers: locating the recorded fixture corpus.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

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
