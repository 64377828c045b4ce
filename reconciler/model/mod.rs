//! Plain data: plans, settings, status and the diagnostics that explain why a file is wrong.
//!
//! Invariant: nothing here does I/O or reads the clock; time is always passed in.

pub mod diagnostics;
pub mod yaml;
