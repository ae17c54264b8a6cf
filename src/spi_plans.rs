//! Prepared SPI statements, planned once per backend and kept for its lifetime.
//!
//! Each hot statement is a `Statement` constant; `execute` prepares it on first use
//! (SPI_prepare + SPI_keepplan) and reuses the plan afterwards, so a call pays for
//! execution only. PostgreSQL's plan cache revalidates a kept plan by itself when the
//! tables it reads change (for example after DROP/CREATE EXTENSION).
//!
//! Before the first statement of a backend runs, the installed extension version is
//! compared with the library's: after a package upgrade and before `ALTER EXTENSION
//! lease_sched UPDATE`, every call fails with an error that says so, instead of running
//! new statements against old tables.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiTupleTable};

pub struct Statement {
    pub sql: &'static str,
    pub arg_types: &'static [pg_sys::Oid],
}

/// A statement that returns rows, and the decoder of its row, written beside it: the
/// column positions a decoder reads are those of the SELECT list (or RETURNING list) just
/// above it, and nowhere else. The decoder returns None for a row it cannot use (a NULL
/// where the caller needs a value).
pub struct Query<R: 'static> {
    pub statement: Statement,
    pub row: fn(&SpiHeapTupleData<'_>) -> Option<R>,
}

impl<R> Query<R> {
    /// The first row the statement returns, decoded; None when it returns none.
    pub fn first(&'static self, client: &mut SpiClient<'_>, args: &[DatumWithOid<'_>]) -> Option<R> {
        execute(client, &self.statement, args).next().and_then(|row| (self.row)(&row))
    }

    /// Every row, decoded (rows the decoder refuses are left out).
    pub fn all(&'static self, client: &mut SpiClient<'_>, args: &[DatumWithOid<'_>]) -> Vec<R> {
        execute(client, &self.statement, args).filter_map(|row| (self.row)(&row)).collect()
    }
}

thread_local! {
    // Keyed by the statement's address: every Statement is a static. The plans are
    // leaked on purpose; a backend has a handful of them and keeps them until exit.
    static PLANS: RefCell<HashMap<usize, &'static OwnedPreparedStatement>> = RefCell::new(HashMap::new());
    // Set once this backend has seen the installed SQL match the library.
    static SCHEMA_CHECKED: Cell<bool> = const { Cell::new(false) };
}

/// The version of the lease_sched SQL objects in this database, if installed.
pub fn installed_version(client: &SpiClient<'_>) -> Option<String> {
    client
        .select(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'lease_sched'",
            None,
            &[],
        )
        .ok()?
        .first()
        .get_one::<String>()
        .ok()
        .flatten()
}

/// Does the installed SQL match this library?
pub fn schema_is_current(client: &SpiClient<'_>) -> bool {
    installed_version(client).as_deref() == Some(env!("CARGO_PKG_VERSION"))
}

/// Fail with a clear error (55000, "run ALTER EXTENSION lease_sched UPDATE") unless the
/// installed SQL matches this library. Cached once it passed.
pub fn check_schema(client: &SpiClient<'_>) {
    if SCHEMA_CHECKED.get() {
        return;
    }
    if !schema_is_current(client) {
        crate::error::schema_out_of_date();
    }
    SCHEMA_CHECKED.set(true);
}

/// `check_schema` for a call that may run no statement at all (a buffered touch).
pub fn check_schema_once() {
    if !SCHEMA_CHECKED.get() {
        pgrx::spi::Spi::connect(check_schema);
    }
}

fn plan_for(client: &SpiClient<'_>, statement: &'static Statement) -> &'static OwnedPreparedStatement {
    let key = statement as *const Statement as usize;
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).copied()) {
        return plan;
    }
    check_schema(client);
    let types: Vec<PgOid> = statement.arg_types.iter().map(|oid| PgOid::from(*oid)).collect();
    let prepared = client
        .prepare_mut(statement.sql, &types)
        .unwrap_or_else(|e| crate::error::statement_failed("cannot prepare a statement", statement.sql, e));
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
///
/// An ERROR raised by the statement (lock_timeout, a cancel, a constraint) reaches the
/// caller as that PostgreSQL error, with its own SQLSTATE and message.
pub fn execute<'conn>(
    client: &mut SpiClient<'conn>,
    statement: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let plan = plan_for(client, statement);
    client
        .select(plan, None, args)
        .unwrap_or_else(|e| crate::error::statement_failed("a statement failed", statement.sql, e))
}
