#!/usr/bin/env bash
# Runs every test: sets up the local stack (idempotent), then the whole workspace's tests.
# Tests that need root (loop devices, chroot) skip with a visible reason when not root.
set -euo pipefail
. "$(dirname "$0")/env.sh"
"$AMIFLOW_ROOT/scripts/setup.sh" all
cd "$AMIFLOW_ROOT"
# The end-to-end tests drive the real `amiflow` and `bootstrap` binaries, which
# `cargo test` does not build for another package's tests. Both commands resolve the same
# features (no dev-dependency changes an SDK crate's), so the AWS SDK is compiled once.
cargo build --workspace --bins
exec cargo test --workspace "$@"
