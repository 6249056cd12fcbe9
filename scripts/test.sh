#!/usr/bin/env bash
# Runs every test: sets up the local stack (idempotent), then the whole workspace's tests,
# with rustfmt and clippy on the way. Tests that need root (loop devices, chroot) skip with
# a visible reason when not root.
set -euo pipefail
. "$(dirname "$0")/env.sh"
"$AMIFLOW_ROOT/scripts/setup.sh" all
cd "$AMIFLOW_ROOT"
cargo fmt --all --check
# Clippy as the compiler of the workspace's own crates (what `cargo clippy` does inside),
# on the very build the tests use: dependencies are compiled once, not again in check mode,
# and `-D warnings` fails the run on any lint, in every target the tests build.
export RUSTC_WORKSPACE_WRAPPER="${RUSTC_WORKSPACE_WRAPPER-$(command -v clippy-driver || true)}"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
[ -n "$RUSTC_WORKSPACE_WRAPPER" ] || echo "test.sh: clippy-driver not found (rustup component add clippy): lints skipped" >&2
# The end-to-end tests drive the real `amiflow` and `bootstrap` binaries, which
# `cargo test` does not build for another package's tests. Both commands resolve the same
# features (no dev-dependency changes an SDK crate's), so the AWS SDK is compiled once.
cargo build --workspace --bins
exec cargo test --workspace "$@"
