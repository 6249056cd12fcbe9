//! Parsing Packer JSON templates, variables and interpolation.
