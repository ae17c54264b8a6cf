//! runtime_register, runtime_touch, runtime_touch_batch, runtime_flush, runtime_pending
//! (declared in sql/runtime.sql).
use pgrx::datum::JsonB;
use pgrx::prelude::*;
use pgrx::Uuid;

use super::args::{non_empty, required};
use crate::error::null_argument;
use crate::runtime;

#[pg_extern(sql = false)]
fn runtime_register(name: Option<&str>, metadata: Option<JsonB>) -> Uuid {
    let name = non_empty(name, "name");
    runtime::register(name, required(metadata, "metadata"))
}

#[pg_extern(sql = false)]
fn runtime_touch(runtime_id: Option<Uuid>) -> bool {
    runtime::touch(required(runtime_id, "runtime_id"))
}

#[pg_extern(sql = false)]
fn runtime_touch_batch(runtime_ids: Option<Vec<Option<Uuid>>>) -> Vec<Uuid> {
    let ids = required(runtime_ids, "runtime_ids")
        .into_iter()
        .map(|id| id.unwrap_or_else(|| null_argument("an element of runtime_ids")))
        .collect();
    runtime::touch_batch(ids)
}

#[pg_extern(sql = false)]
fn runtime_flush() -> i64 {
    super::require_admin("runtime_flush");
    runtime::flush_all()
}

#[pg_extern(sql = false)]
fn runtime_pending() -> i64 {
    runtime::pending() as i64
}
