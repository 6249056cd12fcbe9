//! KMS keys as EBS uses them. A build that makes an encrypted volume (a launch mapping,
//! amazon-chroot's root volume) or an encrypted image copy has EC2 use the KMS key on its
//! behalf, with the caller's own permissions: the five actions the EBS user guide asks of
//! users of EBS encryption ("Permissions for users"). The build calls none of them itself;
//! a role without them fails at RunInstances, CreateVolume or CopyImage (a launch may even
//! end at once in `Client.InternalError`). They reach keys only through EC2
//! (`kms:ViaService`), and grants only for AWS resources (`kms:GrantIsForAWSResource`).

use amiflow_template::config::BlockDevice;

use super::Reach;

/// What EC2 needs of the caller to use a KMS key for EBS, and how far each reaches.
pub const REACH: &[(&str, Reach)] = &[
    ("kms:CreateGrant", Reach::KmsGrantForAwsResource),
    ("kms:Decrypt", Reach::KmsViaEc2),
    ("kms:DescribeKey", Reach::KmsViaEc2),
    ("kms:GenerateDataKeyWithoutPlaintext", Reach::KmsViaEc2),
    ("kms:ReEncrypt*", Reach::KmsViaEc2),
];

/// The actions of [`REACH`], for the steps' `iam_actions` and calls.
pub const EBS_ENCRYPTION_ACTIONS: [&str; 5] = {
    let mut all = [""; 5];
    let mut i = 0;
    while i < all.len() {
        all[i] = REACH[i].0;
        i += 1;
    }
    all
};

/// Whether a block device mapping makes an encrypted volume: `encrypted`, or a `kms_key_id`.
/// (Encrypted with the account's default key, EC2 still uses a key on the caller's behalf:
/// the default may be a customer key.)
pub fn encrypts(d: &BlockDevice) -> bool {
    d.encrypted == Some(true) || d.kms_key_id.as_deref().is_some_and(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ebs_encryption_action_is_reached_only_through_ec2() {
        for action in EBS_ENCRYPTION_ACTIONS {
            let reach = super::super::declared_reach(action);
            assert!(
                matches!(reach, Reach::KmsViaEc2 | Reach::KmsGrantForAwsResource),
                "{action}: {reach:?}"
            );
        }
        assert_eq!(
            super::super::declared_reach("kms:CreateGrant"),
            Reach::KmsGrantForAwsResource
        );
    }
}
