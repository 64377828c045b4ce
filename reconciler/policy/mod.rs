//! Rego policies (placeholder until the policy engine lands).
