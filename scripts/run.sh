#!/usr/bin/env bash
# run.sh — the main job (what `make run` does after deps and build): start
# banger's daemon on demand and show that it runs this build.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
"$BIN/banger" --version
"$BIN/banger" daemon status
