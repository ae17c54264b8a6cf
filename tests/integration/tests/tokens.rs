//! Fencing tokens never repeat (docs/reliability.md, G13): for leases and locks, a grant's
//! token is above every token granted before, across DROP/CREATE EXTENSION (also from a
//! session that outlived it), a restore of the executions table into a fresh database
//! (sequence not carried) and of a whole database, a copy started from a base backup, and
//! the promotion of an asynchronous replica that never received the last grants.
//!
//! Destructive steps run in scratch databases of their own (dropped afterwards) or in
//! clusters of the test's own (tests/integration/src/fixtures.rs, ports the kernel picks).
use std::process::Command;
use std::time::Duration;

use lease_sched_integration::fixtures::{client_at, OwnClusters, ScratchDb};
use lease_sched_integration::*;
use postgres::Client;
use uuid::Uuid;

/// One lease token and one lock token, both checked above `floor`.
fn assert_grants_above(c: &mut Client, floor: i64, what: &str) -> i64 {
    let r = claim(c, &unique("after"), plan(), "r");
    assert_eq!(r.outcome, "won", "{what}");
    let lease_tok = r.fencing_token.unwrap();
    let (_, lock_tok) = lock_acquire(c, &unique("after-lock"), "h").unwrap();
    assert!(lease_tok > floor, "{what}: lease token {lease_tok} is not above {floor}, granted before");
    assert!(lock_tok > lease_tok, "{what}: lock token {lock_tok} after lease token {lease_tok}");
    lock_tok
}

#[test]
fn tokens_keep_increasing_across_drop_and_create_extension() {
    if native_only("tokens_keep_increasing_across_drop_and_create_extension", "DROP and CREATE EXTENSION in scratch databases; the portable edition is installed by its script (the floor after a fresh install is checked by its regress suite, tokens.sql)") {
        return;
    }
    let db = ScratchDb::new("fence_recreate");
    let mut old_backend = db.connect();
    old_backend.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let highest = grant_tokens(&mut old_backend, 5, "before");
    let mut other_old = db.connect();
    grant_tokens(&mut other_old, 1, "before2");
    let highest = highest.max(grant_tokens(&mut old_backend, 1, "before3"));

    old_backend.batch_execute("DROP EXTENSION lease_sched CASCADE; CREATE EXTENSION lease_sched").unwrap();
    let last: i64 = old_backend.query_one("SELECT last_value FROM lease_sched.fencing_token_seq", &[]).unwrap().get(0);
    assert!(last < highest, "the re-created sequence starts over ({last}): without a floor tokens would repeat");

    // A new session, and sessions that granted tokens before the re-create (a pooler keeps
    // such backends), all grant above every token granted before.
    let mut fresh = db.connect();
    let t1 = assert_grants_above(&mut fresh, highest, "new session after DROP/CREATE EXTENSION");
    let t2 = assert_grants_above(&mut old_backend, highest, "the session that re-created the extension");
    let t3 = assert_grants_above(&mut other_old, highest, "a session that granted before the re-create");
    assert!(t1 < t2 && t2 < t3);
}

/// A session that floored the sequence before DROP/CREATE EXTENSION, re-created in another
/// session, and grants first after it.
#[test]
fn a_session_from_before_drop_and_create_extension_grants_first_above_the_old_tokens() {
    if native_only(
        "a_session_from_before_drop_and_create_extension_grants_first_above_the_old_tokens",
        "DROP and CREATE EXTENSION in scratch databases",
    ) {
        return;
    }
    let db = ScratchDb::new("fence_recreate2");
    let mut old = db.connect();
    old.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let highest = grant_tokens(&mut old, 3, "before");
    let mut admin = db.connect();
    admin.batch_execute("DROP EXTENSION lease_sched CASCADE; CREATE EXTENSION lease_sched").unwrap();
    assert_grants_above(&mut old, highest, "first grant after the re-create, from a session that granted before it");
}

/// The floor after an event (here CREATE EXTENSION) is taken by the first grant, inside its
/// caller's transaction. Another session's grant, of another lease or lock, must not wait
/// for that transaction to end.
#[test]
fn the_first_grant_after_create_extension_does_not_hold_up_other_sessions_grants() {
    if native_only(
        "the_first_grant_after_create_extension_does_not_hold_up_other_sessions_grants",
        "CREATE EXTENSION in a scratch database",
    ) {
        return;
    }
    let db = ScratchDb::new("fence_floor_wait");
    let mut a = db.connect();
    a.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let mut b = db.connect();
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut a, "long_job", plan(), "a").outcome, "won"); // floors, stays open
    b.batch_execute("SET lock_timeout = '2s'").unwrap();
    let got = b.query("SELECT acquired FROM lease_sched.lock_acquire('other-lock', 'b')", &[]);
    let waited = got.as_ref().err().map(db_error);
    a.batch_execute("COMMIT").unwrap();
    assert!(
        waited.is_none(),
        "an unrelated lock_acquire waited for the open transaction that floored the sequence: {waited:?}"
    );
    let r = try_claim_with(&mut b, "other_job", plan(), "b", &ClaimArgs::default());
    assert!(r.is_ok());
}

fn host_port() -> (String, String) {
    let get = |k: &str| dsn().split_whitespace().find_map(|kv| kv.strip_prefix(k).map(str::to_string)).unwrap();
    (get("host="), get("port="))
}

fn pg_tool(tool: &str, args: &[&str]) -> Vec<u8> {
    let (host, port) = host_port();
    let out = Command::new(format!("{}/{tool}", pgbin()))
        .args(["-h", &host, "-p", &port, "-U", "postgres"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn tokens_keep_increasing_across_a_restore_without_the_sequence() {
    if native_only(
        "tokens_keep_increasing_across_a_restore_without_the_sequence",
        "dumps and restores the extension into scratch databases",
    ) {
        return;
    }
    let src = ScratchDb::new("fence_dump_src");
    let mut s = src.connect();
    s.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let mut highest = grant_tokens(&mut s, 5, "before");
    // A run that failed and may be retried, and one still RUNNING: both restored, then taken over.
    let failed = claim(&mut s, "retry_job", plan(), "r");
    assert!(finish_failed(&mut s, failed.id(), failed.token(), Duration::ZERO));
    let running = claim(&mut s, "running_job", plan(), "r");
    highest = highest.max(running.fencing_token.unwrap());
    let (_, t) = lock_acquire(&mut s, "last-lock", "h").unwrap();
    highest = highest.max(t);

    // Only the executions table, data only: the sequence is not carried.
    let dump = std::env::temp_dir().join(format!("{}.sql", src.name));
    std::fs::write(
        &dump,
        pg_tool("pg_dump", &["--data-only", "--table=lease_sched.sys_cron_executions", "-d", &src.name]),
    )
    .unwrap();
    let dst = ScratchDb::new("fence_dump_dst");
    let mut d = dst.connect();
    d.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    pg_tool("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dst.name, "-f", dump.to_str().unwrap()]);
    let _ = std::fs::remove_file(&dump);
    assert_eq!(count(&mut d, "SELECT count(*) FROM lease_sched.sys_cron_executions"), 7, "restored");
    let max_restored: i64 =
        d.query_one("SELECT max(fencing_token) FROM lease_sched.sys_cron_executions", &[]).unwrap().get(0);
    assert_eq!(max_restored, running.fencing_token.unwrap());
    let last: i64 = d.query_one("SELECT last_value FROM lease_sched.fencing_token_seq", &[]).unwrap().get(0);
    assert!(last < max_restored, "the sequence was not carried ({last} vs {max_restored})");

    // The restored FAILED run is retried, the restored RUNNING lease (stale) is stolen, new
    // plans and locks are granted: every token above every token granted before.
    let retry = claim(&mut d, "retry_job", plan(), "r2");
    assert_eq!(retry.outcome, "stole");
    assert!(retry.fencing_token.unwrap() > highest, "retry token {:?} vs {highest}", retry.fencing_token);
    make_stale(&mut d, running.id());
    let steal = claim(&mut d, "running_job", plan(), "r2");
    assert_eq!(steal.outcome, "stole");
    assert!(steal.fencing_token.unwrap() > retry.fencing_token.unwrap());
    // The old holder's token no longer passes in the restored copy.
    assert_ls001(
        lease_fence(&mut d, running.id(), running.fencing_token.unwrap()),
        &[&steal.fencing_token.unwrap().to_string()],
        "restored old token",
    );
    assert_grants_above(&mut d, highest, "after a restore of the executions table alone");

    // A whole-database dump carries the sequence; the restore floors anyway: still above.
    let full = std::env::temp_dir().join(format!("{}_full.sql", src.name));
    std::fs::write(&full, pg_tool("pg_dump", &["-d", &src.name])).unwrap();
    let dst2 = ScratchDb::new("fence_dump_full");
    pg_tool("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dst2.name, "-f", full.to_str().unwrap()]);
    let _ = std::fs::remove_file(&full);
    let mut d2 = dst2.connect();
    let floored: i64 = d2.query_one("SELECT timeline FROM lease_sched.token_floor", &[]).unwrap().get(0);
    assert_eq!(floored, 0, "token_floor is not dumped: the restored copy floors at its first grant");
    assert_grants_above(&mut d2, highest, "after a whole-database restore");
}

// ---------------------------------------------------------------------------------------
// a copy started from a base backup

/// A copy started from a base backup (or a volume snapshot) without recovery.signal replays
/// to the end of the backup and stays on the original's timeline, with the token sequence
/// as it was then, behind every token the original granted after the backup. The first
/// grant after any server start floors the sequence at the database clock, so the copy's
/// tokens are above all of them.
#[test]
fn a_copy_started_from_a_base_backup_grants_above_every_token_the_original_granted() {
    if native_only(
        "a_copy_started_from_a_base_backup_grants_above_every_token_the_original_granted",
        "starts its own cluster preloading the library",
    ) {
        return;
    }
    let [original_port, copy_port] = free_ports::<2>();
    let clusters = OwnClusters::new("token_base_backup", original_port, &["original", "copy"]);
    let mut o =
        clusters.start_primary("original", original_port, &["wal_level = replica", "log_min_messages = warning"]);
    let before_backup = grant_tokens(&mut o, 5, "before");

    // The copy: a plain base backup, no standby.signal, no recovery.signal.
    clusters.base_backup("copy", original_port, copy_port, None);

    // The original grants on after the backup: far more than the 32 sequence values
    // WAL-logged ahead of use, so the copy's sequence is behind them.
    let after_backup = grant_tokens(&mut o, 100, "after");
    assert!(after_backup > before_backup);
    drop(o);
    clusters.pg_ctl("original", &["-m", "fast", "stop"]);

    // The copy starts on the original's timeline.
    clusters.pg_ctl("copy", &["start"]);
    let mut c = client_at(copy_port);
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(!in_recovery, "the copy runs as a primary");
    let (timeline_before, seq): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT timeline FROM lease_sched.token_floor), last_value FROM lease_sched.fencing_token_seq",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(seq < after_backup, "the copy's sequence ({seq}) is behind the original's later grants ({after_backup})");
    let timeline: i64 = c.query_one("SELECT timeline_id::bigint FROM pg_control_checkpoint()", &[]).unwrap().get(0);
    assert_eq!(timeline_before, timeline, "the copy stays on the timeline the original floored on");

    // Its first grants, leases and locks, are above every token the original granted.
    let r = claim(&mut c, &unique("copy"), plan(), "r");
    assert_eq!(r.outcome, "won");
    assert!(
        r.fencing_token.unwrap() > after_backup,
        "lease token {:?} repeats the original's (up to {after_backup})",
        r.fencing_token
    );
    let lock: i64 = c
        .query_one("SELECT fencing_token FROM lease_sched.lock_acquire($1, 'h', '1 hour')", &[&unique("copy-lock")])
        .unwrap()
        .get(0);
    assert!(lock > r.fencing_token.unwrap());
    let floored_after_start: bool = c
        .query_one("SELECT server_start = pg_postmaster_start_time() FROM lease_sched.token_floor", &[])
        .unwrap()
        .get(0);
    // (to_timestamp rounds through float8: compare to the millisecond)
    let close: bool = c
        .query_one(
            "SELECT abs(extract(epoch FROM server_start - pg_postmaster_start_time())) < 0.001 FROM lease_sched.token_floor",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(floored_after_start || close, "token_floor records this server start");
    eprintln!("base backup copy: original granted up to {after_backup} after the backup; the copy's sequence was at {seq}; its first tokens {} and {lock}", r.fencing_token.unwrap());
}

// ---------------------------------------------------------------------------------------
// promotion of a lagging asynchronous replica

#[test]
fn tokens_keep_increasing_across_promotion_of_a_lagging_async_replica() {
    if native_only(
        "tokens_keep_increasing_across_promotion_of_a_lagging_async_replica",
        "starts its own primary and replica preloading the library",
    ) {
        return;
    }
    let [fo_primary, fo_replica] = free_ports::<2>();
    let clusters = OwnClusters::new("token_promotion", fo_primary, &["primary", "replica"]);
    let mut p = clusters.start_primary("primary", fo_primary, &["wal_level = replica", "log_min_messages = warning"]);

    // An asynchronous streaming replica.
    clusters.base_backup("replica", fo_primary, fo_replica, Some("lagging"));
    clusters.pg_ctl("replica", &["start"]);

    // Phase 1: grants the replica receives and replays.
    let seen_by_replica = grant_tokens(&mut p, 10, "phase1");
    let lsn: String = p.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let mut r = client_at(fo_replica);
    assert!(
        wait_until(Duration::from_secs(30), || {
            r.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap().get::<_, bool>(0)
        }),
        "the replica replays phase 1"
    );
    let sync: Option<String> = p
        .query_opt("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'lagging'", &[])
        .unwrap()
        .map(|row| row.get(0));
    assert_eq!(sync.as_deref(), Some("async"));
    drop(r);

    // The replica falls behind (stops receiving), the primary grants on (far more than the
    // 32 sequence values WAL-logged ahead), then dies.
    clusters.pg_ctl("replica", &["-m", "fast", "stop"]);
    let lost = grant_tokens(&mut p, 100, "phase2");
    assert!(lost > seen_by_replica);
    drop(p);
    clusters.pg_ctl("primary", &["-m", "immediate", "stop"]);

    // The replica comes back (its primary is gone), really lacks phase 2, and is promoted.
    clusters.pg_ctl("replica", &["start"]);
    let mut r = client_at(fo_replica);
    assert_eq!(count(&mut r, "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = 'phase2_job'"), 0);
    assert_eq!(count(&mut r, "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = 'phase1_job'"), 10);
    let seq: i64 = r.query_one("SELECT last_value FROM lease_sched.fencing_token_seq", &[]).unwrap().get(0);
    assert!(
        seq < lost,
        "the replica's sequence ({seq}) is behind the lost grants ({lost}): without a floor tokens would repeat"
    );
    clusters.pg_ctl("replica", &["promote"]);
    assert!(wait_until(Duration::from_secs(30), || !r
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0)));

    // The session opened during recovery and a new one both grant above every lost token,
    // leases (new and stolen) and locks alike.
    assert_grants_above(&mut r, lost, "the first grant after promotion (session from before it)");
    let mut r2 = client_at(fo_replica);
    let t = assert_grants_above(&mut r2, lost, "a new session after promotion");
    let victim = r2
        .query_one("SELECT id, plan_time FROM lease_sched.sys_cron_executions WHERE job_name = 'phase1_job' AND status = 'RUNNING' LIMIT 1", &[])
        .unwrap();
    let (victim_id, victim_plan): (Uuid, chrono::DateTime<chrono::Utc>) = (victim.get(0), victim.get(1));
    make_stale(&mut r2, victim_id);
    let stolen = claim(&mut r2, "phase1_job", victim_plan, "after-promotion");
    assert_eq!(stolen.outcome, "stole");
    assert!(stolen.fencing_token.unwrap() > t);
    let timeline: i64 = r2.query_one("SELECT timeline FROM lease_sched.token_floor", &[]).unwrap().get(0);
    assert!(timeline >= 2, "floored on the new timeline ({timeline})");
    eprintln!(
        "promotion: replica saw tokens up to {seen_by_replica}, lost up to {lost}; after promotion {}",
        stolen.fencing_token.unwrap()
    );
}
