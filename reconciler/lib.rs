//! rollgate: a GitOps rollout reconciler.

pub mod model;
