//! Point reads through a unique index, without SPI.
//!
//! The buffered `runtime_touch` and every claim start by reading one row by its key. As an
//! SPI statement that read cost more than the hand-written UPDATE it replaces (SPI connect,
//! executor start and end, a portal; docs/history/benchmarks.md); here
//! it is an index scan and a heap fetch, nothing else. What it sees is what that SPI
//! statement saw: the command counter advanced, then a snapshot taken like a statement's
//! (`GetTransactionSnapshot`, a new one per read in READ COMMITTED, the transaction's in
//! REPEATABLE READ and SERIALIZABLE), pushed as the active snapshot while the scan runs. No row lock is taken; the relation
//! and index are opened with AccessShareLock and keep it until the transaction ends, as
//! any statement does. Names are looked up in schema `lease_sched` only, never through a
//! search_path. An ERROR in the middle (a cancel) leaves nothing behind: the transaction's
//! abort releases the relations, the pinned buffer and the snapshot.
use std::ffi::CStr;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::FromDatum;

/// One key column of the index: its equality function and the value.
pub struct Key {
    pub eq_proc: u32,
    pub value: Datum,
}

/// The named relation in schema lease_sched, or an error that names it.
fn relation_oid(name: &CStr) -> Oid {
    // SAFETY: catalog lookups by name with valid C strings; missing_ok = false raises an
    // ERROR (schema missing) through PostgreSQL's error handling.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"lease_sched".as_ptr(), false);
        let oid = pg_sys::get_relname_relid(name.as_ptr(), namespace);
        if oid == pg_sys::InvalidOid {
            pgrx::error!("lease_sched: relation lease_sched.{} does not exist", name.to_string_lossy());
        }
        oid
    }
}

/// Read `columns` of the row of `table` whose `index` key equals `keys` (one value per
/// index column, in index order). None when no row is visible to a fresh statement
/// snapshot. `read` gets the values (None for NULL) while the row is still pinned: it must
/// copy what it keeps (text, uuid) into Rust values.
pub fn by_unique_key<R>(
    table: &CStr,
    index: &CStr,
    keys: &[Key],
    columns: &[&CStr],
    read: impl FnOnce(&[Option<Datum>]) -> R,
) -> Option<R> {
    by_unique_key_settled(table, index, keys, columns, |values, _| read(values))
}

/// As `by_unique_key`, and `read` also learns whether the row version it got is *settled*:
/// written by a committed transaction other than this one, with no deleter, updater or
/// locker recorded on it (xmax invalid). A settled version was, when read, the row's latest
/// committed state; any change begun since shows on the version as its xmax.
pub fn by_unique_key_settled<R>(
    table: &CStr,
    index: &CStr,
    keys: &[Key],
    columns: &[&CStr],
    read: impl FnOnce(&[Option<Datum>], bool) -> R,
) -> Option<R> {
    let table_oid = relation_oid(table);
    let index_oid = relation_oid(index);
    // SAFETY: every pointer below comes from PostgreSQL for this call and is released
    // before return (or by transaction abort on ERROR). The scan keys live on this stack
    // frame for the whole scan. Attribute numbers come from the catalog for this relation.
    unsafe {
        let heap = pg_sys::table_open(table_oid, pg_sys::AccessShareLock as i32);
        let idx = pg_sys::index_open(index_oid, pg_sys::AccessShareLock as i32);
        let nkeys = (*(*idx).rd_index).indnkeyatts as usize;
        if nkeys != keys.len() {
            pgrx::error!(
                "lease_sched: index lease_sched.{} has {nkeys} key columns, not {}",
                index.to_string_lossy(),
                keys.len()
            );
        }
        let mut scan_keys: Vec<pg_sys::ScanKeyData> = Vec::with_capacity(nkeys);
        for (i, key) in keys.iter().enumerate() {
            let mut sk = std::mem::zeroed::<pg_sys::ScanKeyData>();
            // The index's own collation for each column: a btree descends in the order it
            // was built with.
            pg_sys::ScanKeyEntryInitialize(
                &mut sk,
                0,
                (i + 1) as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                *(*idx).rd_indcollation.add(i),
                pg_sys::Oid::from(key.eq_proc),
                key.value,
            );
            scan_keys.push(sk);
        }
        let attnums: Vec<i32> = columns
            .iter()
            .map(|c| {
                let n = pg_sys::get_attnum(table_oid, c.as_ptr());
                if n <= 0 {
                    pgrx::error!(
                        "lease_sched: column {} of lease_sched.{} does not exist",
                        c.to_string_lossy(),
                        table.to_string_lossy()
                    );
                }
                n as i32
            })
            .collect();

        // As SPI does before a statement that may write: the rows this transaction wrote
        // earlier in the same statement (a second claim of one key in one SELECT) are seen.
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let snapshot = pg_sys::GetActiveSnapshot();
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(heap, idx, snapshot, std::ptr::null_mut(), nkeys as i32, 0);
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(heap, idx, snapshot, nkeys as i32, 0);
        pg_sys::index_rescan(scan, scan_keys.as_mut_ptr(), nkeys as i32, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let result = if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let last = attnums.iter().copied().max().unwrap_or(0);
            pg_sys::slot_getsomeattrs_int(slot, last);
            let values: Vec<Option<Datum>> = attnums
                .iter()
                .map(|&n| {
                    let i = (n - 1) as usize;
                    (!*(*slot).tts_isnull.add(i)).then(|| *(*slot).tts_values.add(i))
                })
                .collect();
            Some(read(&values, settled(slot)))
        } else {
            None
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::PopActiveSnapshot();
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
        result
    }
}

/// A non-NULL column value as a Rust value (copied out of the tuple).
///
/// # Safety
/// `datum` must be a value of the SQL type `T` reads, from a row still pinned.
pub unsafe fn value<T: FromDatum>(datum: Option<Datum>) -> Option<T> {
    datum.and_then(|d| unsafe { T::from_datum(d, false) })
}

/// Is the heap tuple in `slot` settled (see `by_unique_key_settled`)? False for any slot
/// that is not a buffer heap tuple slot.
///
/// # Safety
/// `slot` holds a tuple fetched by an index scan, its buffer still pinned.
unsafe fn settled(slot: *mut pg_sys::TupleTableSlot) -> bool {
    unsafe {
        if !std::ptr::eq((*slot).tts_ops, &raw const pg_sys::TTSOpsBufferHeapTuple) {
            return false;
        }
        let tuple = (*(slot as *mut pg_sys::BufferHeapTupleTableSlot)).base.tuple;
        if tuple.is_null() || (*tuple).t_data.is_null() {
            return false;
        }
        let header = (*tuple).t_data;
        let heap = (*header).t_choice.t_heap;
        let xmax_invalid =
            (*header).t_infomask as u32 & pg_sys::HEAP_XMAX_INVALID != 0 || heap.t_xmax == pg_sys::InvalidTransactionId;
        xmax_invalid && !pg_sys::TransactionIdIsCurrentTransactionId(heap.t_xmin)
    }
}
