#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, integration, doc tests,
# vectors, fuzz-corpus smoke tests) and the spec clause trace.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
scripts/clause-trace.sh
