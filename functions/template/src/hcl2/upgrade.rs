//! `amiflow hcl2_upgrade`: the HCL2 twin of a JSON template.
