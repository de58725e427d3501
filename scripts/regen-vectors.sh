#!/usr/bin/env bash
# Regenerates spec/vectors/*.json from fixed keys and seeds by running this
# implementation (protocol/tests/vectors_generate.rs), then replays them with the
# independent checker (protocol/tests/vectors_check.rs).
#
# Run it after a deliberate change to the wire format or to the vector set; review
# the diff of spec/vectors/ before committing. Without the variable, the generator
# test fails whenever the committed files would change.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLWIRE_REGENERATE_VECTORS=1 cargo test -p toolwire-protocol --test vectors_generate -- --nocapture
cargo test -p toolwire-protocol --test vectors_generate --test vectors_check
