//! End-to-end tests of the HCL2 front end.
