#!/usr/bin/env bash
# Side by side with Packer 1.6.6: the SAME template through `packer build` and `amiflow build`
# against the same local moto, counting the EC2 API calls each build makes (moto's recorder),
# wall time, the artifacts each registered (compared attribute by attribute) and anything left
# behind. A measurement, not a test: it is not part of scripts/test.sh and asserts nothing.
#
#   scripts/compare-packer.sh [--keep DIR] [CASE...]
#   CASE: ebs-none ebs-full ebssurrogate ebsvolume instance chroot (default: all)
#
# Each template carries what Packer needs to reach moto (custom_endpoint_ec2,
# skip_credential_validation, skip_metadata_api_check, skip_region_validation except for
# amazon-ebsvolume, which refuses it, fake static keys); amiflow takes the same file as it is.
# moto is reset before every build and warmed in both regions (its first EC2 call per region
# loads the AMI catalogue), so both tools start from the same empty account.
# amazon-instance runs against a throwaway sshd on 127.0.0.1 (ssh_host/ssh_port, an imported
# ssh_keypair_name) with bundle commands that write a manifest and PUT it into moto's S3.
# amazon-chroot (root only: loop devices) runs with this machine as the build host: a host
# instance is launched in moto before each build, and a proxy in front of moto (the templates'
# custom_endpoint_ec2) answers Packer's IMDS requests (/latest/api/token, the instance-identity
# document) for it: Packer 1.6.6 sets custom_endpoint_ec2 as the session endpoint, and its
# ec2metadata client takes that endpoint too (AWS_EC2_METADATA_SERVICE_ENDPOINT is not
# consulted then: pointed at the proxy with custom_endpoint_ec2 = moto, Packer never asks it and
# fails after ~40 s with "Please verify Packer is running on a proper AWS EC2 instance").
# moto also needs DetachVolume's InstanceId, which Packer omits: the proxy adds it. The attached volume is a loop disk with a busybox
# root on partition 1: device_path /dev/sdf (the attach name) and nvme_device_path /dev/loopNp
# (+ mount_partition 1) make both tools mount it. amiflow's copy of the template adds
# chroot_host_instance_id and runs with AMIFLOW_CHROOT_RUN=local AMIFLOW_CHROOT_TEST_DEVICES.
# The same shell provisioner writes a marker that is read back from the disk after each build.
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$AMIFLOW_ROOT/scripts/moto.sh"
"$AMIFLOW_ROOT/scripts/setup.sh" moto packer sshd chroot
cd "$AMIFLOW_ROOT"
cargo build --workspace --bins -q
start_moto
trap stop_moto EXIT
echo "==> moto on $AWS_ENDPOINT_URL; $(packer version | head -1) vs amiflow"
"$AMIFLOW_CACHE/venv/bin/python" "$AMIFLOW_ROOT/scripts/compare_packer.py" \
    --endpoint "$AWS_ENDPOINT_URL" --amiflow "$CARGO_TARGET_DIR/debug/amiflow" "$@"
