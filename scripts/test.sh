#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, integration over loopback
# sockets, doc tests, vectors, fuzz-corpus smoke tests, conformance suite, the demo),
# the Python package's tests (in a virtualenv this script creates under .venv) and the
# spec clause trace.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
# Optional features, each with its own tests: Cedar policies as the authorizer.
cargo test -p toolwire-server --features cedar --test cedar_policy --locked
scripts/python-test.sh
scripts/clause-trace.sh
