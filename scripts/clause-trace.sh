#!/usr/bin/env bash
# Lists every MUST / MUST NOT clause of spec/PROTOCOL.md that no test references.
#
# A clause counts as tested when its id (e.g. REC-004) appears in a test source:
# integration tests (`*/tests/**`), the Python tests (`bindings/tests/**`) or the
# conformance cases (`conformance/src/cases/**`). Unit tests inside `src/` do not
# count: module docs there name clause ids too, and a doc line is not a test.
#
# Exit status: 0 when every MUST clause is referenced, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

spec=spec/PROTOCOL.md
[ -f "$spec" ] || { echo "clause-trace: $spec is missing" >&2; exit 1; }

mapfile -t must_clauses < <(grep -oE '\*\*[A-Z]+-[0-9]{3}\*\* \(MUST( NOT)?\)' "$spec" | grep -oE '[A-Z]+-[0-9]{3}' | sort -u)
total=${#must_clauses[@]}
if [ "$total" -eq 0 ]; then
  echo "clause-trace: no MUST clauses found in $spec (format: **XXX-NNN** (MUST): ...)" >&2
  exit 1
fi

mapfile -t test_files < <(find . \( -path ./target -o -path ./fuzz/target -o -path ./.venv -o -path ./.git \) -prune -o \
  -type f \( -path '*/tests/*.rs' -o -path '*/tests/*/*.rs' -o -path './bindings/tests/*.py' -o -path './conformance/src/cases/*' \) -print | sort)
referenced=$(cat "${test_files[@]}" | grep -oE '\b[A-Z]+-[0-9]{3}\b' | sort -u)

untested=()
for clause in "${must_clauses[@]}"; do
  grep -qx "$clause" <<<"$referenced" || untested+=("$clause")
done

if [ "${#untested[@]}" -gt 0 ]; then
  echo "clause-trace: ${#untested[@]} of $total MUST clauses have no test:"
  for clause in "${untested[@]}"; do
    line=$(grep -m1 -F "**$clause**" "$spec" | cut -c1-150)
    echo "  $line"
  done
  exit 1
fi
echo "clause-trace: all $total MUST clauses are referenced by tests (${#test_files[@]} test files)"
