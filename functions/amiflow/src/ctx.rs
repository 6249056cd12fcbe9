//! AWS clients for a step, built from the standard credential chain.
//!
//! Endpoints: aws-config honours `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_<SERVICE>` variables, which is how the demo and the tests point every
//! client at the local emulator. Retries: the SDK's standard mode.

use aws_config::{BehaviorVersion, SdkConfig};

pub struct Ctx {
    pub sdk: SdkConfig,
}

impl Ctx {
    /// Clients from the environment's credential chain (keys, profile, container or instance role).
    pub async fn from_env() -> Ctx {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Ctx { sdk }
    }

    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::config::Builder::from(&self.sdk)
            .region(aws_types::region::Region::new(region.to_string()))
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }
}
