#!/usr/bin/env bash
# Mirrors the Dockerfile's install steps without a Docker engine: build the wheel with maturin
# (as the build stage does), install it into a fresh venv (as the runtime stage does), then start
# `ethereal serve` from that install on the embedded default, send one real request, and stop it
# as `docker stop` does (SIGTERM: drain, flush, exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rc=$?; [ -z "${pid:-}" ] || kill "$pid" 2>/dev/null || true; [ $rc -eq 0 ] || cat "$work/out.log" >&2; rm -rf "$work"' EXIT
python3 -m venv "$work/build"
"$work/build/bin/pip" install --quiet "maturin>=1.7,<2"
"$work/build/bin/maturin" build --release --out "$work/wheels" --quiet 2>&1 | tail -n 2
python3 -m venv "$work/runtime"
"$work/runtime/bin/pip" install --quiet "$work"/wheels/*.whl
port=$("$work/runtime/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$work"
ETHEREAL_DATA_DIR="$work/data" ETHEREAL_DRAIN_DELAY=0.5 "$work/runtime/bin/ethereal" serve --port "$port" >"$work/out.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q "curl -s" "$work/out.log" 2>/dev/null && curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
cmd=$(grep "curl -s" "$work/out.log" | sed 's/^ *//')
reply=$(eval "$cmd")
# today's models think by default: the answer is the text block after the thinking one
echo "$reply" | "$work/runtime/bin/python" -c 'import json,sys; m=json.load(sys.stdin); t=[b["text"] for b in m["content"] if b["type"]=="text"]; assert m["type"]=="message" and t and t[0], m; print("wheel smoke: ok,", m["usage"]["output_tokens"], "output tokens")'
# the console's templates and vendored assets ship in the wheel (nothing from another host)
curl -sf "http://127.0.0.1:$port/estimate" | grep -q 'id="accuracy"'
curl -sf "http://127.0.0.1:$port/dashboard/static/vendor/uPlot.iife.min.js" >/dev/null
curl -sf "http://127.0.0.1:$port/dashboard/static/console.css" >/dev/null
echo "wheel smoke: console pages and assets served from the wheel"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pid=
[ "$rc" -eq 0 ] || { echo "wheel smoke: SIGTERM ended the gateway with status $rc, not 0" >&2; exit 1; }
echo "wheel smoke: SIGTERM → clean exit 0"
