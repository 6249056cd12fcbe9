#!/usr/bin/env bash
# Runs every test: sets up the local stack (idempotent), then the whole workspace's tests.
# Tests that need root (loop devices, chroot) skip with a visible reason when not root.
set -euo pipefail
. "$(dirname "$0")/env.sh"
"$AMIFLOW_ROOT/scripts/setup.sh" all
cd "$AMIFLOW_ROOT"
# One `cargo test --workspace` builds the binaries too, with the same features: the AWS SDK
# is compiled once (a separate `cargo build` would compile it a second time).
exec cargo test --workspace "$@"
