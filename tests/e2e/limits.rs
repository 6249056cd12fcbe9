//! The waits a template may ask for (functions/template) fit the retry policies of the steps
//! that wait (functions/amiflow): a longer timeout would pass validation and never be reached.
//! Needs nothing of the local stack.

use amiflow::waits;
use amiflow_template::config::communicator::{MAX_CONNECT_WAIT, MAX_SSM_EXECUTION};

#[test]
fn template_wait_limits_fit_the_steps_retry_policies() {
    let budget = |wait: waits::Wait| wait.policy.budget_seconds();
    let connect = MAX_CONNECT_WAIT.as_std().as_secs_f64();
    assert!(
        budget(waits::CONNECT) >= connect,
        "Connect polls {} s, less than the ssh_timeout/ssm_timeout validation allows ({connect} s)",
        budget(waits::CONNECT)
    );
    let ssm = MAX_SSM_EXECUTION.as_std().as_secs_f64();
    assert!(
        budget(waits::PROVISION) >= ssm,
        "Provision polls {} s, less than the ssm_execution_timeout validation allows ({ssm} s)",
        budget(waits::PROVISION)
    );
}
