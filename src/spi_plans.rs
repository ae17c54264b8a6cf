//! Prepared SPI statements, planned once per backend and kept for its lifetime.
//!
//! Each hot statement is a `Statement` constant; `execute` prepares it on first use
//! (SPI_prepare + SPI_keepplan) and reuses the plan afterwards, so a call pays for
//! execution only. PostgreSQL's plan cache revalidates a kept plan by itself when the
//! tables it reads change (for example after DROP/CREATE EXTENSION).
use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

pub struct Statement {
    pub sql: &'static str,
    pub arg_types: &'static [pg_sys::Oid],
}

thread_local! {
    // Keyed by the statement's address: every Statement is a static. The plans are
    // leaked on purpose; a backend has a handful of them and keeps them until exit.
    static PLANS: RefCell<HashMap<usize, &'static OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

fn plan_for(client: &SpiClient<'_>, statement: &'static Statement) -> &'static OwnedPreparedStatement {
    let key = statement as *const Statement as usize;
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).copied()) {
        return plan;
    }
    let types: Vec<PgOid> = statement.arg_types.iter().map(|oid| PgOid::from(*oid)).collect();
    let prepared = client
        .prepare_mut(statement.sql, &types)
        .unwrap_or_else(|e| panic!("lease_sched: cannot prepare statement: {e}"));
    let plan: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared.keep()));
    PLANS.with(|plans| plans.borrow_mut().insert(key, plan));
    plan
}

/// Run a statement (reads or writes) with positional arguments.
///
/// Plans are prepared as mutating, so SPI runs them with `read_only = false`: every
/// statement takes a fresh snapshot (a re-probe sees what a concurrent session just
/// committed). We call `select`, not pgrx's `update`, on purpose: `update` assigns a
/// transaction id up front, which would make every read-only call (a conflicted claim, a
/// buffered touch) write a commit record and wait for its flush. A statement that writes
/// gets its transaction id from PostgreSQL when it writes.
pub fn execute<'conn>(
    client: &mut SpiClient<'conn>,
    statement: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let plan = plan_for(client, statement);
    client
        .select(plan, None, args)
        .unwrap_or_else(|e| panic!("lease_sched: statement failed: {e}"))
}
