#!/usr/bin/env bash
# Builds the Python package `toolwire` (bindings/) into .venv and checks it: the
# stubs against the built extension (mypy.stubtest), mypy --strict over the package,
# examples and tests, and the pytest suite, whose interop tests run the `toolwire`
# CLI (built here) as the Rust server and client.
#
# Non-interactive; creates .venv with the machine's python3 (or $PYTHON) when
# missing. The extension is built in release mode: unoptimized, the protocol's
# signatures and AEAD make each call about 80 times slower and the suite's 1,000
# concurrent calls alone take about 20 s. Cold build on 2 cores: about 3 to 4 minutes
# (plus the debug CLI if `cargo test --workspace` has not built it); warm: seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
python="$PWD/$venv/bin/python"
# maturin's PEP 517 backend runs `maturin` from PATH.
export VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH"
pip_quiet=(--quiet --disable-pip-version-check --no-input)

"$python" -m pip install "${pip_quiet[@]}" -r bindings/requirements-dev.txt

# A stale extension left by `maturin develop` must not end up in the wheel.
rm -f bindings/python/toolwire/_native*.so
# --no-build-isolation: build with the pinned maturin above (no download); --locked:
# build exactly Cargo.lock.
MATURIN_PEP517_ARGS="--locked" \
    "$python" -m pip install "${pip_quiet[@]}" --no-build-isolation --force-reinstall --no-deps ./bindings

cargo build --locked --quiet -p toolwire-cli
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export TOOLWIRE_CLI="$target_dir/debug/toolwire"

cd bindings
"$python" -m mypy.stubtest toolwire._native
"$python" -m mypy python/toolwire examples tests
"$python" -m pytest
