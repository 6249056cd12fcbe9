//! The flows: each builder's chain of steps, declared once and rendered to ASL.
