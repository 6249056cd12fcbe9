//! A template's block device entry as EC2's `BlockDeviceMapping`, for RunInstances,
//! CreateImage and RegisterImage alike.

use amiflow_template::config::BlockDevice;
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, VolumeType};

/// One entry: NoDevice, an ephemeral (instance store) name, or an EBS volume. With
/// `snapshot`, the volume comes from that snapshot and its encryption is the snapshot's.
pub fn mapping(d: &BlockDevice, device_name: &str, snapshot: Option<&str>) -> BlockDeviceMapping {
    let m = BlockDeviceMapping::builder().device_name(device_name);
    if d.no_device {
        return m.no_device("").build();
    }
    if let Some(v) = d
        .virtual_name
        .as_deref()
        .filter(|v| v.starts_with("ephemeral"))
    {
        return m.virtual_name(v).build();
    }
    let mut ebs = EbsBlockDevice::builder().delete_on_termination(d.delete_on_termination);
    if let Some(t) = &d.volume_type {
        ebs = ebs.volume_type(VolumeType::from(t.as_str()));
        if matches!(t.as_str(), "io1" | "io2" | "gp3") {
            ebs = ebs.set_iops(d.iops.map(|v| v as i32));
        }
        if t == "gp3" {
            ebs = ebs.set_throughput(d.throughput.map(|v| v as i32));
        }
    }
    ebs = ebs.set_volume_size(d.volume_size.map(|v| v as i32));
    match snapshot {
        // From the launch volume's snapshot: encryption is the snapshot's.
        Some(s) => ebs = ebs.snapshot_id(s),
        None => {
            ebs = ebs
                .set_snapshot_id(d.snapshot_id.clone())
                .set_encrypted(d.encrypted)
                .set_kms_key_id(d.kms_key_id.clone())
        }
    }
    m.ebs(ebs.build()).build()
}

/// Launch (or CreateImage) mappings: each entry as [`mapping`] builds it; with
/// `no_ephemeral`, Packer's 26 `xvdc[a-z]` NoDevice entries so no instance store is attached.
pub fn mappings<'a>(
    devs: impl IntoIterator<Item = &'a BlockDevice>,
    no_ephemeral: bool,
) -> Vec<BlockDeviceMapping> {
    let mut out: Vec<BlockDeviceMapping> = devs
        .into_iter()
        .map(|d| mapping(d, &d.device_name, None))
        .collect();
    if no_ephemeral {
        for c in b'a'..=b'z' {
            out.push(
                BlockDeviceMapping::builder()
                    .device_name(format!("xvdc{}", c as char))
                    .no_device("")
                    .build(),
            );
        }
    }
    out
}
