//! Packer JSON templates: parsing, variables, interpolation, deferred fields, secrets.

pub(crate) mod eval;
pub mod funcs;
pub(crate) mod golayout;
pub(crate) mod syntax;
