#!/usr/bin/env bash
# Copies the console's browser libraries from an npm install (assets/package.json, pinned by
# assets/package-lock.json) into the Python package, where they are committed and shipped in
# the wheel: the console never loads anything from another host.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=python/ethereal/dashboard/static/vendor
(cd assets && npm ci --no-audit --no-fund --loglevel=error)
mkdir -p "$dest"
cp assets/node_modules/uplot/dist/uPlot.iife.min.js "$dest/uPlot.iife.min.js"
cp assets/node_modules/uplot/dist/uPlot.min.css "$dest/uPlot.min.css"
cp assets/node_modules/uplot/LICENSE "$dest/uPlot.LICENSE"
version=$(node -p 'require("./assets/node_modules/uplot/package.json").version')
echo "uPlot $version (MIT), copied from npm by scripts/vendor-console-assets.sh" > "$dest/VERSIONS.txt"
echo "vendored into $dest: $(ls "$dest" | tr '\n' ' ')"
