#!/usr/bin/env bash
# Build the web UI (ui/: sources, package.json + package-lock.json) into
# projecthub/api/static/ui/ with esbuild; commit the result.  `npm ci` installs exactly the
# locked versions (xterm.js, its fit addon, CodeMirror 6, esbuild) into ui/node_modules/.
set -euo pipefail
cd "$(dirname "$0")/../ui"
npm ci --no-audit --no-fund --silent
node build.mjs
