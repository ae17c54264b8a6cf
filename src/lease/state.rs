//! The lease state machine lives in the `lease_model` crate (crates/lease_model), free of
//! PostgreSQL so that it can be model-checked; the SQL in `store.rs` implements it.
pub use lease_model::*;
