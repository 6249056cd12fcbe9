//! `*.pkr.json`: HCL2 in JSON syntax.

use hcl_edit::structure::Body;

pub(crate) fn body(_text: &str) -> Result<Body, String> {
    Err(
        "HCL2 in JSON syntax (*.pkr.json) is not supported yet: write the template as *.pkr.hcl"
            .into(),
    )
}
