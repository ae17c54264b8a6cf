//! The SQL surface: thin `#[pg_extern]` wrappers that validate arguments, call the
//! subsystem, and shape the result. The matching CREATE FUNCTION statements are in `sql/`.
mod args;
pub mod lease;
pub mod lock;
pub mod observability;
pub mod planner;
pub mod runtime;
