#!/usr/bin/env bash
# The demo: bakes an AMI from examples/ebs-basic.json with the local engine against a local
# AWS emulator (moto) — no AWS account, nothing leaves this machine.
#   scripts/demo.sh [TEMPLATE] [amiflow build options...]
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$AMIFLOW_ROOT/scripts/moto.sh"
"$AMIFLOW_ROOT/scripts/setup.sh" moto
cd "$AMIFLOW_ROOT"
template="${1:-examples/ebs-basic.json}"
[ $# -gt 0 ] && shift

echo "==> building amiflow (first time: several minutes, the AWS SDK is large; cargo shows its progress)"
# Not -q: on a fresh machine cargo's own progress is all there is to see for minutes.
cargo build --workspace --bins
amiflow="$CARGO_TARGET_DIR/debug/amiflow"

start_moto
trap stop_moto EXIT
echo "==> local AWS emulator (moto) on $AWS_ENDPOINT_URL"
echo "==> amiflow build $template $*"
"$amiflow" build "$template" "$@"

echo "==> what the emulator holds now"
"$AMIFLOW_CACHE/venv/bin/python" - "$AWS_ENDPOINT_URL" <<'PY'
import sys, boto3
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-east-1")
tag = [{"Name": "tag-key", "Values": ["amiflow:build"]}]
images = ec2.describe_images(Owners=["self"])["Images"]
for i in images:
    print(f"  image    {i['ImageId']}  {i['Name']}  {i['State']}")
live = [i for r in ec2.describe_instances(Filters=tag)["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"]
print(f"  instances still running: {len(live)}")
print(f"  temporary security groups left: {len(ec2.describe_security_groups(Filters=tag)['SecurityGroups'])}")
print(f"  temporary key pairs left: {len(ec2.describe_key_pairs(Filters=tag)['KeyPairs'])}")
PY
