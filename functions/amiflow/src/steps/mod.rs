//! One file per step: the handler, the IAM actions it calls and its wait together. Each
//! exports its `SPEC`; `flows.rs` chains them per builder and derives the registry the
//! Lambda binary, the local engine and `serve-lambdas` dispatch through, and the roles.

pub mod await_event;
pub mod cleanup;
pub mod connect;
pub mod copy_image;
pub mod create_image;
pub mod create_tags;
pub mod deliver_event;
pub mod deregister_ami;
pub mod enable_deprecation;
pub mod error_cleanup_provision;
pub mod iam_instance_profile;
pub mod janitor;
pub mod key_pair;
pub mod modify_image_attributes;
pub mod modify_instance;
pub mod network_info;
pub mod pre_validate;
pub mod provision;
pub mod run_source_instance;
pub mod security_group;
pub mod source_ami_info;
pub mod stop_instance;
pub mod wait_copies_available;
pub mod wait_image_available;
pub mod wait_instance_running;
pub mod wait_instance_stopped;
// amazon-chroot
pub mod attach_volume;
pub mod create_snapshot;
pub mod create_volume;
pub mod detach_volume;
pub mod host_info;
pub mod register_image;
pub mod run_host_script;
pub mod wait_host_script;
pub mod wait_snapshots_completed;
pub mod wait_volume_attached;
pub mod wait_volume_available;
pub mod wait_volume_detached;
// amazon-ebssurrogate, amazon-ebsvolume, amazon-instance
pub mod attach_root_volume;
pub mod bundle_volume;
pub mod modify_snapshot_attributes;
pub mod snapshot_volumes;
pub mod swap_volumes;
pub mod tag_volumes;
pub mod upload_bundle;
pub mod upload_x509_cert;
pub mod wait_root_volume_attached;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{Ctx, StepError};

pub mod finalize;
pub mod prepare;
// pipelines (around the builds)
pub mod approve;
pub mod fingerprint;
pub mod judge_tests;
pub mod notify;
pub mod plan_tests;
pub mod publish;
pub mod retain;
pub mod scheduled_start;
pub mod withdraw;

/// `own` followed by `shared`: a step's `iam_actions` made of its own and a shared list (a
/// kind's, `resources/`), never a copy of it. `N` must be the sum of their lengths.
pub const fn actions<const N: usize>(
    own: &[&'static str],
    shared: &[&'static str],
) -> [&'static str; N] {
    assert!(
        own.len() + shared.len() == N,
        "N must be own.len() + shared.len()"
    );
    let mut all = [""; N];
    let mut i = 0;
    while i < own.len() {
        all[i] = own[i];
        i += 1;
    }
    while i < N {
        all[i] = shared[i - own.len()];
        i += 1;
    }
    all
}

/// The boxed form every handler is called through.
pub type Handler = fn(Arc<Ctx>, Value) -> BoxFuture<'static, Result<Value, StepError>>;

/// A step as the rest of the system sees it.
#[derive(Clone, Copy)]
pub struct StepSpec {
    /// The state and handler name (Packer's step name), e.g. `CreateImage`.
    pub name: &'static str,
    /// IAM actions the handler calls, e.g. `ec2:CreateImage`.
    pub iam_actions: &'static [&'static str],
    /// Actions this step may use less widely than their kind's module declares
    /// ([`crate::resources::declared_reach`]); checked to be among `iam_actions`.
    pub reach: &'static [(&'static str, crate::resources::Reach)],
    /// What a local build (`amiflow build`) of one build calls in this step, given its
    /// config: `amiflow policy` grants the union over the build's path
    /// ([`crate::flows::local_path`]). None: every one of `iam_actions` a local build can
    /// call ([`StepSpec::local_calls`]). Each action must be one of `iam_actions`.
    pub calls: Option<LocalCalls>,
    /// Set for waiting steps: the handler raises `NotReady` until the resource is ready,
    /// and the state retries on the wait's policy.
    pub wait: Option<crate::waits::Wait>,
    /// Lambda timeout for this step, seconds.
    pub timeout_seconds: u32,
    pub handler: Handler,
}

/// A step's calls for one build's config: see [`StepSpec::calls`].
pub type LocalCalls = fn(&amiflow_template::PreparedBuild) -> Vec<&'static str>;

impl StepSpec {
    /// The actions a local build of `build` calls in this step: the step's own
    /// [`StepSpec::calls`], else its `iam_actions` without those only a deployed build
    /// makes (revealing a sensitive variable from its parameter, assuming the stack's bundle
    /// upload role: a local build holds the values and the caller's keys).
    pub fn local_calls(&self, build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
        match self.calls {
            Some(calls) => calls(build),
            None => self
                .iam_actions
                .iter()
                .copied()
                .filter(|a| {
                    !matches!(
                        self.reach_of(a),
                        crate::resources::Reach::SensitiveVars
                            | crate::resources::Reach::BundleUploadRole
                    )
                })
                .collect(),
        }
    }

    /// Whether an invocation of this step may make something a sweep removes (its role
    /// can create): one still running when its execution stopped keeps the janitor
    /// sweeping until its timeout has passed (`steps/janitor.rs`).
    pub fn may_create(&self) -> bool {
        self.iam_actions
            .iter()
            .any(|a| crate::resources::is_creating_action(a))
    }

    /// How far `action` reaches in this step's deployed role: the step's own narrowing,
    /// else what the action's kind declares.
    pub fn reach_of(&self, action: &str) -> crate::resources::Reach {
        self.reach
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(action))
            .map_or_else(|| crate::resources::declared_reach(action), |(_, r)| *r)
    }
}

impl std::fmt::Debug for StepSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepSpec")
            .field("name", &self.name)
            .field("wait", &self.wait)
            .finish()
    }
}

/// Adapts `async fn(&Ctx, T) -> Result<U, StepError>` to a [`Handler`], where `T` and `U`
/// are the step's typed input and output (usually [`crate::BuildState`]).
#[macro_export]
macro_rules! handler {
    ($f:path) => {{
        fn boxed(
            ctx: ::std::sync::Arc<$crate::Ctx>,
            input: ::serde_json::Value,
        ) -> ::futures::future::BoxFuture<'static, Result<::serde_json::Value, $crate::StepError>>
        {
            Box::pin(async move {
                let input = ::serde_json::from_value(input)?;
                let output = $f(&ctx, input).await?;
                Ok(::serde_json::to_value(output)?)
            })
        }
        boxed as $crate::steps::Handler
    }};
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The AWS calls a step's own file makes directly on a client (`ctx.ec2(region)
    /// .create_tags()`, `s3.delete_bucket()`), as IAM actions. Calls made through
    /// `resources/` carry their modules' action lists into the step's, which their own
    /// tests check.
    fn direct_calls(src: &str) -> Vec<String> {
        const CLIENTS: [(&str, &str); 9] = [
            ("ec2", "ec2"),
            ("s3", "s3"),
            ("ssm", "ssm"),
            ("iam", "iam"),
            ("sts", "sts"),
            ("sfn", "states"),
            ("sns", "sns"),
            ("secretsmanager", "secretsmanager"),
            ("eventbridge", "events"),
        ];
        let bytes = src.as_bytes();
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut calls = Vec::new();
        for (client, service) in CLIENTS {
            for (at, _) in src.match_indices(client) {
                if at > 0 && ident(bytes[at - 1]) {
                    continue;
                }
                let mut i = at + client.len();
                if bytes.get(i).is_some_and(|&b| ident(b)) {
                    continue;
                }
                // `ctx.s3(&ctx.own_region())`: skip the client's arguments, nested or not.
                if bytes.get(i) == Some(&b'(') {
                    let mut depth = 0usize;
                    let Some(close) = src[i..].find(|c: char| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    }) else {
                        continue;
                    };
                    i += close + 1;
                }
                let rest = src[i..].trim_start();
                let Some(rest) = rest.strip_prefix('.') else {
                    continue;
                };
                let op: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !rest[op.len()..].starts_with("()") {
                    continue;
                }
                let action = match (service, op.as_str()) {
                    // S3 authorizes these under other actions' names.
                    ("s3", "head_object") => "GetObject".to_string(),
                    ("s3", "head_bucket" | "list_objects_v2") => "ListBucket".to_string(),
                    _ => op
                        .split('_')
                        .map(|w| {
                            let mut c = w.chars();
                            c.next()
                                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                                .unwrap_or_default()
                        })
                        .collect(),
                };
                calls.push(format!("{service}:{action}"));
            }
        }
        calls
    }

    fn snake(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    /// A call missing from a step's `iam_actions` is refused only deployed, and only on the
    /// path that makes it (UploadBundle's DeleteBucket runs only when tagging its new bucket
    /// fails): every direct call in a step's file must be in its role.
    #[test]
    fn every_call_a_step_file_makes_is_in_its_role() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/steps");
        let mut checked = 0;
        let mut missing = Vec::new();
        for spec in crate::flows::registry() {
            let file = dir.join(format!("{}.rs", snake(spec.name)));
            let src = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let code = src.split("#[cfg(test)]").next().unwrap_or_default();
            for action in direct_calls(code) {
                checked += 1;
                if !spec.iam_actions.contains(&action.as_str()) {
                    missing.push(format!(
                        "{} calls {action} but its role lacks it",
                        spec.name
                    ));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
        assert!(
            checked > 20,
            "only {checked} direct calls found: is the scan broken?"
        );
    }

    #[test]
    fn the_scan_finds_calls_across_lines_and_on_named_clients() {
        let src = "let s3 = ctx.s3(region);\n s3.delete_bucket().bucket(b);\n ctx.ec2(&region)\n    .create_tags()\n .send(); ec2s.foo(); my_ssm.get_parameter(); s3.head_object(); ctx.s3(&ctx.own_region()).put_object()";
        assert_eq!(
            direct_calls(src),
            vec![
                "ec2:CreateTags",
                "s3:DeleteBucket",
                "s3:GetObject",
                "s3:PutObject"
            ]
        );
    }
}
