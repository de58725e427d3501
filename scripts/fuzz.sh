#!/usr/bin/env bash
# Fuzz every toolwire-protocol target with cargo-fuzz (libFuzzer), one after another.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS  time per target (default 60)
#   TARGET   targets to run (default: every target of `cargo fuzz list`, i.e. every
#            entry of toolwire_protocol::fuzzing::TARGETS)
#
# Requires the nightly toolchain (`rustup toolchain install nightly`); installs
# cargo-fuzz with `cargo install cargo-fuzz --locked` when it is missing.
#
# Each target starts from the committed seeds in fuzz/corpus/<target>/ (read only)
# plus a working corpus in fuzz/target/work-corpus/<target>/ (kept between runs,
# git-ignored), so new inputs found by libFuzzer never land in the committed corpus.
# Logs go to fuzz/target/fuzz-logs/<target>.log, crashes to fuzz/artifacts/<target>/.
# Targets run one at a time (-jobs/-workers are not used: the machine is shared).
#
# Prints one summary line per target: runs executed, final coverage (`cov`, edges)
# and features (`ft`) from libFuzzer's last status line, corpus size, and
# OK / CRASH (with the artifact path) / FAILED (did not build or start).
# Exits non-zero if any target crashed or failed to run. To reproduce a crash:
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<crash-file>
# A fixed crash input belongs in fuzz/corpus/<target>/crash_<short>.bin, where the
# stable smoke test (protocol/tests/fuzz_smoke.rs) replays it on every test run.
#
# Extra libFuzzer flags can be passed through FUZZ_FLAGS, e.g.
#   FUZZ_FLAGS="-max_len=65552" scripts/fuzz.sh 300 sealed_record

set -euo pipefail

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
cd "$fuzz_dir"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "the nightly toolchain is required: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

log_dir="$fuzz_dir/target/fuzz-logs"
mkdir -p "$log_dir"
failed=0
summary=()
for target in "${targets[@]}"; do
    work="$fuzz_dir/target/work-corpus/$target"
    mkdir -p "$work" "$fuzz_dir/corpus/$target"
    log="$log_dir/$target.log"
    echo "fuzzing $target for ${seconds}s (log: ${log#"$root"/})" >&2
    status=OK
    # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
    if ! cargo +nightly fuzz run "$target" "$work" "$fuzz_dir/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        ${FUZZ_FLAGS:-} >"$log" 2>&1; then
        failed=1
        if grep -q 'Test unit written to' "$log"; then
            status=CRASH
        else
            status=FAILED # did not build or start; see the log
        fi
    fi
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    runs="$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "$log" | tail -n 1)"
    [ -n "$runs" ] || runs="$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")"
    cov="$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")"
    ft="$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")"
    corp="$(sed -nE 's/.* corp: ([^ ]+).*/\1/p' <<<"$last")"
    line="$(printf '%-22s runs=%-10s cov=%-6s ft=%-6s corp=%-12s %s' \
        "$target" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$status")"
    if [ "$status" = CRASH ]; then
        line="$line $(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)"
    elif [ "$status" = FAILED ]; then
        line="$line (see ${log#"$root"/})"
    fi
    echo "$line" >&2
    summary+=("$line")
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '%s\n' "${summary[@]}"
exit "$failed"
