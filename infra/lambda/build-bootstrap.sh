#!/usr/bin/env bash
# Builds amiflow's Lambda `bootstrap` for ARCH (x86_64 | arm64) and links it into DEST:
# what `sam build` runs for every function (bootstrap.mk). Refuses a binary whose ELF
# machine is not ARCH, the architecture the stack's functions are declared with.
#   infra/lambda/build-bootstrap.sh ARCH DEST
#
# The binary, by the first way that applies:
#   AMIFLOW_BOOTSTRAP=path    a bootstrap built already (checked all the same);
#   ARCH is this machine's    cargo build --release --locked --bin bootstrap;
#   cargo-lambda installed    cargo lambda build --release --arm64|--x86-64 (cross, with Zig);
#   otherwise                 cargo build --release --target <triple> (needs that target's
#                             linker; infra/README.md says how).
# Cargo does nothing when the binary is up to date, so the 2nd to 46th function cost a
# second each. CARGO_TARGET_DIR is honoured.
set -euo pipefail

die() { printf 'build-bootstrap: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 x86_64|arm64 DEST"
arch=$1 dest=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
case "$arch" in
    x86_64) machine=62 triple=x86_64-unknown-linux-gnu lambda_flag=--x86-64 host_names="x86_64 amd64" ;;
    arm64) machine=183 triple=aarch64-unknown-linux-gnu lambda_flag=--arm64 host_names="aarch64 arm64" ;;
    *) die "unknown architecture '$arch': the stack's Architecture is x86_64 or arm64" ;;
esac
target_dir=${CARGO_TARGET_DIR:-$root/target}

# The ELF machine of $1, by name (x86_64, arm64, …), or why it is not a Linux binary.
elf_machine() {
    local bytes
    bytes=$(od -An -v -tu1 -N20 "$1" | tr -s ' \n' ' ')
    read -r -a b <<<"$bytes"
    if [ "${#b[@]}" -lt 20 ] || [ "${b[0]} ${b[1]} ${b[2]} ${b[3]}" != "127 69 76 70" ]; then
        echo "not an ELF binary"
        return
    fi
    case $((b[18] + 256 * b[19])) in
        62) echo x86_64 ;;
        183) echo arm64 ;;
        3) echo i386 ;;
        40) echo arm ;;
        *) echo "ELF machine $((b[18] + 256 * b[19]))" ;;
    esac
}

cd "$root"
if [ -n "${AMIFLOW_BOOTSTRAP:-}" ]; then
    built=$AMIFLOW_BOOTSTRAP
    [ -f "$built" ] || die "AMIFLOW_BOOTSTRAP=$built does not exist"
    echo "build-bootstrap: using $built (AMIFLOW_BOOTSTRAP)"
elif [[ " $host_names " == *" $(uname -m) "* ]]; then
    echo "build-bootstrap: cargo build --release --locked --bin bootstrap ($arch, this machine's)"
    cargo build --release --locked --bin bootstrap 2>&1
    built=$target_dir/release/bootstrap
elif cargo lambda --version >/dev/null 2>&1; then
    echo "build-bootstrap: cargo lambda build --release $lambda_flag --bin bootstrap"
    cargo lambda build --release "$lambda_flag" --bin bootstrap 2>&1
    built=$target_dir/lambda/bootstrap/bootstrap
else
    echo "build-bootstrap: cargo build --release --locked --target $triple --bin bootstrap (cross)"
    cargo build --release --locked --target "$triple" --bin bootstrap 2>&1 ||
        die "cross build for $arch failed: install cargo-lambda (infra/README.md), or the $triple target and its linker"
    built=$target_dir/$triple/release/bootstrap
fi

[ -f "$built" ] || die "$built was not built"
found=$(elf_machine "$built")
[ "$found" = "$arch" ] ||
    die "$built is $found, but the stack's Architecture is $arch: build for $arch (infra/README.md), or deploy with --parameter-overrides Architecture=$found"

# Staged next to the build output (infra/build/, git-ignored) so that every function's
# artifact is a hard link to one file rather than a copy of it.
staged_dir=$root/infra/build/lambda/$arch
mkdir -p "$staged_dir" "$dest"
if ! cmp -s "$built" "$staged_dir/bootstrap" 2>/dev/null; then
    # Replaced in one rename: `sam build --parallel` runs several of these at once.
    tmp=$(mktemp "$staged_dir/bootstrap.XXXXXX")
    cp "$built" "$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "$staged_dir/bootstrap"
fi
ln -f "$staged_dir/bootstrap" "$dest/bootstrap" 2>/dev/null || cp "$staged_dir/bootstrap" "$dest/bootstrap"
echo "build-bootstrap: $dest/bootstrap ($arch, $(wc -c <"$staged_dir/bootstrap") bytes)"
