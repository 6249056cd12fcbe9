//! The chroot host script (infra/chroot-host.sh) against loop devices holding a small ext4
//! root filesystem with busybox: mounts, copy_files, provisioners, failure, parallel runs.
//! Needs root (loop devices, mount, chroot); skips with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::io::Write;

/// The script under test.
pub fn host_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/chroot-host.sh")
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

const BUSYBOX: &str = "/bin/busybox";

/// Whether the loop-device tests can run here; prints why not.
pub fn loop_devices_usable(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped: needs root (loop devices)");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("{test}: skipped: {BUSYBOX} missing (run scripts/setup.sh chroot: Debian busybox-static)");
        return false;
    }
    true
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 64 MiB image with one partition holding ext4 and busybox, attached to a loop device.
/// Dropping it detaches the loop device (after unmounting anything left under `dir`, so a
/// failing test does not leave the host dirty).
pub struct LoopDisk {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub device: String,
    attached: bool,
}

impl LoopDisk {
    pub fn new() -> LoopDisk {
        let dir = tempfile::Builder::new()
            .prefix("amiflow-chroot-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .expect("create image");
        let mut sfdisk = Command::new("sfdisk")
            .args(["-q"])
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("sfdisk (Debian fdisk)");
        sfdisk.stdin.take().unwrap().write_all(b",,L\n").unwrap();
        assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
        let out = run(Command::new("losetup")
            .args(["-f", "--show", "-P"])
            .arg(&image));
        let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let disk = LoopDisk {
            dir,
            image,
            device,
            attached: true,
        };
        let part = disk.partition();
        if !Path::new(&part).exists() {
            let _ = Command::new("partx").args(["-a", &disk.device]).output();
        }
        run(Command::new("mkfs.ext4").args(["-q", &part]));
        let root = disk.dir.path().join("setup");
        std::fs::create_dir_all(&root).unwrap();
        run(Command::new("mount").arg(&part).arg(&root));
        let populate = (|| -> std::io::Result<()> {
            for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
                std::fs::create_dir_all(root.join(d))?;
            }
            std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
            Ok(())
        })();
        let install = Command::new("chroot")
            .arg(&root)
            .args(["/bin/busybox", "--install", "-s", "/bin"])
            .output();
        run(Command::new("umount").arg(&root));
        populate.expect("populate the image");
        let install = install.expect("chroot busybox --install");
        assert!(
            install.status.success(),
            "busybox --install: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        disk
    }

    pub fn partition(&self) -> String {
        format!("{}p1", self.device)
    }

    /// A file of the image's filesystem, read without mounting it (debugfs).
    pub fn read_file(&self, path: &str) -> Option<String> {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}"), &self.partition()])
            .output()
            .expect("debugfs (e2fsprogs)");
        let stat = Command::new("debugfs")
            .args(["-R", &format!("stat {path}"), &self.partition()])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&stat.stderr).contains("File not found") {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        for mount in mounts_under(self.dir.path()).into_iter().rev() {
            let _ = Command::new("umount").arg(&mount).output();
        }
        if self.attached {
            let _ = Command::new("losetup").args(["-d", &self.device]).output();
        }
    }
}

/// Mount points at or under `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(String::from)
        .collect()
}

/// Loop devices still backed by `image`.
pub fn loop_devices_of(image: &Path) -> String {
    let out = Command::new("losetup").arg("-a").output().expect("losetup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*image.to_string_lossy()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct ScriptRun {
    pub code: i32,
    pub output: String,
}

/// Runs the host script with `job` (env-style lines) on stdin.
pub fn run_script(job: &str, env: &[(&str, &str)]) -> ScriptRun {
    let mut cmd = Command::new("bash");
    cmd.arg(host_script())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // chroot_build sets a device pool for the whole process; these runs name their own.
    cmd.env_remove("AMIFLOW_CHROOT_TEST_DEVICES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run chroot-host.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ScriptRun {
        code: out.status.code().unwrap_or(-1),
        output,
    }
}

fn assert_clean(mut disk: LoopDisk) {
    let left = mounts_under(disk.dir.path());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    let out = Command::new("losetup")
        .args(["-d", &disk.device])
        .output()
        .expect("losetup -d");
    assert!(
        out.status.success(),
        "losetup -d {}: {}",
        disk.device,
        String::from_utf8_lossy(&out.stderr)
    );
    disk.attached = false;
    // The kernel detaches once the last opener (a concurrent blkid, partx, debugfs) closes.
    let mut loops = loop_devices_of(&disk.image);
    for _ in 0..50 {
        if loops.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        loops = loop_devices_of(&disk.image);
    }
    assert!(loops.is_empty(), "loop devices left: {loops}");
}

#[test]
fn default_mounts_copy_files_wrapper_and_marker() {
    if !loop_devices_usable("chroot_host::default_mounts_copy_files_wrapper_and_marker") {
        return;
    }
    let disk = LoopDisk::new();
    let mount_path = disk.dir.path().join("root-{{.Device}}");
    let seen = disk.dir.path().join("pre-mount-device");
    let job = format!(
        "# a job as the state machine writes it\n\
         DEVICE={dev}\n\
         MOUNT_PATH={mp}\n\
         PRE_MOUNT_COMMAND=echo {{{{.Device}}}} > {seen}\n\
         POST_MOUNT_COMMAND=touch {{{{.MountPath}}}}/post-mount\n\
         COMMAND_WRAPPER=AMIFLOW_WRAPPED=yes {{{{.Command}}}}\n\
         COMMAND=echo built > /marker\n\
         COMMAND=cat /proc/self/mounts > /mounts-seen; cat /etc/resolv.conf > /resolv-seen\n\
         COMMAND.b64={b64}\n",
        dev = disk.device,
        mp = mount_path.display(),
        seen = seen.display(),
        b64 = base64_encode(b"echo \"$AMIFLOW_WRAPPED\" > /wrapped\necho 'it''s quoted' > /quoted"),
    );
    let run = run_script(&job, &[]);
    assert_eq!(run.code, 0, "script failed:\n{}", run.output);
    for marker in [
        "lock: released",
        "chroot-mounts: binfmt_misc",
        "copy-files: /etc/resolv.conf",
        "provision[1]",
        "done",
    ] {
        assert!(
            run.output.contains(&format!("amiflow-chroot: {marker}")),
            "no '{marker}' in:\n{}",
            run.output
        );
    }
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        disk.device,
        "{{{{.Device}}}} in pre_mount_commands"
    );
    assert_eq!(disk.read_file("/marker").as_deref(), Some("built\n"));
    assert!(
        disk.read_file("/post-mount").is_some(),
        "post_mount_commands did not run with {{{{.MountPath}}}}"
    );
    assert_eq!(
        disk.read_file("/wrapped").as_deref(),
        Some("yes\n"),
        "command_wrapper not applied"
    );
    assert_eq!(disk.read_file("/quoted").as_deref(), Some("its quoted\n"));
    let mounts = disk.read_file("/mounts-seen").unwrap();
    let points: Vec<(&str, &str)> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2).then(|| (f[1], f[2]))
        })
        .collect();
    for (point, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/proc/sys/fs/binfmt_misc", "binfmt_misc"),
    ] {
        assert!(
            points.contains(&(point, fstype)),
            "{point} ({fstype}) not mounted in the chroot: {points:?}"
        );
    }
    assert!(
        points.iter().any(|(p, _)| *p == "/dev"),
        "/dev not bound in the chroot: {points:?}"
    );
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(
        disk.read_file("/resolv-seen").unwrap(),
        resolv,
        "copy_files did not copy /etc/resolv.conf"
    );
    assert_eq!(
        disk.read_file("/etc/resolv.conf"),
        None,
        "copied /etc/resolv.conf not removed afterwards"
    );
    assert!(mount_path
        .parent()
        .unwrap()
        .join(format!("root-{}", disk.device.trim_start_matches("/dev/")))
        .is_dir());
    assert_clean(disk);
}

#[test]
fn custom_chroot_mounts_replace_the_defaults() {
    if !loop_devices_usable("chroot_host::custom_chroot_mounts_replace_the_defaults") {
        return;
    }
    let disk = LoopDisk::new();
    let job = format!(
        "DEVICE={}\nMOUNT_PATH={}\nCHROOT_MOUNT=proc proc /proc\nCHROOT_MOUNT=tmpfs tmpfs /mnt/scratch\n\
         COPY_FILE=\nCOMMAND=cat /proc/self/mounts > /mounts-seen; echo x > /mnt/scratch/gone\n",
        disk.device,
        disk.dir.path().join("root").display()
    );
    let run = run_script(&job, &[]);
    assert_eq!(run.code, 0, "script failed:\n{}", run.output);
    assert!(
        !run.output.contains("copy-files:"),
        "an empty COPY_FILE must copy nothing:\n{}",
        run.output
    );
    let mounts = disk.read_file("/mounts-seen").unwrap();
    let points: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(
        points,
        vec!["/", "/proc", "/mnt/scratch"],
        "mounts seen in the chroot:\n{mounts}"
    );
    assert_eq!(
        disk.read_file("/mnt/scratch/gone"),
        None,
        "the tmpfs was not a mount"
    );
    assert_clean(disk);
}

#[test]
fn failing_provisioner_stops_and_still_cleans_up() {
    if !loop_devices_usable("chroot_host::failing_provisioner_stops_and_still_cleans_up") {
        return;
    }
    let disk = LoopDisk::new();
    let job = format!(
        "DEVICE={}\nMOUNT_PATH={}\nCOMMAND=echo before > /before\nCOMMAND=exit 7\nCOMMAND=echo after > /after\n",
        disk.device,
        disk.dir.path().join("root").display()
    );
    let run = run_script(&job, &[]);
    assert_eq!(
        run.code, 7,
        "the provisioner's exit status must be the script's:\n{}",
        run.output
    );
    assert!(
        run.output
            .contains("amiflow-chroot: FAILED at provision (exit 7)"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("amiflow-chroot: cleanup: unmounting"),
        "{}",
        run.output
    );
    assert_eq!(disk.read_file("/before").as_deref(), Some("before\n"));
    assert_eq!(
        disk.read_file("/after"),
        None,
        "a command after the failing one ran"
    );
    assert_eq!(
        disk.read_file("/etc/resolv.conf"),
        None,
        "copied file not removed after a failure"
    );
    assert_clean(disk);
}

#[test]
fn missing_device_fails_in_find_device_with_nothing_mounted() {
    if !loop_devices_usable("chroot_host::missing_device_fails_in_find_device_with_nothing_mounted")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = format!(
        "VOLUME_ID=vol-0000000000000dead\nDEVICE=/dev/sdz\nDEVICE_WAIT_SECONDS=1\nMOUNT_PATH={}\nLOCK_FILE={}\n",
        dir.path().join("root").display(),
        dir.path().join("lock").display()
    );
    let run = run_script(&job, &[]);
    assert_eq!(run.code, 1, "{}", run.output);
    assert!(
        run.output.contains("FAILED at find-device")
            && run.output.contains("vol-0000000000000dead"),
        "{}",
        run.output
    );
    assert!(mounts_under(dir.path()).is_empty());
}

#[test]
fn two_runs_at_once_take_different_devices() {
    if !loop_devices_usable("chroot_host::two_runs_at_once_take_different_devices") {
        return;
    }
    let (a, b) = (LoopDisk::new(), LoopDisk::new());
    let shared = tempfile::tempdir().unwrap();
    let pool = format!("{} {}", a.device, b.device);
    let job = format!(
        "VOLUME_ID=vol-0123456789abcdef0\nMOUNT_PATH={}/root-{{{{.Device}}}}\nLOCK_FILE={}\nCOMMAND=sleep 1; echo $$ > /marker\n",
        shared.path().display(),
        shared.path().join("lock").display()
    );
    let runs: Vec<ScriptRun> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| run_script(&job, &[("AMIFLOW_CHROOT_TEST_DEVICES", &pool)])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        assert_eq!(run.code, 0, "a parallel run failed:\n{}", run.output);
    }
    assert!(
        a.read_file("/marker").is_some() && b.read_file("/marker").is_some(),
        "both devices must be provisioned once:\n{}\n{}",
        runs[0].output,
        runs[1].output
    );
    assert!(mounts_under(shared.path()).is_empty());
    assert_clean(a);
    assert_clean(b);
}

fn base64_encode(bytes: &[u8]) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map(|mut c| {
            c.stdin.take().unwrap().write_all(bytes).unwrap();
            c.wait_with_output().unwrap()
        });
    String::from_utf8(out.expect("base64").stdout).unwrap()
}
