#!/usr/bin/env bash
# Lists every MUST / MUST NOT clause of spec/PROTOCOL.md that no test references.
#
# A clause counts as tested when its id (e.g. REC-004) appears in a test source:
# integration tests (`*/tests/**`), the Python tests (`bindings/tests/**`) or the
# conformance cases (`conformance/src/cases/**`). Unit tests inside `src/` do not
# count: module docs there name clause ids too, and a doc line is not a test.
#
# Clauses that the spec itself lists in "Appendix C. Not yet implemented" are
# reported as pending and do not fail the run: the spec is honest about them, and
# each must gain a test when its code lands (the run then suggests removing it from
# Appendix C). Every other untested MUST clause fails the run.
#
# Exit status: 0 when every implemented MUST clause is referenced, 1 otherwise.
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
pending=$(sed -n '/^## Appendix C\./,/^## /p' "$spec" | grep -oE '\b[A-Z]+-[0-9]{3}\b' | sort -u || true)

mapfile -t test_files < <(find . \( -path ./target -o -path ./fuzz/target -o -path ./.venv -o -path ./.git \) -prune -o \
  -type f \( -path '*/tests/*.rs' -o -path '*/tests/*/*.rs' -o -path './bindings/tests/*.py' -o -path './conformance/src/cases/*' \) -print | sort)
referenced=$(cat "${test_files[@]}" | grep -oE '\b[A-Z]+-[0-9]{3}\b' | sort -u)

untested=()
waiting=()
stale=()
for clause in "${must_clauses[@]}"; do
  is_pending=0
  grep -qx "$clause" <<<"$pending" && is_pending=1
  if grep -qx "$clause" <<<"$referenced"; then
    [ "$is_pending" = 1 ] && stale+=("$clause")
  elif [ "$is_pending" = 1 ]; then
    waiting+=("$clause")
  else
    untested+=("$clause")
  fi
done

if [ "${#waiting[@]}" -gt 0 ]; then
  echo "clause-trace: ${#waiting[@]} MUST clauses pending implementation (spec Appendix C): ${waiting[*]}"
fi
if [ "${#stale[@]}" -gt 0 ]; then
  echo "clause-trace: listed in Appendix C but now referenced by tests (remove them from Appendix C if implemented): ${stale[*]}"
fi
if [ "${#untested[@]}" -gt 0 ]; then
  echo "clause-trace: ${#untested[@]} of $total MUST clauses have no test:"
  for clause in "${untested[@]}"; do
    line=$(grep -m1 -F "**$clause**" "$spec" | cut -c1-150)
    echo "  $line"
  done
  exit 1
fi
echo "clause-trace: $((total - ${#waiting[@]})) of $total MUST clauses are referenced by tests (${#test_files[@]} test files); ${#waiting[@]} pending"
