#!/usr/bin/env bash
# The HCL2 front end's cost: a 50-source folder parsed and lowered to the JSON template,
# next to the JSON path preparing the same 50 builders (in-process, release build, median
# of 20 runs). The front end's target is under 50 ms for parse + lower.
#   scripts/bench-hcl2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p amiflow-template --release --lib hcl2::bench -- --ignored --nocapture 2>&1 \
  | grep -E '^  (HCL2|JSON)|^[0-9]+ sources|test result|panicked'
