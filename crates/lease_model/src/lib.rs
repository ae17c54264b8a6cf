//! The state machines of lease_sched as pure functions of (row state, database time):
//! leases (`lease`, re-exported at the crate root), named locks (`lock`) and the planner
//! (`planner`), one module each, as in the extension's src/.
//!
//! This crate is the specification: the extension decides claims with `decide_claim` and
//! plans with `planner::decide`, and its SQL (src/lease/store.rs, src/lock/store.rs in the
//! extension) implements the same transitions as the whole-row functions here. Free of
//! PostgreSQL, it is unit-tested, explored exhaustively by model checkers
//! (tests/model_check.rs, tests/lock_model_check.rs, tests/planner_model_check.rs), and
//! replayed against the real SQL on random traces (the extension's
//! tests/integration/tests/model_traces.rs).

/// Database time in microseconds since 2000-01-01 (PostgreSQL's TimestampTz).
pub type DbTime = i64;

pub mod lease;
pub mod lock;
pub mod planner;

pub use lease::*;
