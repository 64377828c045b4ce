//! Plain data: plans, settings, status and the diagnostics that explain why a file is wrong.
//!
//! Invariant: nothing here does I/O or reads the clock; time is always passed in.

pub mod diagnostics;
pub mod duration;
pub mod plan;
pub mod schema;
pub mod schema_check;
pub mod settings;
pub mod status;
pub mod validate;
pub mod window;
pub mod wire;
pub mod yaml;

pub use diagnostics::{Code, Diagnostic, Pos, Severity};
pub use plan::Plan;
pub use settings::Settings;
