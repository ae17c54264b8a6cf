//! A full disk, on the real test cluster: lease_sched's tables moved into a tablespace on a
//! small tmpfs, which is then filled. docs/reliability.md ("A full disk") promises what
//! each kind of write does; these tests hold it to that. They restart the server and
//! move the extension's tables, so they run one at a time (`serial()`). They need root (to
//! mount the tmpfs) and max_prepared_transactions > 0; without either they skip.
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lease_sched_integration::*;
use postgres::Client;
use uuid::Uuid;

/// The tables the full tablespace holds.
const TABLES: [&str; 2] = ["lease_sched.runtimes", "lease_sched.sys_cron_executions"];

/// A tmpfs of `size` mounted for the test, a tablespace on it holding `TABLES`, and a
/// filler file that takes whatever space is left. Dropping it moves the tables back and
/// unmounts, whatever state the test left.
struct FullTablespace {
    dir: PathBuf,
    name: String,
}

impl FullTablespace {
    /// None (after printing a skip line) when this process may not mount. The tmpfs is
    /// sized to the tables (earlier tests may have grown them) plus room to work in.
    fn new(test: &str, c: &mut Client) -> Option<FullTablespace> {
        let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        let bytes: i64 = c
            .query_one("SELECT sum(pg_table_size(t::regclass))::int8 FROM unnest($1::text[]) t", &[&tables])
            .unwrap()
            .get(0);
        let size = format!("{}m", bytes / (1 << 20) * 2 + 32);
        let name = unique("full");
        let dir = PathBuf::from(format!("/tmp/lease_sched_{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            skip(test, "cannot mount a tmpfs here (needs root)");
            return None;
        }
        let chown = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
        assert!(chown.success());
        let t = FullTablespace { dir, name };
        c.batch_execute(&format!("CREATE TABLESPACE {} LOCATION '{}'", t.name, t.dir.display())).unwrap();
        for table in TABLES {
            c.batch_execute(&format!("ALTER TABLE {table} SET TABLESPACE {}", t.name)).unwrap();
        }
        Some(t)
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Take every free byte of the tmpfs.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for FullTablespace {
    fn drop(&mut self) {
        self.free();
        if let Ok(mut c) = postgres::Client::connect(&dsn(), postgres::NoTls) {
            let _ = c.batch_execute("SET client_min_messages = warning");
            for table in TABLES {
                let _ = c.batch_execute(&format!("ALTER TABLE {table} SET TABLESPACE pg_default"));
            }
            let _ = c.batch_execute(&format!("DROP TABLESPACE IF EXISTS {}", self.name));
        }
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn prepared_transactions_allowed(test: &str, c: &mut Client) -> bool {
    let max: String = c.query_one("SHOW max_prepared_transactions", &[]).unwrap().get(0);
    if max == "0" {
        skip(test, "max_prepared_transactions = 0 in the test cluster");
    }
    max != "0"
}

/// A prepared transaction with an xid: it pins the xmin horizon, so no dead row version
/// can be pruned and every new version needs new space (as on a busy system with a long
/// transaction). Returns its gid for ROLLBACK PREPARED.
fn pin_xmin(c: &mut Client) -> String {
    let gid = unique("pin");
    c.batch_execute(&format!("BEGIN; SELECT pg_catalog.txid_current(); PREPARE TRANSACTION '{gid}'")).unwrap();
    gid
}

fn is_disk_full(e: &postgres::Error) -> bool {
    sqlstate(e) == "53100"
}

fn now(c: &mut Client) -> DateTime<Utc> {
    c.query_one("SELECT now()", &[]).unwrap().get(0)
}

/// How many of `ids` have a last_seen_at before `t`.
fn behind(c: &mut Client, ids: &[Uuid], t: DateTime<Utc>) -> i64 {
    c.query_one("SELECT count(*) FROM lease_sched.runtimes WHERE id = ANY($1) AND last_seen_at < $2", &[&ids, &t])
        .unwrap()
        .get(0)
}

/// Touch and flush these runtimes until a flush fails with 53100. Each flush writes a new
/// version of every row (the pinned xmin horizon keeps the old ones); the pages' free space
/// runs out within a few rounds, and from then on every write of these rows needs new space.
/// (A touch that overflows the buffer writes directly and may meet the full disk first.)
fn flush_until_the_disk_is_full(c: &mut Client, ids: &[Uuid]) {
    for _ in 0..50 {
        for id in ids {
            match c.query_one("SELECT lease_sched.runtime_touch($1)", &[id]) {
                Ok(r) => assert!(r.get::<_, bool>(0)),
                Err(e) => {
                    assert!(is_disk_full(&e), "a direct touch on a full disk fails with 53100: {e}");
                }
            }
        }
        if let Err(e) = c.query_one("SELECT lease_sched.runtime_flush()", &[]) {
            assert!(is_disk_full(&e), "a flush on a full disk fails with 53100: {e}");
            return;
        }
    }
    panic!("the flushes kept finding space: the tablespace is not full");
}

/// `n` online runtimes, the buffer flushed, the tablespace filled, and touches flushed
/// until a flush needs new space and fails with 53100. Returns the runtimes and the
/// database time just before their last, acknowledged, still buffered touches.
fn touches_buffered_on_a_full_disk(c: &mut Client, space: &FullTablespace, n: usize) -> (Vec<Uuid>, DateTime<Utc>) {
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(c).is_some()), "sweeper running");
    let ids: Vec<Uuid> = c
        .query("SELECT lease_sched.runtime_register('diskfull-' || g) FROM generate_series(1, $1) g", &[&(n as i32)])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    flush(c);
    space.fill();
    flush_until_the_disk_is_full(c, &ids);
    let acknowledged_after = now(c);
    std::thread::sleep(Duration::from_millis(20));
    for id in &ids {
        assert!(touch(c, *id), "runtime_touch acknowledges the touch");
    }
    let e = c.query_one("SELECT lease_sched.runtime_flush()", &[]).expect_err("the disk is still full");
    assert!(is_disk_full(&e), "{e}");
    assert_eq!(pending(c), n as i64, "the failed flush keeps every touch buffered");
    assert_eq!(behind(c, &ids, acknowledged_after), n as i64);
    (ids, acknowledged_after)
}

/// The server's log from `from` (bytes) on.
fn log_since(from: u64) -> String {
    let Ok(log) = std::env::var("LEASE_SCHED_LOG") else { return String::new() };
    let all = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&all[(from as usize).min(all.len())..]).into_owned()
}

fn log_len() -> u64 {
    std::env::var("LEASE_SCHED_LOG").ok().and_then(|l| std::fs::metadata(l).ok()).map_or(0, |m| m.len())
}

/// A clean shutdown while the tablespace is full: the exit drain fails, and the touches it
/// could not write are saved in the data directory and written after the restart, not lost
/// with the shared memory.
#[test]
fn a_clean_shutdown_on_a_full_disk_keeps_every_acknowledged_touch() {
    const TEST: &str = "a_clean_shutdown_on_a_full_disk_keeps_every_acknowledged_touch";
    let _g = serial();
    let mut c = connect();
    if !prepared_transactions_allowed(TEST, &mut c) {
        return;
    }
    let Some(space) = FullTablespace::new(TEST, &mut c) else { return };
    let gid = pin_xmin(&mut c);
    let (ids, acknowledged_after) = touches_buffered_on_a_full_disk(&mut c, &space, 3000);
    let from = log_len();
    drop(c);
    pg_ctl(&["-m", "fast", "-t", "60", "stop"]);
    space.free();
    pg_ctl(&["start"]);
    let mut c = wait_for_server();
    c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
    // The restarted sweeper reads the saved touches back and writes them at once.
    let all_written = wait_until(Duration::from_secs(30), || behind(&mut c, &ids, acknowledged_after) == 0);
    let left = behind(&mut c, &ids, acknowledged_after);
    assert!(all_written, "{left} of {} acknowledged touches lost across the clean shutdown", ids.len());
    assert_eq!(stat(&mut c, "touches_restored"), ids.len() as i64);
    assert_eq!(stat(&mut c, "touches_lost"), 0);
    let log = log_since(from);
    if std::env::var("LEASE_SCHED_LOG").is_ok() {
        assert!(log.contains("(SQLSTATE 53100)"), "the failed drain is logged with its SQLSTATE:\n{log}");
    }
    c.execute("DELETE FROM lease_sched.runtimes WHERE id = ANY($1)", &[&ids]).unwrap();
}

/// An immediate shutdown on a full disk: no drain runs, and the documented loss of the
/// buffered touches (at most one flush interval of last_seen_at progress) stays just that:
/// the rows keep their last written time, and leases are untouched.
#[test]
fn an_immediate_shutdown_on_a_full_disk_loses_only_the_buffered_touches() {
    const TEST: &str = "an_immediate_shutdown_on_a_full_disk_loses_only_the_buffered_touches";
    let _g = serial();
    let mut c = connect();
    if !prepared_transactions_allowed(TEST, &mut c) {
        return;
    }
    // A lease taken before the disk fills: committed state that must survive.
    let lease = claim(&mut c, &unique("immediate_full"), plan(), "r1");
    let Some(space) = FullTablespace::new(TEST, &mut c) else { return };
    let gid = pin_xmin(&mut c);
    let (ids, acknowledged_after) = touches_buffered_on_a_full_disk(&mut c, &space, 500);
    drop(c);
    pg_ctl(&["-m", "immediate", "stop"]);
    space.free();
    pg_ctl(&["start"]);
    let mut c = wait_for_server();
    c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(&mut c).is_some()));
    flush(&mut c);
    assert_eq!(
        behind(&mut c, &ids, acknowledged_after),
        ids.len() as i64,
        "an immediate stop loses the buffered touches (documented), and nothing brings back a partial set"
    );
    let (status, _) = runtime_state(&mut c, ids[0]);
    assert_eq!(status, "online", "the rows are intact");
    assert_eq!(stat(&mut c, "touches_restored"), 0);
    assert!(heartbeat(&mut c, lease.id(), lease.token()));
    assert!(finish_ok(&mut c, lease.id(), lease.token()));
    c.execute("DELETE FROM lease_sched.runtimes WHERE id = ANY($1)", &[&ids]).unwrap();
}

/// When the drain fails and the touches cannot be saved either (the data directory is full
/// too; here the save is made to fail by a directory standing where its file goes), the
/// sweeper says how many touches are lost, and the next start reports the count again in
/// `touches_lost`.
#[test]
fn a_loss_that_cannot_be_avoided_is_said_and_counted_after_the_restart() {
    const TEST: &str = "a_loss_that_cannot_be_avoided_is_said_and_counted_after_the_restart";
    let _g = serial();
    let mut c = connect();
    if !prepared_transactions_allowed(TEST, &mut c) {
        return;
    }
    let Ok(pgdata) = std::env::var("LEASE_SCHED_PGDATA") else {
        skip(TEST, "LEASE_SCHED_PGDATA is not set (run through scripts/test.sh)");
        return;
    };
    let Some(space) = FullTablespace::new(TEST, &mut c) else { return };
    let oid: u32 = c.query_one("SELECT oid FROM pg_database WHERE datname = current_database()", &[]).unwrap().get(0);
    let blocker = PathBuf::from(&pgdata).join(format!("lease_sched_touches.{oid}.tmp"));
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"").unwrap();
    let gid = pin_xmin(&mut c);
    let (ids, _) = touches_buffered_on_a_full_disk(&mut c, &space, 200);
    let from = log_len();
    drop(c);
    pg_ctl(&["-m", "fast", "-t", "60", "stop"]);
    space.free();
    let _ = std::fs::remove_dir_all(&blocker);
    pg_ctl(&["start"]);
    let mut c = wait_for_server();
    c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || stat(&mut c, "touches_lost") > 0),
        "the loss is counted after the restart"
    );
    assert_eq!(stat(&mut c, "touches_lost"), ids.len() as i64);
    if std::env::var("LEASE_SCHED_LOG").is_ok() {
        let log = log_since(from);
        assert!(
            log.contains(&format!("{} acknowledged runtime touches are lost", ids.len())),
            "the shutdown names the count:\n{log}"
        );
        assert!(
            log.contains(&format!("{} acknowledged runtime touches were lost", ids.len())),
            "and the start:\n{log}"
        );
    }
    c.execute("DELETE FROM lease_sched.runtimes WHERE id = ANY($1)", &[&ids]).unwrap();
}

/// With the tablespace of the lease and runtime
/// tables full under 3 clients, every claim, heartbeat, finish or touch either succeeds or
/// fails with 53100, every acknowledged finish stays SUCCESS, every acknowledged touch is
/// kept, the sweeper survives its failed passes, and once space is back no lease is left
/// RUNNING.
#[test]
fn a_full_tablespace_under_load_loses_nothing_acknowledged() {
    let _g = serial();
    load_on_a_full_tablespace("a_full_tablespace_under_load_loses_nothing_acknowledged", 5);
}

/// The same with the touch buffer at its minimum size (16 runtimes), so that most touches
/// overflow it and are written directly, and fail while the disk is full.
#[test]
fn a_full_tablespace_under_load_with_the_smallest_touch_buffer_loses_nothing_acknowledged() {
    const TEST: &str = "a_full_tablespace_under_load_with_the_smallest_touch_buffer_loses_nothing_acknowledged";
    let _g = serial();
    let mut c = connect();
    c.batch_execute("ALTER SYSTEM SET lease_sched.touch_buffer_size = 16").unwrap();
    drop(c);
    // Whatever happens below, the cluster gets its own buffer size back.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            if let Ok(mut c) = postgres::Client::connect(&dsn(), postgres::NoTls) {
                let _ = c.batch_execute("ALTER SYSTEM RESET lease_sched.touch_buffer_size");
            }
            pg_ctl(&["-m", "fast", "restart"]);
            wait_for_server();
        }
    }
    let _reset = Reset;
    pg_ctl(&["-m", "fast", "restart"]);
    let mut c = wait_for_server();
    let size: String = c.query_one("SHOW lease_sched.touch_buffer_size", &[]).unwrap().get(0);
    assert_eq!(size, "16");
    drop(c);
    load_on_a_full_tablespace(TEST, 20);
}

/// 3 clients claim, heartbeat, finish and touch `per_client` runtimes each, for 8 s with the
/// tablespace full and 2 s after space is back.
fn load_on_a_full_tablespace(test: &str, per_client: usize) {
    let mut c = connect();
    if !prepared_transactions_allowed(test, &mut c) {
        return;
    }
    let Some(space) = FullTablespace::new(test, &mut c) else { return };
    // The sweeper flushes the whole buffer every second meanwhile, so its flush passes meet
    // the full disk too.
    struct FlushEverySecond;
    impl Drop for FlushEverySecond {
        fn drop(&mut self) {
            if let Ok(mut c) = postgres::Client::connect(&dsn(), postgres::NoTls) {
                let _ = c.batch_execute("ALTER SYSTEM RESET lease_sched.touch_flush_interval");
                let _ = c.batch_execute("SELECT pg_reload_conf()");
            }
        }
    }
    let _flush = FlushEverySecond;
    c.batch_execute("ALTER SYSTEM SET lease_sched.touch_flush_interval = '1s'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(&mut c).is_some()));
    let sweeper = sweeper_pid(&mut c);
    let errors_before = stat(&mut c, "sweep_errors");
    let prefix = unique("fullload");
    let runtimes: Vec<Vec<Uuid>> =
        (0..3).map(|_| (0..per_client).map(|_| register_runtime(&mut c)).collect()).collect();
    let gid = pin_xmin(&mut c);
    space.fill();
    flush_until_the_disk_is_full(&mut c, &runtimes.concat());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            let prefix = prefix.clone();
            let mine = runtimes[i].clone();
            std::thread::spawn(move || {
                let mut c = connect();
                let mut finished = Vec::new();
                // Per runtime: the database time just before its last acknowledged touch.
                let mut touched: Vec<Option<DateTime<Utc>>> = vec![None; mine.len()];
                let (mut full, mut touches) = (0u64, 0u64);
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let job = format!("{prefix}-{i}-{k}");
                    let mut calls = || -> Result<(), postgres::Error> {
                        let r = c.query_one(
                            "SELECT outcome, execution_id, lease_token FROM lease_sched.lease_try_claim($1, $2, 'r', stale_timeout => '1 second')",
                            &[&job, &plan()],
                        )?;
                        let (id, token): (Option<Uuid>, Option<Uuid>) = (r.get(1), r.get(2));
                        let (Some(id), Some(token)) = (id, token) else { return Ok(()) };
                        c.query_one("SELECT lease_sched.lease_heartbeat($1, $2)", &[&id, &token])?;
                        let ok: bool =
                            c.query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", &[&id, &token])?.get(0);
                        if ok {
                            finished.push(id);
                        }
                        Ok(())
                    };
                    let mut outcomes = vec![calls()];
                    for (j, rt) in mine.iter().enumerate() {
                        let touch = (|| -> Result<(), postgres::Error> {
                            let before: DateTime<Utc> = c.query_one("SELECT clock_timestamp()", &[])?.get(0);
                            let ok: bool = c.query_one("SELECT lease_sched.runtime_touch($1)", &[rt])?.get(0);
                            if ok {
                                touched[j] = Some(before);
                                touches += 1;
                            }
                            Ok(())
                        })();
                        outcomes.push(touch);
                    }
                    for e in outcomes.into_iter().filter_map(Result::err) {
                        assert!(is_disk_full(&e), "only 53100 on a full disk, got {e:?}");
                        full += 1;
                    }
                }
                (finished, touched, full, touches)
            })
        })
        .collect();
    // Full for a while, then space comes back while the clients keep going.
    std::thread::sleep(Duration::from_secs(8));
    space.free();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let finished: Vec<Uuid> = results.iter().flat_map(|r| r.0.clone()).collect();
    let full: u64 = results.iter().map(|r| r.2).sum();
    let touches: u64 = results.iter().map(|r| r.3).sum();
    c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
    eprintln!(
        "disk full under load ({per_client} runtimes per client): {} acknowledged finishes, {touches} acknowledged \
         touches, {full} calls refused with 53100, sweep errors {}, {:?}",
        finished.len(),
        stat(&mut c, "sweep_errors") - errors_before,
        started.elapsed()
    );
    assert!(full > 0, "the disk was full for some calls");
    assert!(stat(&mut c, "sweep_errors") > errors_before, "the sweeper's flushes met the full disk");
    let not_success: i64 = c
        .query_one(
            "SELECT count(*) FROM lease_sched.executions WHERE id = ANY($1) AND status <> 'SUCCESS'",
            &[&finished],
        )
        .unwrap()
        .get(0);
    assert_eq!(not_success, 0, "every acknowledged finish is SUCCESS");
    flush(&mut c);
    for (i, r) in results.iter().enumerate() {
        for (j, t) in r.1.iter().enumerate() {
            if let Some(t) = t {
                assert_eq!(behind(&mut c, &runtimes[i][j..=j], *t), 0, "runtime {i}/{j}'s acknowledged touch is kept");
            }
        }
    }
    assert_eq!(sweeper_pid(&mut c), sweeper, "the sweeper survived the full disk");
    // Leases whose finish failed go stale after 1 s and are failed by the sweeper.
    let running = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM lease_sched.executions WHERE job_name LIKE $1 AND status = 'RUNNING'",
            &[&format!("{prefix}-%")],
        )
        .unwrap()
        .get(0)
    };
    assert!(wait_until(Duration::from_secs(20), || running(&mut c) == 0), "{} leases left RUNNING", running(&mut c));
    let all: Vec<Uuid> = runtimes.concat();
    c.execute("DELETE FROM lease_sched.runtimes WHERE id = ANY($1)", &[&all]).unwrap();
}
