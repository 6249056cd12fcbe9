//! The waits a template may ask for (functions/template) fit the retry policies of the steps
//! that wait (functions/amiflow): a longer timeout would pass validation and never be reached.
//! Needs nothing of the local stack.

use amiflow::flows::wait_policy;
use amiflow_template::config::communicator::{MAX_CONNECT_WAIT, MAX_SSM_EXECUTION};

#[test]
fn template_wait_limits_fit_the_steps_retry_policies() {
    let budget = |step: &str| {
        wait_policy(step)
            .unwrap_or_else(|| panic!("{step} has no wait policy"))
            .budget_seconds()
    };
    let connect = MAX_CONNECT_WAIT.as_std().as_secs_f64();
    assert!(
        budget("Connect") >= connect,
        "Connect polls {} s, less than the ssh_timeout/ssm_timeout validation allows ({connect} s)",
        budget("Connect")
    );
    let ssm = MAX_SSM_EXECUTION.as_std().as_secs_f64();
    assert!(
        budget("Provision") >= ssm,
        "Provision polls {} s, less than the ssm_execution_timeout validation allows ({ssm} s)",
        budget("Provision")
    );
}
