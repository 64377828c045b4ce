//! The JSON Schemas users and editors see, generated from the wire types.
//!
//! Invariant: the committed files under `schema/` equal these texts (a test fails
//! when they are stale; regenerate with `rollgate schema --write schema`).

use std::sync::OnceLock;

use serde_json::Value;

use super::wire;

pub fn plan_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(wire::PlanFile)).unwrap_or(Value::Null)
    })
}

pub fn settings_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(wire::SettingsFile)).unwrap_or(Value::Null)
    })
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

pub fn plan_schema_text() -> String {
    pretty(plan_schema())
}

pub fn settings_schema_text() -> String {
    pretty(settings_schema())
}
