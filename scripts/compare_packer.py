"""Packer 1.6.6 vs amiflow on the same templates against the same moto: EC2 calls, wall time,
artifacts. Driven by scripts/compare-packer.sh (which starts moto and builds amiflow); run it
with the venv's python: boto3 is there.

    compare_packer.py --endpoint URL --amiflow PATH [CASE...]

Each case is ONE template: the Packer flavour carries the keys Packer needs to talk to moto
(custom_endpoint_ec2, skip_*_validation, skip_metadata_api_check, fake static keys); amiflow
takes the very same file (it accepts those keys). Before each build moto is reset and warmed
(the first EC2 call per region loads moto's AMI catalogue, ~2 s), then the recorder counts
every request the build makes. Calls are split by service from the SigV4 scope; the Action
comes from the form body (query protocol) or X-Amz-Target (JSON protocol).
"""
import argparse
import base64
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
import urllib.error
import urllib.parse
import urllib.request

import boto3

REGION = "us-east-1"
COPY_REGION = "us-west-2"
AMZN2 = "ami-0f8848d57eb4fe2d2"
SHARE_USER = "210987654321"
BUCKET = "peer-bundles"


def http(endpoint, method, path, body=b""):
    req = urllib.request.Request(endpoint + path, data=body if method == "POST" else None, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def amzn2_filter():
    return {"filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2", "root-device-type": "ebs"},
            "owners": ["amazon"], "most_recent": True}


def peer_keys(endpoint, builder):
    keys = {"access_key": "testing", "secret_key": "testing", "custom_endpoint_ec2": endpoint,
            "skip_credential_validation": True, "skip_metadata_api_check": True}
    # amazon-ebsvolume in Packer 1.6.6 refuses skip_region_validation (unknown key).
    if builder != "amazon-ebsvolume":
        keys["skip_region_validation"] = True
    return keys


# --- the cases -------------------------------------------------------------------------------

def case_ebs_none(env):
    return {"type": "amazon-ebs", "region": REGION, "source_ami": AMZN2, "instance_type": "t3.micro",
            "communicator": "none", "ami_name": "peer-ebs-{{timestamp}}"}


def case_ebs_full(env):
    return {"type": "amazon-ebs", "region": REGION, "source_ami_filter": amzn2_filter(),
            "instance_type": "t3.micro", "communicator": "none",
            "ami_name": "peer-ebs-full-{{timestamp}}", "ami_description": "full on {{ .SourceAMIName }}",
            "ami_regions": [COPY_REGION], "ami_users": [SHARE_USER], "ami_groups": ["all"],
            "snapshot_users": [SHARE_USER], "ena_support": True,
            "tags": {"Name": "peer-full", "Base": "{{ .SourceAMIName }}"},
            "snapshot_tags": {"Name": "peer-full-snap"},
            "run_tags": {"Name": "peer-full-build"}, "run_volume_tags": {"Name": "peer-full-vol"},
            "launch_block_device_mappings": [
                {"device_name": "/dev/xvda", "volume_size": 10, "volume_type": "gp2", "delete_on_termination": True},
                {"device_name": "/dev/sdf", "volume_size": 4, "volume_type": "gp2", "delete_on_termination": True}],
            "ami_block_device_mappings": [{"device_name": "/dev/sdb", "virtual_name": "ephemeral0"}]}


def case_ebssurrogate(env):
    return {"type": "amazon-ebssurrogate", "region": REGION, "source_ami_filter": amzn2_filter(),
            "instance_type": "t3.micro", "communicator": "none",
            "launch_block_device_mappings": [
                {"device_name": "/dev/xvdf", "volume_size": 8, "volume_type": "gp2", "delete_on_termination": True},
                {"device_name": "/dev/xvdg", "volume_size": 4, "volume_type": "gp2", "delete_on_termination": True}],
            "ami_root_device": {"source_device_name": "/dev/xvdf", "device_name": "/dev/xvda",
                                "delete_on_termination": True, "volume_size": 8, "volume_type": "gp2"},
            "ami_virtualization_type": "hvm", "ena_support": True,
            "tags": {"Name": "peer-surrogate"}, "run_volume_tags": {"Building": "yes"},
            "ami_name": "peer-surrogate-{{timestamp}}", "ami_regions": [COPY_REGION]}


def case_ebsvolume(env):
    return {"type": "amazon-ebsvolume", "region": REGION, "source_ami_filter": amzn2_filter(),
            "instance_type": "t3.micro", "communicator": "none",
            "run_volume_tags": {"Building": "true"},
            "ebs_volumes": [
                {"device_name": "/dev/xvdf", "volume_type": "gp2", "volume_size": 10, "delete_on_termination": False,
                 "tags": {"Name": "dataset"}},
                {"device_name": "/dev/xvdg", "volume_type": "gp2", "volume_size": 2, "delete_on_termination": False,
                 "tags": {"Name": "scratch"}}]}


def case_instance(env):
    sshd = env["sshd"]
    dest = os.path.join(sshd.dir, "bundle")
    vol = ("mkdir -p {{.Destination}} && test -s {{.KeyPath}} && test -s {{.CertPath}} && "
           "printf '<manifest account=\"{{.AccountId}}\"/>' > {{.Destination}}/{{.Prefix}}.manifest.xml && "
           "echo part0 > {{.Destination}}/{{.Prefix}}.part.00")
    upload = ("m={{.ManifestPath}}; for f in $m ${m%.manifest.xml}.part.00; do "
              "curl -sf -T $f " + env["endpoint"] + "/{{.BucketName}}/$(basename $f) >/dev/null || exit 1; done")
    return {"type": "amazon-instance", "region": REGION, "source_ami_filter": amzn2_filter(),
            "instance_type": "m3.medium", "communicator": "ssh",
            "ssh_host": "127.0.0.1", "ssh_port": sshd.port, "ssh_username": sshd.user,
            "ssh_keypair_name": sshd.keypair_name, "ssh_private_key_file": sshd.client_key,
            "account_id": "0123-4567-0890", "s3_bucket": BUCKET,
            "x509_cert_path": sshd.cert, "x509_key_path": sshd.key,
            "x509_upload_path": sshd.x509_dir,
            "bundle_destination": dest, "bundle_prefix": "peer-{{timestamp}}",
            "bundle_vol_command": vol, "bundle_upload_command": upload,
            "ami_name": "peer-instance-{{timestamp}}", "ami_virtualization_type": "hvm",
            "tags": {"Name": "peer-instance"}}


def case_chroot(env):
    """The host instance (launched in moto before each build) is this machine: Packer finds it
    through the IMDS answers of the proxy in front of moto, amiflow by chroot_host_instance_id
    (added to its copy of the template). EC2 attaches the volume as /dev/sdf, which never
    appears here: nvme_device_path points both tools' mount at the loop disk's partition
    instead (…p + mount_partition 1), as on a Nitro host."""
    disk = env["disk"]
    return {"type": "amazon-chroot", "region": REGION, "source_ami": AMZN2,
            "ami_name": "peer-chroot-{{timestamp}}",
            "device_path": "/dev/sdf", "nvme_device_path": disk.device + "p", "mount_partition": "1",
            "mount_path": os.path.join(disk.dir, "mnt", "{{.Device}}"),
            "copy_files": ["/etc/resolv.conf"],
            "root_volume_tags": {"Purpose": "peer chroot"},
            "tags": {"Name": "peer-chroot"},
            "_provisioners": [{"type": "shell", "inline": [f"echo built > {MARKER}", "test -s /etc/resolv.conf"]}]}


CASES = {
    "ebs-none": ("amazon-ebs", "communicator none, one region", case_ebs_none),
    "ebs-full": ("amazon-ebs", "filter, copy, users/groups, tags, bdm, ENA", case_ebs_full),
    "ebssurrogate": ("amazon-ebssurrogate", "root volume swap, copy", case_ebssurrogate),
    "ebsvolume": ("amazon-ebsvolume", "two kept volumes", case_ebsvolume),
    "instance": ("amazon-instance", "SSH bundle, S3 manifest", case_instance),
    "chroot": ("amazon-chroot", "loop disk, IMDS proxy, shell marker", case_chroot),
}


# --- throwaway sshd (for amazon-instance) ----------------------------------------------------

class Sshd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="peer-sshd-")
        self.port = free_port()
        host = os.path.join(self.dir, "host_ed25519")
        self.client_key = os.path.join(self.dir, "client_rsa")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host], check=True)
        # RSA: Packer 1.6.6's x/crypto handles it everywhere; moto's ImportKeyPair checks the format.
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", self.client_key], check=True)
        shutil.copy(self.client_key + ".pub", os.path.join(self.dir, "authorized_keys"))
        os.makedirs("/run/sshd", exist_ok=True)
        cfg = os.path.join(self.dir, "sshd_config")
        with open(cfg, "w") as f:
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {self.dir}/sshd.pid\n"
                    f"AuthorizedKeysFile {self.dir}/authorized_keys\nUsePAM no\nStrictModes no\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                    "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
        subprocess.run(["/usr/sbin/sshd", "-t", "-f", cfg], check=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        with open(self.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nFAKECERT\n-----END CERTIFICATE-----\n")
        with open(self.key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nFAKEKEY\n-----END PRIVATE KEY-----\n")
        self.keypair_name = "peer-ssh"
        # Packer scp's the cert and key INTO x509_upload_path: it must already be a directory
        # (on a real instance it is /tmp), or scp creates a file of that name.
        self.x509_dir = os.path.join(self.dir, "x509")
        os.makedirs(self.x509_dir)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- loop disk and IMDS proxy (for amazon-chroot) ---------------------------------------------

MARKER = "/etc/peer-marker"
BUSYBOX = "/bin/busybox"


class LoopDisk:
    """A 64 MiB image with one partition holding a busybox root (ext4), on a loop device with
    partition scanning: what the attached volume stands for (as tests/e2e/chroot_host.rs)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="peer-chroot-")
        image = os.path.join(self.dir, "disk.img")
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["sfdisk", "-q", image], input=b",,L\n", check=True, stdout=subprocess.DEVNULL)
        self.device = subprocess.run(["losetup", "-f", "--show", "-P", image], check=True,
                                     capture_output=True, text=True).stdout.strip()
        self.partition = self.device + "p1"
        if not os.path.exists(self.partition):
            subprocess.run(["partx", "-a", self.device], capture_output=True)
        subprocess.run(["mkfs.ext4", "-q", self.partition], check=True)
        root = os.path.join(self.dir, "setup")
        os.makedirs(root)
        subprocess.run(["mount", self.partition, root], check=True)
        try:
            for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
                os.makedirs(os.path.join(root, d), exist_ok=True)
            shutil.copy(BUSYBOX, os.path.join(root, "bin/busybox"))
            subprocess.run(["chroot", root, "/bin/busybox", "--install", "-s", "/bin"], check=True)
        finally:
            subprocess.run(["umount", root], check=True)

    def read(self, path):
        """The file's content, or None; read with debugfs, without mounting."""
        stat = subprocess.run(["debugfs", "-R", f"stat {path}", self.partition], capture_output=True, text=True)
        if "File not found" in stat.stderr:
            return None
        return subprocess.run(["debugfs", "-R", f"cat {path}", self.partition], capture_output=True, text=True).stdout

    def remove(self, path):
        subprocess.run(["debugfs", "-w", "-R", f"rm {path}", self.partition], capture_output=True)

    def mounts(self):
        with open("/proc/mounts") as f:
            return [l.split()[1] for l in f if l.split()[1].startswith(self.dir)]

    def stop(self):
        for m in reversed(self.mounts()):
            subprocess.run(["umount", m], capture_output=True)
        subprocess.run(["losetup", "-d", self.device], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class ImdsProxy:
    """In front of moto: answers the instance-metadata paths for the build host (Packer 1.6.6's
    ec2metadata client takes custom_endpoint_ec2 as its endpoint too) and forwards everything
    else to moto unchanged, so moto's recorder still sees every EC2 call."""

    def __init__(self, upstream):
        proxy = self
        self.upstream = upstream
        self.instance_id, self.az = None, None
        self.hits = collections.Counter()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The headers and the body go out in two writes: with Nagle's algorithm the body
            # waits for the client's delayed ACK (~40 ms a call), which is the proxy's cost,
            # not either tool's.
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def reply(self, status, body, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def imds(self):
                path = self.path.split("?")[0]
                if not path.startswith("/latest/"):
                    return False
                proxy.hits[f"{self.command} {path}"] += 1
                if self.command == "PUT" and path == "/latest/api/token":
                    self.reply(200, b"peer-imds-token", [("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")])
                elif path == "/latest/dynamic/instance-identity/document":
                    doc = {"instanceId": proxy.instance_id, "region": REGION, "availabilityZone": proxy.az,
                           "accountId": "123456789012", "imageId": AMZN2, "instanceType": "t3.micro",
                           "architecture": "x86_64", "privateIp": "10.0.0.10", "version": "2017-09-30",
                           "pendingTime": "2020-01-01T00:00:00Z"}
                    self.reply(200, json.dumps(doc).encode(), [("Content-Type", "application/json")])
                elif path == "/latest/meta-data/instance-id":
                    self.reply(200, proxy.instance_id.encode())
                elif path == "/latest/meta-data/placement/availability-zone":
                    self.reply(200, proxy.az.encode())
                elif path == "/latest/meta-data/placement/region":
                    self.reply(200, REGION.encode())
                else:
                    self.reply(404, b"not found")
                return True

            def forward(self):
                if self.imds():
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                form = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
                if form.get("Action") == ["DetachVolume"] and "InstanceId" not in form:
                    # EC2 finds the instance from the volume; moto needs it named (without it
                    # moto answers 500 and Packer 1.6.6, which sends only VolumeId, retries
                    # until it gives up). The action still counts once, as sent.
                    body += f"&InstanceId={proxy.instance_id}".encode()
                    proxy.hits["DetachVolume given InstanceId for moto"] += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length", "accept-encoding")}
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, rh, rb = r.status, r.getheaders(), r.read()
                except urllib.error.HTTPError as e:
                    status, rh, rb = e.code, e.headers.items(), e.read()
                skip = ("connection", "content-length", "transfer-encoding", "server", "date")
                self.reply(status, rb, [(k, v) for k, v in rh if k.lower() not in skip])

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def start_chroot_host(endpoint, proxy):
    """The build host: an instance of a moto AMI, launched after the reset so both tools see
    the same account; the proxy answers IMDS as that instance."""
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
    i = ec2.run_instances(ImageId=AMZN2, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]
    proxy.instance_id, proxy.az = i["InstanceId"], i["Placement"]["AvailabilityZone"]
    proxy.hits.clear()
    # The host's own root volume is not the build's.
    vols = [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]]
    return i["InstanceId"], vols


# --- recording -------------------------------------------------------------------------------

SCOPE = re.compile(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/")


def parse_recording(text):
    """[(service, region, action)] for every request moto saw."""
    calls = []
    for line in text.splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        body = r.get("body") or ""
        if r.get("body_encoded"):
            body = base64.b64decode(body).decode(errors="replace")
        h = {k.lower(): v for k, v in r.get("headers", {}).items()}
        m = SCOPE.search(h.get("authorization", ""))
        region, service = (m.group(1), m.group(2)) if m else ("-", "unsigned")
        action = urllib.parse.parse_qs(body).get("Action", [None])[0]
        if not action and h.get("x-amz-target"):
            action = h["x-amz-target"].split(".")[-1]
        if not action:
            action = f"{r.get('method')} {urllib.parse.urlparse(r.get('url', '')).path}"
        calls.append((service, region, action))
    return calls


# --- one build -------------------------------------------------------------------------------

ARTIFACT = re.compile(r"([a-z]{2}(?:-gov)?-[a-z]+-\d): ?((?:ami|vol)-[0-9a-f]+)")


def reset_and_warm(endpoint, env):
    http(endpoint, "POST", "/moto-api/reset")
    for region in (REGION, COPY_REGION):
        boto3.client("ec2", endpoint_url=endpoint, region_name=region).describe_availability_zones()
    if env.get("sshd"):
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
        with open(env["sshd"].client_key + ".pub") as f:
            ec2.import_key_pair(KeyName=env["sshd"].keypair_name, PublicKeyMaterial=f.read().encode())
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=BUCKET)


def run_build(tool, cmd, template_path, endpoint, workdir, timeout, extra_env=None):
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
               AWS_EC2_METADATA_DISABLED="true", PACKER_LOG="0", CHECKPOINT_DISABLE="1")
    env.pop("AWS_SESSION_TOKEN", None)
    for k, v in (extra_env or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    http(endpoint, "POST", "/moto-api/recorder/reset-recording")
    http(endpoint, "POST", "/moto-api/recorder/start-recording")
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd + [template_path], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    wall = time.monotonic() - t0
    http(endpoint, "POST", "/moto-api/recorder/stop-recording")
    recording = http(endpoint, "GET", "/moto-api/recorder/download-recording")
    calls = parse_recording(recording)
    with open(os.path.join(workdir, f"{tool}.recording.jsonl"), "w") as f:
        f.write(recording)
    tail = out.split("artifacts of successful builds", 1)[-1] if "artifacts of successful builds" in out else ""
    artifacts = sorted(set(ARTIFACT.findall(tail)))
    with open(os.path.join(workdir, f"{tool}.log"), "w") as f:
        f.write(out)
    return {"rc": rc, "wall": wall, "calls": calls, "artifacts": artifacts, "out": out}


def describe_artifacts(endpoint, artifacts):
    """What each artifact looks like, normalised so Packer's and amiflow's can be compared
    (amiflow's own amiflow:* tracking tags are left out)."""
    summary = []
    for region, rid in artifacts:
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
        if rid.startswith("ami-"):
            imgs = ec2.describe_images(ImageIds=[rid])["Images"]
            if not imgs:
                summary.append((region, "ami", "MISSING"))
                continue
            img = imgs[0]
            perms = ec2.describe_image_attribute(ImageId=rid, Attribute="launchPermission")["LaunchPermissions"]
            tags = sorted(t["Key"] for t in img.get("Tags", []) if not t["Key"].startswith("amiflow:"))
            snaps = [b["Ebs"]["SnapshotId"] for b in img.get("BlockDeviceMappings", []) if "Ebs" in b and b["Ebs"].get("SnapshotId")]
            snap_users = set()
            for s in snaps:
                try:
                    cvp = ec2.describe_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission")
                    snap_users |= {p.get("UserId") or p.get("Group") for p in cvp["CreateVolumePermissions"]}
                except Exception:
                    pass
            summary.append((region, "ami", img["State"],
                            "perm=" + ",".join(sorted(p.get("UserId") or p.get("Group") for p in perms)),
                            "tags=" + ",".join(tags), "snapusers=" + ",".join(sorted(snap_users)),
                            "ena=" + str(img.get("EnaSupport"))))
        else:
            v = ec2.describe_volumes(VolumeIds=[rid])["Volumes"][0]
            tags = sorted(f"{t['Key']}={t['Value']}" for t in v.get("Tags", []) if not t["Key"].startswith("amiflow:"))
            summary.append((region, "vol", v["State"], str(v["Size"]), v["VolumeType"], "tags=" + ",".join(tags)))
    return sorted(summary)


def leftovers(endpoint, artifacts, preexisting_keys, preexisting=()):
    keep = {rid for _, rid in artifacts} | set(preexisting)
    left = []
    for region in (REGION, COPY_REGION):
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
        for r in ec2.describe_instances()["Reservations"]:
            left += [i["InstanceId"] for i in r["Instances"]
                     if i["State"]["Name"] not in ("terminated", "shutting-down") and i["InstanceId"] not in keep]
        left += [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
        left += [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] not in preexisting_keys]
        left += [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if v["VolumeId"] not in keep]
    return left


# --- report ----------------------------------------------------------------------------------

def ec2_counts(calls):
    return collections.Counter(a for s, _, a in calls if s == "ec2")


def other_counts(calls):
    return collections.Counter(f"{s}:{a}" for s, _, a in calls if s != "ec2")


NOTES = """
Why the counts differ (read from the recorded sequences; step code as of this branch):
 amiflow makes more calls:
  - Idempotency lookups: every creating step first looks for what a retried run of itself
    would have made, by build tag (Lambda steps may run twice): DescribeInstances before
    RunInstances, DescribeImages (name + tag)
    before CreateImage/RegisterImage/CopyImage, DescribeSnapshots before CreateSnapshot,
    DescribeInstances before SnapshotVolumes reads the attached volumes.
  - Cleanup after a success trusts the ledger (every creating step returned and recorded
    what it made): TerminateInstances by id, no tag search, and no wait for the instance
    unless something it holds (a security group, a volume) goes after it; then a second
    TerminateInstances, at once (as Packer's waiter looks at once), tells whether it is gone.
    Only after a failure, and in the janitor, does the sweep search by tag:amiflow:build in
    every region the build touched. amazon-instance: the temporary security group waits for
    the instance (TerminateInstances twice, where Packer describes the instance once).
  - Build tags: amiflow tags what it registers with amiflow:build so the sweep and the
    janitor can find it: CreateTags on each image/copy it registers and on the snapshots.
  - PreValidate checks the AMI name in every target region (DescribeImages in the copy
    region too); Packer 1.6.6 checks only the build region.
  - moto only: CreateImage is sent twice, because moto answers 500 to a snapshot
    TagSpecification and CreateImage retries without it (then CreateTags on the snapshot in
    WaitImageAvailable). Against AWS that is one CreateImage and no extra CreateTags.
  - moto only, bounding the look-ups above: moto dedupes no ClientToken (RunInstances,
    CopyImage), accepts duplicate AMI names and ignores TagSpecifications on CopyImage and
    RegisterImage, so the look-up before each create stays (tests/e2e/ebs.rs runs every
    creating step twice against moto and expects one resource), and copies and registered
    images are tagged by a separate CreateTags. The temporary security group is created
    first (EC2 and moto refuse a duplicate name) and looked up only then.
 Packer makes calls amiflow does not:
  - CreateKeyPair/DeleteKeyPair and AuthorizeSecurityGroupIngress even with communicator
    none (a temporary key and port 22 nobody uses); amiflow skips both.
 amazon-chroot (same 12 mutating calls on both sides):
  - DescribeImages: CreateVolume reads the source image again for its root mapping (Packer
    keeps it in the state bag from StepSourceAMIInfo); RegisterImage's idempotency lookup by
    name.
  - DescribeVolumes: AttachVolume first checks whether a retried run already attached the
    volume; DetachVolume reads the attachment before detaching.
    (Without device_path amiflow also reads the host's mappings and attached volumes to pick
    a free name — DescribeInstances + DescribeVolumes — where Packer lists /sys/block.)
  - CreateTags +2: amiflow:build tags on the registered image (tagged at creation too, but
    moto drops RegisterImage's TagSpecifications) and on the image's snapshots in
    WaitImageAvailable; moto makes its own "Auto-created snapshot" for RegisterImage, so that
    is a second snapshot here.
  - DescribeSnapshots +1: the idempotency lookup before CreateSnapshot.
  - IMDS: Packer asks the proxy for a token and the identity document (not EC2 API calls);
    amiflow is given chroot_host_instance_id. Both then DescribeInstances the host once.
  - moto only: Packer's DetachVolume names just the volume (EC2 accepts that); moto needs the
    instance and answers 500, so the proxy adds InstanceId (counted once, as sent).
 Artifact differences that are moto's, not either tool's:
  - snapshot users: Packer 1.6.6 sends ModifySnapshotAttribute without OperationType (AWS
    accepts it); moto ignores such a request, so Packer's snapshots show no users here.
  - moto ignores ENA and most RegisterImage fields for both tools (ena=None for both).
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--amiflow", required=True)
    ap.add_argument("--packer", default="packer")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--keep", help="directory to keep templates, logs and recordings in")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    # boto3 here (reset, warm-up, artifact checks) talks to moto with the same fake keys.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    names = a.cases or list(CASES)
    base = a.keep or tempfile.mkdtemp(prefix="compare-packer-")
    rows, details = [], []
    for name in names:
        builder, what, make = CASES[name]
        if builder == "amazon-chroot" and os.geteuid() != 0:
            print(f"  {name:13} skipped: amazon-chroot needs root (loop devices, mount, chroot)", file=sys.stderr)
            continue
        env = {"endpoint": a.endpoint}
        try:
            if builder == "amazon-instance":
                env["sshd"] = Sshd()
            if builder == "amazon-chroot":
                env["disk"] = LoopDisk()
                env["proxy"] = ImdsProxy(a.endpoint)
            workdir = os.path.join(base, name)
            os.makedirs(workdir, exist_ok=True)
            b = make(env)
            provisioners = b.pop("_provisioners", None)
            b.update(peer_keys(env["proxy"].url if env.get("proxy") else a.endpoint, builder))
            res = {}
            for tool, cmd in (("packer", [a.packer, "build", "-color=false"]),
                              ("amiflow", [a.amiflow, "build"])):
                reset_and_warm(a.endpoint, env)
                pre_keys = {env["sshd"].keypair_name} if env.get("sshd") else set()
                tb, extra, host, preexisting = dict(b), {}, None, []
                if env.get("proxy"):
                    host, host_vols = start_chroot_host(a.endpoint, env["proxy"])
                    preexisting = [host] + host_vols
                    env["disk"].remove(MARKER)
                    if tool == "packer":
                        # Packer's ec2metadata client must be allowed to ask (the proxy answers).
                        extra["AWS_EC2_METADATA_DISABLED"] = None
                    else:
                        # amiflow has no IMDS here: the template names the host, the host script
                        # runs on this machine and takes the loop disk as the attached volume.
                        tb["chroot_host_instance_id"] = host
                        extra.update(AMIFLOW_CHROOT_RUN="local", AMIFLOW_CHROOT_TEST_DEVICES=env["disk"].device)
                template = {"builders": [tb]}
                if provisioners:
                    template["provisioners"] = provisioners
                path = os.path.join(workdir, f"template.{tool}.json")
                with open(path, "w") as f:
                    json.dump(template, f, indent=2)
                r = run_build(tool, cmd, path, a.endpoint, workdir, a.timeout, extra)
                r["summary"] = describe_artifacts(a.endpoint, r["artifacts"]) if r["rc"] == 0 else []
                r["left"] = leftovers(a.endpoint, r["artifacts"], pre_keys, preexisting)
                if env.get("disk"):
                    marker = env["disk"].read(MARKER)
                    r["marker"] = (marker or "").strip() or "MISSING"
                    r["left"] += [f"mount:{m}" for m in env["disk"].mounts()]
                    if env["disk"].read("/etc/resolv.conf") is not None:
                        r["left"].append("copied /etc/resolv.conf")
                    r["imds"] = dict(env["proxy"].hits)
                with open(os.path.join(workdir, f"{tool}.calls.json"), "w") as f:
                    json.dump(r["calls"], f)
                res[tool] = r
                print(f"  {name:13} {tool:7} rc={r['rc']} {r['wall']:.1f}s ec2={sum(ec2_counts(r['calls']).values())} "
                      f"artifacts={[x for _, x in r['artifacts']]}"
                      + (f" marker={r['marker']} imds={r['imds']}" if "marker" in r else ""), file=sys.stderr)
                if r["rc"] != 0:
                    print("    " + "\n    ".join(r["out"].strip().splitlines()[-8:]), file=sys.stderr)
            rows.append((name, builder, what, res))
        finally:
            for k in ("sshd", "disk", "proxy"):
                if env.get(k):
                    env[k].stop()

    print()
    print(f"{'case':13} {'builder':20} {'Packer EC2':>10} {'amiflow EC2':>11} {'ratio':>5} {'Packer s':>8} {'amiflow s':>9} {'ratio':>5}  {'other svc (P/a)':15}  artifacts equivalent")
    for name, builder, what, res in rows:
        p, f = res["packer"], res["amiflow"]
        pc, fc = sum(ec2_counts(p["calls"]).values()), sum(ec2_counts(f["calls"]).values())
        po, fo = sum(other_counts(p["calls"]).values()), sum(other_counts(f["calls"]).values())
        if p["rc"] != 0 or f["rc"] != 0:
            eq = f"no build: packer rc={p['rc']}, amiflow rc={f['rc']}"
        elif p["summary"] == f["summary"]:
            eq = f"yes ({len(p['summary'])} artifact(s))"
        else:
            eq = "DIFFER (see below)"
        if p["left"] or f["left"]:
            eq += f"; left behind: packer {len(p['left'])}, amiflow {len(f['left'])}"
        ratio = f"{fc / pc:.2f}" if pc else "-"
        wall_ratio = f"{f['wall'] / p['wall']:.2f}" if p["wall"] else "-"
        print(f"{name:13} {builder:20} {pc:>10} {fc:>11} {ratio:>5} {p['wall']:>8.1f} {f['wall']:>9.1f} {wall_ratio:>5}  {po:>6}/{fo:<8}  {eq}")
    for name, builder, what, res in rows:
        p, f = res["packer"], res["amiflow"]
        print(f"\n== {name} ({builder}: {what})")
        pc, fc = ec2_counts(p["calls"]), ec2_counts(f["calls"])
        diffs = sorted(set(pc) | set(fc), key=lambda k: (-abs(fc[k] - pc[k]), k))
        print(f"   {'EC2 action':32} {'Packer':>6} {'amiflow':>7} {'diff':>5}")
        for k in diffs:
            print(f"   {k:32} {pc[k]:>6} {fc[k]:>7} {fc[k] - pc[k]:>+5}")
        po, fo = other_counts(p["calls"]), other_counts(f["calls"])
        if po or fo:
            print("   other services: packer " + (", ".join(f"{k}×{v}" for k, v in sorted(po.items())) or "none")
                  + "; amiflow " + (", ".join(f"{k}×{v}" for k, v in sorted(fo.items())) or "none"))
        if "marker" in p:
            print(f"   provisioner marker {MARKER} in the image: packer {p['marker']}, amiflow {f['marker']}")
            print(f"   requests the proxy answered or amended: packer {p['imds'] or 'none'}; amiflow {f['imds'] or 'none'}")
        if p["summary"] != f["summary"]:
            print("   artifacts packer : " + "; ".join(" ".join(s) for s in p["summary"]))
            print("   artifacts amiflow: " + "; ".join(" ".join(s) for s in f["summary"]))
        for tool in ("packer", "amiflow"):
            if res[tool]["left"]:
                print(f"   left behind by {tool}: {' '.join(res[tool]['left'])}")
    print(NOTES)
    print(f"templates, logs and recorded calls: {base}")


if __name__ == "__main__":
    main()
