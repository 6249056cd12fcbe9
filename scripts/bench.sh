#!/usr/bin/env bash
# Every performance figure of the README in one run, on this machine (a measurement, not a
# test: it asserts nothing and is not part of scripts/test.sh). Idempotent: sets up what it
# needs (scripts/setup.sh), builds what is missing, and prints one table.
#
#   scripts/bench.sh [CASE...]     CASE as scripts/compare-packer.sh takes (default: all)
#
# - EC2 calls and wall time per builder, amiflow against Packer 1.6.6 on the same template
#   and the same moto, with the ratios: scripts/compare-packer.sh (its cases are the builds
#   that run on moto, one or two per builder; `ebs-none` is examples/ebs-basic.json).
# - The Lambda `bootstrap`: size of the debug build, of it stripped, and of the release
#   build (`$CARGO_TARGET_DIR/release/bootstrap`, stripped by the release profile) and
#   its zip when one was built: bench.sh does not start a release build (20-40 min here;
#   `cargo build --release -p amiflow-lambda --bin bootstrap` makes one).
# - Cold start (exec -> first response from a local Runtime API) and peak RSS of each
#   bootstrap: tests/e2e/lambda_runtime.rs `finalize_answers_an_invoke_and_names_its_errors`,
#   which prints both, with AMIFLOW_BIN_DIR pointing at the debug or the release binary.
# - Deployed: state transitions (Step Functions' billing unit), Lambda invocations and AWS
#   calls per build in the simulated account (tests/e2e/simacct.rs, which prints them), and
#   how soon after EC2's event an awaiting build moves on. aws-local-stepfunctions retries
#   at once there, so a wait that is polled (the copies in another region, or every wait
#   when the events are lost: `ebs-no-events`) counts many more polls than AWS would.
# - The template paths fuzzed (JSON and HCL2): scripts/fuzz.sh with a fixed number of cases,
#   which reports the crashes found (none, or it says which input).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$AMIFLOW_ROOT"
# The build scripts/test.sh makes (clippy as the workspace compiler): shared, not redone.
export RUSTC_WORKSPACE_WRAPPER="${RUSTC_WORKSPACE_WRAPPER-$(command -v clippy-driver || true)}"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
out=$(mktemp -d "${TMPDIR:-/tmp}/amiflow-bench.XXXXXX")

echo "==> EC2 calls and wall time against Packer 1.6.6 (scripts/compare-packer.sh)"
"$AMIFLOW_ROOT/scripts/compare-packer.sh" --keep "$out/compare" "$@" >"$out/compare.txt"

echo "==> the Lambda bootstrap"
cargo test --workspace --no-run -q 2>/dev/null || cargo test --workspace --no-run
size_mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
# Cold start and peak RSS of the bootstrap in directory $1, as the test prints them.
launch() {
    AMIFLOW_BIN_DIR="$1" cargo test --workspace -q -- finalize_answers_an_invoke_and_names_its_errors --nocapture 2>/dev/null |
        sed -n 's/.*cold start \([0-9.]*\) ms.*peak RSS \([0-9]*\) KiB.*/\1 ms \/ \2 KiB/p' | head -1
}
rows=()
debug="$CARGO_TARGET_DIR/debug/bootstrap"
strip -o "$out/bootstrap.debug.stripped" "$debug"
rows+=("bootstrap debug|$(size_mb "$debug") ($(size_mb "$out/bootstrap.debug.stripped") stripped)|$(launch "$(dirname "$debug")")")
release="$CARGO_TARGET_DIR/release/bootstrap"
if [ -x "$release" ]; then
    (cd "$(dirname "$release")" && rm -f "$out/bootstrap.zip" && zip -q -9 "$out/bootstrap.zip" bootstrap)
    rows+=("bootstrap release (stripped)|$(size_mb "$release"), $(size_mb "$out/bootstrap.zip") zipped|$(launch "$(dirname "$release")")")
else
    rows+=("bootstrap release|not built (cargo build --release -p amiflow-lambda --bin bootstrap)|-")
fi

echo "==> deployed, in the simulated account (tests/e2e/simacct.rs)"
cargo test -p amiflow-tests --test e2e -q -- simacct --nocapture >"$out/simacct.txt" 2>&1 || echo "(the simulated account's test failed: $out/simacct.txt)"

echo "==> fuzzing the template paths (scripts/fuzz.sh)"
"$AMIFLOW_ROOT/scripts/fuzz.sh" 5000 >"$out/fuzz.txt" 2>&1 || true

echo
echo "==> summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
sed -n '/^case /,/^$/p' "$out/compare.txt"
printf '%-30s %-40s %s\n' "binary" "size" "cold start / peak RSS"
for r in "${rows[@]}"; do IFS='|' read -r a b c <<<"$r"; printf '%-30s %-40s %s\n' "$a" "$b" "$c"; done
echo "deployed builds (simulated account; wall time is ALS with Wait/Retry at 0 s, not AWS's):"
sed -n 's/^simacct: \(simacct-[a-z-]*:\{0,1\}\|scheduled-[0-9a-f-]*\) /  \1 /p' "$out/simacct.txt"
grep -E '^simacct:   amazon-(ebs|chroot)\.Await' "$out/simacct.txt" | sed 's/^simacct: //' || true
grep -E '^simacct: (aborted in|chroot build stopped)' "$out/simacct.txt" | sed 's/^simacct: /  /' || true
grep -E '^fuzz: .*(crashes|CRASH)' "$out/fuzz.txt" || echo "fuzz: no result (see $out/fuzz.txt)"
echo "details (per-action counts and why they differ: $out/compare.txt; recordings, logs: $out/compare)"
