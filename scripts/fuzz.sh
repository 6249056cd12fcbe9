#!/usr/bin/env bash
# Fuzzes the template paths with the property tests of functions/template/tests/fuzz.rs: JSON
# (text → parse → variables → interpolation → typed configs → render_later) and HCL2 (text →
# lower → the JSON path), for many more cases than the test suite runs (256 each). A crash is a panic (proptest shrinks it and prints the
# smallest input) or the process dying (stack overflow, memory): both end in a non-zero exit.
#
#   scripts/fuzz.sh [CASES]        (default 20000; or set PROPTEST_CASES)
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$AMIFLOW_ROOT"
cases="${1:-${PROPTEST_CASES:-20000}}"
echo "==> fuzzing the template path with $cases cases"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
PROPTEST_CASES="$cases" cargo test -q -p amiflow-template --test fuzz -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
ran="$(sed -n 's/.*fuzz: \(crash after \)\{0,1\}\([0-9]*\) cases.*/\2/p' "$log" | head -1)"
hcl2="$(sed -n 's/.*fuzz: hcl2: \(crash after \)\{0,1\}\([0-9]*\) cases.*/\2/p' "$log" | head -1)"
if [ "$status" -eq 0 ] && [ -n "$ran" ] && [ -n "$hcl2" ]; then
    echo "fuzz: $ran JSON and $hcl2 HCL2 template cases run, 0 crashes"
    exit 0
fi
echo "fuzz: CRASH (exit status $status) after ${ran:-an unknown number of} cases: see the output above" >&2
exit 1
