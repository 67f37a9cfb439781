#!/usr/bin/env bash
# Longer fuzzing runs than `make test`, each bounded in time (FUZZ_SECONDS per stage, default 300):
#   1. the Rust property tests (tests/fuzz_props.rs) with PROPTEST_CASES cases per property (default 20000);
#   2. the cargo-fuzz targets (fuzz/), when cargo-fuzz and a nightly toolchain are installed;
#   3. schemathesis from Anthropic's OpenAPI spec against the gateway in front of the sim,
#      ETHEREAL_SCHEMATHESIS_EXAMPLES cases per operation (default 200).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_STAGE="${FUZZ_SECONDS:-300}"
CASES="${PROPTEST_CASES:-20000}"
EXAMPLES="${ETHEREAL_SCHEMATHESIS_EXAMPLES:-200}"

echo "== proptest: ${CASES} cases per property (at most ${SECONDS_PER_STAGE}s)"
PROPTEST_CASES="$CASES" timeout "$SECONDS_PER_STAGE" cargo test --release -p ethereal-core --test fuzz_props

if cargo fuzz --help >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q nightly; then
  for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
    per=$(( SECONDS_PER_STAGE / 4 ))
    echo "== cargo fuzz: ${target} for ${per}s"
    cargo +nightly fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$per" -rss_limit_mb=2048
  done
else
  echo "== cargo fuzz: skipped (install with: cargo install cargo-fuzz; rustup toolchain install nightly)"
fi

echo "== schemathesis: ${EXAMPLES} cases per operation (at most ${SECONDS_PER_STAGE}s)"
ETHEREAL_SCHEMATHESIS_EXAMPLES="$EXAMPLES" timeout "$SECONDS_PER_STAGE" \
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_schemathesis.py
