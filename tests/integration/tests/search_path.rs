//! Nothing a role puts on a search_path runs as the superuser.
//!
//! A non-superuser role with CREATE on `public` plants look-alike functions, aggregates and
//! operators (for every pg_catalog operator over the types lease_sched's SQL uses, and for
//! the functions it calls, with more specific argument types where possible), each of which
//! records who called it; the database's search_path is set to `public, pg_catalog` (public
//! first). Then the sweeper is restarted (so it connects with that setting), it is given work
//! for every pass, every API function is called (as the role, and the admin ones as the
//! superuser with the hostile search_path) and several sweeps run. Nothing may have run a
//! planted object with any identity but the role's own.
//!
//! Types and relations too: a look-alike domain for every type name lease_sched's SQL
//! mentions and the common aliases (`DOMAINS`), whose CHECK records that it ran (PL/pgSQL
//! checks a domain when it initialises a variable, so an unqualified declaration in run()
//! ran the planted CHECK as the superuser calling it), in `public` and in each calling
//! session's pg_temp (which a session searches first for types and relations), beside
//! look-alike views for the relations the SQL reads (`RELATIONS`). Every function and
//! procedure of the API is called (`every_call`) by the role and by the superuser, each on
//! the hostile path with its own pg_temp planted; a catalog query checks that the calls
//! cover every function lease_sched installs.
//!
//! The test changes database-wide settings, so it is alone in this file (test binaries run
//! one after the other); a guard drops everything it planted even when an assertion fails.
use std::time::Duration;

use lease_sched_integration::*;
use postgres::Client;

/// Types whose pg_catalog operators are shadowed.
const TYPES: &[&str] = &[
    "uuid",
    "text",
    "name",
    "timestamptz",
    "interval",
    "int2",
    "int4",
    "int8",
    "float8",
    "numeric",
    "bool",
    "jsonb",
    "timestamp",
    "date",
];

/// Functions the SQL calls (or could), shadowed with exact or more specific argument types.
/// (name, argument types, return type, the pg_catalog expression it forwards to)
const FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("power", "a int4, b int4", "float8", "pg_catalog.power(a, b)"),
    ("power", "a int8, b int8", "float8", "pg_catalog.power(a, b)"),
    ("power", "a float8, b float8", "float8", "pg_catalog.power(a, b)"),
    ("power", "a float8, b int4", "float8", "pg_catalog.power(a, b)"),
    ("power", "a int4, b float8", "float8", "pg_catalog.power(a, b)"),
    ("now", "", "timestamptz", "pg_catalog.now()"),
    ("clock_timestamp", "", "timestamptz", "pg_catalog.clock_timestamp()"),
    ("statement_timestamp", "", "timestamptz", "pg_catalog.statement_timestamp()"),
    ("transaction_timestamp", "", "timestamptz", "pg_catalog.transaction_timestamp()"),
    ("gen_random_uuid", "", "uuid", "pg_catalog.gen_random_uuid()"),
    ("nextval", "s regclass", "int8", "pg_catalog.nextval(s)"),
    ("nextval", "s text", "int8", "pg_catalog.nextval(s::regclass)"),
    ("date_part", "f text, t interval", "float8", "pg_catalog.date_part(f, t)"),
    ("date_part", "f text, t timestamptz", "float8", "pg_catalog.date_part(f, t)"),
    ("extract", "f text, t interval", "numeric", "pg_catalog.extract(f, t)"),
    ("extract", "f text, t timestamptz", "numeric", "pg_catalog.extract(f, t)"),
    (
        "make_interval",
        "years int4, months int4, weeks int4, days int4, hours int4, mins int4, secs float8",
        "interval",
        "pg_catalog.make_interval(years, months, weeks, days, hours, mins, secs)",
    ),
    ("date_bin", "s interval, t timestamptz, o timestamptz", "timestamptz", "pg_catalog.date_bin(s, t, o)"),
    // The calendars' (sql/calendar.sql).
    ("timezone", "z text, t timestamptz", "timestamp", "pg_catalog.timezone(z, t)"),
    ("timezone", "z text, t timestamp", "timestamptz", "pg_catalog.timezone(z, t)"),
    (
        "make_timestamp",
        "y int4, m int4, d int4, h int4, mi int4, s float8",
        "timestamp",
        "pg_catalog.make_timestamp(y, m, d, h, mi, s)",
    ),
    ("make_date", "y int4, m int4, d int4", "date", "pg_catalog.make_date(y, m, d)"),
    ("date_trunc", "f text, t timestamp", "timestamp", "pg_catalog.date_trunc(f, t)"),
    ("isfinite", "t timestamptz", "bool", "pg_catalog.isfinite(t)"),
    ("isfinite", "t timestamp", "bool", "pg_catalog.isfinite(t)"),
    ("string_to_array", "t text, d text", "text[]", "pg_catalog.string_to_array(t, d)"),
    ("split_part", "t text, d text, n int4", "text", "pg_catalog.split_part(t, d, n)"),
    ("upper", "t text", "text", "pg_catalog.upper(t)"),
    ("lower", "t text", "text", "pg_catalog.lower(t)"),
    ("char_length", "t text", "int4", "pg_catalog.char_length(t)"),
    ("octet_length", "t text", "int4", "pg_catalog.octet_length(t)"),
    ("length", "t text", "int4", "pg_catalog.length(t)"),
    ("left", "t text, n int4", "text", "pg_catalog.left(t, n)"),
    ("substr", "t text, a int4, b int4", "text", "pg_catalog.substr(t, a, b)"),
    ("cardinality", "a uuid[]", "int4", "pg_catalog.cardinality(a)"),
    ("array_length", "a uuid[], d int4", "int4", "pg_catalog.array_length(a, d)"),
    ("pg_column_size", "j jsonb", "int4", "pg_catalog.pg_column_size(j)"),
    ("random", "", "float8", "pg_catalog.random()"),
    ("format", "f text, a text", "text", "pg_catalog.format(f, a)"),
    ("pg_backend_pid", "", "int4", "pg_catalog.pg_backend_pid()"),
    ("current_setting", "s text", "text", "pg_catalog.current_setting(s)"),
    ("set_config", "s text, v text, l bool", "text", "pg_catalog.set_config(s, v, l)"),
    ("pg_notify", "c text, p text", "void", "pg_catalog.pg_notify(c, p)"),
    ("setval", "s regclass, v int8", "int8", "pg_catalog.setval(s, v)"),
    ("setval", "s text, v int8", "int8", "pg_catalog.setval(s::regclass, v)"),
];

/// Type names lease_sched's SQL mentions, and common aliases (keywords such as `int` or
/// `boolean` always mean the pg_catalog type, so their look-alikes must simply never run).
const DOMAINS: &[&str] = &[
    "text",
    "varchar",
    "bpchar",
    "char",
    "name",
    "uuid",
    "timestamptz",
    "timestamp",
    "date",
    "time",
    "interval",
    "int",
    "integer",
    "int2",
    "int4",
    "int8",
    "smallint",
    "bigint",
    "bool",
    "boolean",
    "numeric",
    "float4",
    "float8",
    "real",
    "jsonb",
    "json",
    "bytea",
    "oid",
    "regclass",
    "regtype",
    "regnamespace",
    "record",
    "trigger",
    "void",
    "anyelement",
];

/// Relations, lease_sched's own and the catalogs its SQL reads, shadowed by views in pg_temp
/// (searched first for relations) and in public.
const RELATIONS: &[&str] = &[
    "sys_cron_executions",
    "locks",
    "jobs",
    "runtimes",
    "fencing_token_seq",
    "token_floor_timeline",
    "token_floor_server_start",
    "executions",
    "active_leases",
    "job_health",
    "job_summary",
    "job_definitions",
    "token_floor",
    "pg_stat_activity",
    "pg_locks",
    "pg_class",
    "pg_namespace",
    "pg_roles",
    "pg_authid",
    "pg_settings",
    "pg_proc",
    "pg_type",
    "pg_extension",
    "pg_database",
    "pg_sequences",
    "pg_index",
];

/// The DDL that plants a look-alike domain for every name of `DOMAINS` and a look-alike
/// view for every name of `RELATIONS` in `schema`.
fn domains_and_views(c: &mut Client, schema: &str) -> String {
    let mut ddl = String::new();
    for name in DOMAINS {
        let base: String = c
            .query_one(
                "SELECT CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'b' THEN 'pg_catalog.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(t.typname::pg_catalog.text)
                             ELSE 'pg_catalog.text' END
                   FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_type t
                     ON t.oid OPERATOR(pg_catalog.=) pg_catalog.to_regtype('pg_catalog.' OPERATOR(pg_catalog.||) $1::pg_catalog.text)",
                &[name],
            )
            .unwrap()
            .get(0);
        ddl += &format!(
            "CREATE DOMAIN {schema}.\"{name}\" AS {base} CHECK (public.pwn_check({what}, VALUE));\n",
            what = quote(&format!("domain {schema}.{name}"))
        );
    }
    for name in RELATIONS {
        ddl += &format!(
            "CREATE VIEW {schema}.\"{name}\" AS SELECT public.pwn_check({what}, 0) AS id;\n",
            what = quote(&format!("relation {schema}.{name}"))
        );
    }
    ddl
}

/// Every function and procedure of the API, as plain statements that name no type and
/// no operator (they run on the hostile path). `job` keeps each caller's names apart.
fn every_call(job: &str) -> String {
    format!(
        "SELECT lease_sched.job_define('{job}-def', '1 hour', 'skip', '1 minute', 2, '5 minutes');
         SELECT * FROM lease_sched.job_definition('{job}-def');
         SELECT lease_sched.job_pause('{job}-def'), lease_sched.job_resume('{job}-def');
         SELECT lease_sched.lease_next_plan('{job}-def');
         SELECT * FROM lease_sched.lease_latest_plan('{job}-def');
         SELECT lease_sched.job_drop('{job}-def');
         SELECT * FROM lease_sched.lease_try_claim('{job}-stale', '2026-01-01 04:00+00', 'pwn', stale_timeout => '1 s');
         WITH c AS (SELECT * FROM lease_sched.lease_try_claim('{job}-f', '2026-01-01 05:00+00', 'pwn', max_attempts => 5))
         SELECT lease_sched.lease_heartbeat(c.execution_id, c.lease_token),
                lease_sched.lease_fence(c.execution_id, c.fencing_token),
                lease_sched.lease_fence(c.execution_id, c.fencing_token, c.lease_token),
                lease_sched.lease_finish(c.execution_id, c.lease_token, 'FAILED', '{{\"a\": 1}}', 3, 'E1', 'boom', '1 s')
           FROM c;
         WITH c AS (SELECT * FROM lease_sched.lease_try_claim('{job}-w', '2026-01-01 05:00+00', 'pwn')),
              f AS (SELECT c.execution_id, c.lease_token, lease_sched.lease_fence(c.execution_id, c.fencing_token, c.lease_token) FROM c),
              w AS (INSERT INTO public.\"{job}_lease_writes\" SELECT 1 FROM f RETURNING 1)
         SELECT lease_sched.lease_finish(f.execution_id, f.lease_token, 'SUCCESS') FROM f, w;
         WITH l AS (SELECT * FROM lease_sched.lock_acquire('{job}-l', 'pwn', '1 minute')),
              f AS (SELECT l.lock_token, lease_sched.lock_heartbeat('{job}-l', l.lock_token),
                           lease_sched.lock_fence('{job}-l', l.fencing_token),
                           lease_sched.lock_fence('{job}-l', l.fencing_token, l.lock_token) FROM l),
              w AS (INSERT INTO public.\"{job}_lock_writes\" SELECT 1 FROM f RETURNING 1)
         SELECT (SELECT i.holder FROM lease_sched.lock_info('{job}-l') i), lease_sched.lock_release('{job}-l', f.lock_token)
           FROM f, w;
         SELECT * FROM lease_sched.lock_acquire('{job}-l2', 'pwn', '1 s');
         SELECT lease_sched.lock_heartbeat('{job}-l2', pg_catalog.gen_random_uuid());
         SELECT lease_sched.lock_release('{job}-l2', pg_catalog.gen_random_uuid());
         SELECT lease_sched.runtime_register('{job}-rt');
         SELECT lease_sched.runtime_touch(lease_sched.runtime_register('{job}-rt2'));
         SELECT lease_sched.runtime_touch_batch(ARRAY[lease_sched.runtime_register('{job}-rt3'), pg_catalog.gen_random_uuid()]);
         SELECT lease_sched.runtime_pending();
         SELECT * FROM lease_sched.stats();
         SELECT lease_sched.retry_backoff(40, '10 s', '1 h');
         SELECT lease_sched.job_define('{job}-cal', cron => '*/5 * * * *', timezone => 'Europe/Berlin');
         SELECT * FROM lease_sched.job_next_runs('{job}-cal', 3);
         SELECT * FROM lease_sched.cron_next_runs('0 3 LW * ?', 'America/New_York', 3, '2024-11-01 00:00+00');
         SELECT lease_sched.job_trigger('{job}-cal');
         SELECT * FROM lease_sched.lease_claim_next('{job}-cal', 'pwn');
         SELECT lease_sched.lease_next_plan('{job}-cal');"
    )
}

/// run(), alone in its query string: a procedure may COMMIT only when called at top level,
/// which a CALL among several statements of one query string is not.
fn run_call(job: &str) -> String {
    format!("CALL lease_sched.run('{job}-run', 'SELECT 1', every => '1 hour')")
}

/// Tables whose writes need a fence (require_lease / require_lock row triggers), for
/// every_call(job), created by the role that calls it.
fn fenced_tables(job: &str) -> String {
    format!(
        "CREATE TABLE public.\"{job}_lease_writes\" (v pg_catalog.int4);
         CREATE TRIGGER only_fenced BEFORE INSERT ON public.\"{job}_lease_writes\"
             FOR EACH ROW EXECUTE FUNCTION lease_sched.require_lease('{job}-w', 'secret');
         CREATE TABLE public.\"{job}_lock_writes\" (v pg_catalog.int4);
         CREATE TRIGGER only_fenced BEFORE INSERT ON public.\"{job}_lock_writes\"
             FOR EACH ROW EXECUTE FUNCTION lease_sched.require_lock('{job}-l', 'secret');"
    )
}

/// The functions and procedures every_call and the admin calls below do not name, because
/// the API calls them itself (the fences' checks, run()'s deadline).
const CALLED_INSIDE: &[&str] = &[
    "lease_fence_check",
    "lock_fence_check",
    "lease_fence_passed",
    "lock_fence_passed",
    "run_arm_deadline",
    "run_disarm_deadline",
    "sweeper_status",
    "sys_sweeper_announce",
    "runtime_left_online",
    "calendar_next_plan",
    "job_trigger_due",
    "cron_error",
    "cron_value",
    "cron_field",
    "cron_parse",
    "cron_check_timezone",
    "cron_day_matches",
    "cron_next_bit",
    "cron_next_wall",
    "cron_utc_offset",
    "cron_transition",
    "cron_next_slot",
    // schedule/unschedule need pg_cron, which this cluster may lack: calendars.rs calls
    // them with pg_cron installed.
    "schedule",
    "unschedule",
];

struct Planted {
    role: String,
}

impl Drop for Planted {
    fn drop(&mut self) {
        // Runs even when an assertion failed: the database is shared by every test.
        if let Ok(mut c) = Client::connect(&dsn(), postgres::NoTls) {
            let role = &self.role;
            let _ = c.batch_execute(&format!(
                "SET search_path = pg_catalog, pg_temp;
                 ALTER DATABASE lease_sched RESET search_path;
                 DROP OWNED BY {role} CASCADE;
                 DROP ROLE IF EXISTS {role};"
            ));
            // New connections of later tests must not see the setting.
            let _ = c.batch_execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
                                      WHERE backend_type OPERATOR(pg_catalog.=) 'lease_sched sweeper'",
            );
        }
    }
}

/// A superuser connection that itself never resolves a name outside pg_catalog.
fn safe_connect() -> Client {
    let mut c = connect();
    c.batch_execute("SET search_path = pg_catalog, pg_temp").unwrap();
    c
}

fn sweeper_pid(c: &mut Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'lease_sched sweeper'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

/// The SQL body every planted object runs before forwarding: who called, what, from where.
fn record(what: &str) -> String {
    format!(
        "INSERT INTO public.pwn_log(who, what, backend, query)
         SELECT current_user, {what}, a.backend_type, a.query FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a;",
        what = quote(what)
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn plant(attacker: &mut Client, role: &str) {
    attacker
        .batch_execute(&format!(
            "SET search_path = pg_catalog, pg_temp;
             CREATE TABLE public.pwn_log(who text, what text, backend text, query text, at timestamptz DEFAULT pg_catalog.clock_timestamp());
             GRANT INSERT, SELECT ON public.pwn_log TO PUBLIC;
             -- The classic payload too: make the planting role superuser when run by one.
             CREATE FUNCTION public.pwn_escalate() RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
             BEGIN
               IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
                 EXECUTE 'ALTER ROLE {role} SUPERUSER';
               END IF;
             END $f$;"
        ))
        .unwrap();
    let mut ddl = String::new();
    for (name, args, ret, forward) in FUNCTIONS {
        ddl += &format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {ret} LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
               {} SELECT public.pwn_escalate(); SELECT {forward} $f$;\n",
            record(&format!("{name}({args})"))
        );
    }
    // Set-returning and aggregate look-alikes.
    for t in ["uuid", "timestamptz", "text", "int4", "int8"] {
        ddl += &format!(
            "CREATE FUNCTION public.unnest(a {t}[]) RETURNS SETOF {t} LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
               {} SELECT public.pwn_escalate(); SELECT pg_catalog.unnest(a) $f$;
             CREATE FUNCTION public.pwn_agg_{t}(s {t}[], v {t}) RETURNS {t}[] LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
               {} SELECT public.pwn_escalate(); SELECT pg_catalog.array_append(s, v) $f$;
             CREATE AGGREGATE public.array_agg({t}) (SFUNC = public.pwn_agg_{t}, STYPE = {t}[], INITCOND = '{{}}');\n",
            record(&format!("unnest({t}[])")),
            record(&format!("array_agg({t})")),
        );
    }
    ddl += &format!(
        "CREATE FUNCTION public.pwn_count(s int8) RETURNS int8 LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
           {} SELECT public.pwn_escalate(); SELECT s OPERATOR(pg_catalog.+) 1 $f$;
         CREATE AGGREGATE public.count(*) (SFUNC = public.pwn_count, STYPE = int8, INITCOND = '0');
         CREATE FUNCTION public.pwn_count_any(s int8, v anyelement) RETURNS int8 LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
           {} SELECT public.pwn_escalate(); SELECT s OPERATOR(pg_catalog.+) 1 $f$;
         CREATE AGGREGATE public.count(anyelement) (SFUNC = public.pwn_count_any, STYPE = int8, INITCOND = '0');
         CREATE FUNCTION public.pwn_sum(s int8, v int8) RETURNS int8 LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
           {} SELECT public.pwn_escalate(); SELECT s OPERATOR(pg_catalog.+) v $f$;
         CREATE AGGREGATE public.sum(int8) (SFUNC = public.pwn_sum, STYPE = int8, INITCOND = '0');\n",
        record("count(*)"),
        record("count(any)"),
        record("sum(int8)"),
    );
    attacker.batch_execute(&ddl).unwrap();

    // Every pg_catalog binary operator whose operand types are among TYPES (or their arrays),
    // shadowed in public with the same operand types: with public first on the path, these win.
    let list = TYPES.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ");
    let rows = attacker
        .query(
            &format!(
                "SELECT o.oprname, o.oprleft::regtype::text, o.oprright::regtype::text, o.oprresult::regtype::text
                   FROM pg_catalog.pg_operator o
                  WHERE o.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::regnamespace
                    AND o.oprkind OPERATOR(pg_catalog.=) 'b'
                    AND o.oprleft OPERATOR(pg_catalog.<>) 0 AND o.oprright OPERATOR(pg_catalog.<>) 0
                    AND o.oprleft::regtype OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT pg_catalog.unnest(ARRAY[{list}])::regtype
                          UNION ALL SELECT (pg_catalog.unnest(ARRAY[{list}]) OPERATOR(pg_catalog.||) '[]')::regtype))
                    AND o.oprright::regtype OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT pg_catalog.unnest(ARRAY[{list}])::regtype
                          UNION ALL SELECT (pg_catalog.unnest(ARRAY[{list}]) OPERATOR(pg_catalog.||) '[]')::regtype))
                    AND o.oprname OPERATOR(pg_catalog.<>) ALL (ARRAY['~~', '!~~', '~~*', '!~~*', '~', '!~', '~*', '!~*'])"
            ),
            &[],
        )
        .unwrap();
    assert!(rows.len() > 50, "found the operators to shadow ({})", rows.len());
    let mut ddl = String::new();
    for (i, r) in rows.iter().enumerate() {
        let (op, l, rt, res): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        ddl += &format!(
            "CREATE FUNCTION public.pwn_op_{i}(a {l}, b {rt}) RETURNS {res} LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
               {} SELECT public.pwn_escalate(); SELECT a OPERATOR(pg_catalog.{op}) b $f$;
             CREATE OPERATOR public.{op} (LEFTARG = {l}, RIGHTARG = {rt}, FUNCTION = public.pwn_op_{i});\n",
            record(&format!("{l} {op} {rt}"))
        );
    }
    attacker.batch_execute(&ddl).unwrap();

    // Look-alike domains and views in public: the CHECK and the view record who ran them.
    attacker
        .batch_execute(&format!(
            "CREATE FUNCTION public.pwn_check(what text, v anyelement) RETURNS bool LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $f$
               {} SELECT public.pwn_escalate(); SELECT true $f$;",
            record_dynamic("what")
        ))
        .unwrap();
    let ddl = domains_and_views(attacker, "public");
    attacker.batch_execute(&ddl).unwrap();
}

/// As record(), with the description taken from an SQL expression.
fn record_dynamic(what: &str) -> String {
    format!(
        "INSERT INTO public.pwn_log(who, what, backend, query)
         SELECT current_user, {what}, a.backend_type, a.query FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a;"
    )
}

#[test]
fn nothing_planted_on_a_search_path_runs_as_the_superuser() {
    let role = unique("pwn");
    let mut c = safe_connect();
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT CREATE, USAGE ON SCHEMA public TO {role};
         GRANT USAGE ON SCHEMA lease_sched TO {role};
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched TO {role};
         GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA lease_sched TO {role};"
    ))
    .unwrap();
    let _guard = Planted { role: role.clone() };

    let mut attacker = connect_as(&role);
    plant(&mut attacker, &role);
    // The second way in: the database's own search_path, public before pg_catalog.
    c.batch_execute("ALTER DATABASE lease_sched SET search_path = public, pg_catalog").unwrap();

    // The sweeper reconnects (the launcher restarts it) and gets the database's setting. (The
    // portable edition has no worker: its sweeps are lease_sched.sweep() calls by the owner,
    // each in a new session that gets the database's setting too.)
    if !portable() {
        let old = sweeper_pid(&mut c).expect("a sweeper runs");
        c.execute("SELECT pg_terminate_backend($1)", &[&old]).unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || sweeper_pid(&mut c).is_some_and(|p| p != old)),
            "the sweeper came back"
        );
    }
    let sweeps = stat(&mut c, "sweeps");
    assert!(wait_until(Duration::from_secs(20), || stat(&mut c, "sweeps") > sweeps + 1), "the new sweeper sweeps");

    // Work for every pass of the sweep: an abandoned lease (retry backoff computed), a silent
    // runtime (offline), a silent runtime with a buffered touch (rescued: a flush), finished
    // rows older than retention (pruned), and a planted log to read afterwards.
    let abandoned = abandoned_lease(&mut c);
    let silent = register_runtime(&mut c);
    set_last_seen_ago(&mut c, silent, 3 * 3600);
    let rescued = register_runtime(&mut c);
    flush(&mut c);
    assert!(touch(&mut c, rescued));
    assert_eq!(pending(&mut c), 1, "the touch is buffered");
    set_last_seen_ago(&mut c, rescued, 3 * 3600);
    let old_job = unique("old");
    let first = claim(&mut c, &old_job, plan(), "r1");
    assert!(finish_ok(&mut c, first.id(), first.token()));
    let second = claim(&mut c, &old_job, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, second.id(), second.token()));
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET finished_at = now() - interval '400 days' WHERE id = $1",
        &[&first.id()],
    )
    .unwrap();

    // Several sweeps by the restarted sweeper, which did the work planted for it.
    let sweeps = stat(&mut c, "sweeps");
    assert!(
        wait_until(Duration::from_secs(30), || {
            status_of(&mut c, abandoned.id()) == "FAILED" && stat(&mut c, "sweeps") >= sweeps + 4
        }),
        "the restarted sweeper failed the abandoned lease"
    );
    assert_eq!(runtime_state(&mut c, silent).0, "offline", "the silent runtime went offline");
    let (status, ago) = runtime_state(&mut c, rescued);
    assert_eq!(status, "online", "the buffered touch rescued its runtime");
    assert!(ago < 600.0, "the rescue wrote the touch ({ago}s)");
    let pruned: bool = c
        .query_one("SELECT NOT EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions WHERE id = $1)", &[&first.id()])
        .unwrap()
        .get(0);
    assert!(pruned, "retention pruned the old row");
    assert!(portable() || sweeper_pid(&mut c).is_some());

    // First the worker alone: nothing but the sweeper has run since the objects were planted.
    let by_worker: Vec<(String, String, Option<String>)> = c
        .query("SELECT who, what, backend FROM public.pwn_log WHERE who <> $1", &[&role])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(by_worker.is_empty(), "the sweeper ran planted objects: {by_worker:?}");

    // Every API function, as the planting role, on its own hostile search_path, with its
    // own pg_temp planted too.
    let job = unique("pwnjob");
    attacker.batch_execute(&fenced_tables(&job)).unwrap();
    let temp = domains_and_views(&mut attacker, "pg_temp");
    attacker.batch_execute(&temp).unwrap();
    attacker.batch_execute("SET search_path = public, pg_catalog").unwrap();
    attacker.batch_execute(&every_call(&job)).unwrap();
    attacker.batch_execute(&run_call(&job)).unwrap();
    // A steal: the 04:00 lease above went stale after 1 s (the claim, heartbeat and finish
    // pin no search_path: their statements alone must resolve to pg_catalog).
    std::thread::sleep(Duration::from_millis(1200));
    let stole: String = attacker
        .query_one(
            &format!("SELECT outcome FROM lease_sched.lease_try_claim('{job}-stale', '2026-01-01 04:00+00', 'pwn2')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stole, "stole");
    let r = attacker
        .query_one("SELECT lock_token FROM lease_sched.lock_acquire($1, 'pwn2', '60 s')", &[&unique("pwnlock")])
        .unwrap();
    let _: Option<uuid::Uuid> = r.get(0);
    for admin in ["SELECT * FROM lease_sched.sweep()", "SELECT lease_sched.runtime_flush()"] {
        let e = attacker.batch_execute(admin).expect_err(admin);
        assert_eq!(sqlstate(&e), "42501", "{admin} as a runner role: {e}");
    }

    // The superuser on the hostile search_path: the admin functions and run() (pg_cron jobs
    // run it as their owner, often a superuser).
    let mut su = connect();
    let path: String = su.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert!(path.starts_with("public"), "new sessions get the database's search_path: {path}");
    let su_job = format!("{job}-su");
    su.batch_execute(&fenced_tables(&su_job)).unwrap();
    let temp = domains_and_views(&mut su, "pg_temp");
    su.batch_execute(&temp).unwrap();
    su.batch_execute(
        "SELECT * FROM lease_sched.sweep();
         SELECT lease_sched.runtime_flush();
         SELECT * FROM lease_sched.executions;
         SELECT * FROM lease_sched.active_leases;
         SELECT * FROM lease_sched.job_health;
         SELECT * FROM lease_sched.job_summary;
         SELECT * FROM lease_sched.job_definitions;
         SELECT * FROM lease_sched.token_floor;",
    )
    .unwrap();
    su.batch_execute(&every_call(&su_job)).unwrap();
    // The dead-man's switch over the calendar job every_call defined (readers' view: the
    // runner role has no grant on it).
    su.batch_execute("SELECT * FROM lease_sched.job_health").unwrap();
    su.batch_execute(&run_call(&su_job)).unwrap();
    // run() of a cron job with slots due, as pg_cron calls it (its planner is PL/pgSQL).
    su.batch_execute(&format!(
        "SELECT lease_sched.job_define('{su_job}-cron', cron => '* * * * *', timezone => 'Australia/Lord_Howe');
         UPDATE lease_sched.jobs SET created_at = pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.interval '10 minutes'
          WHERE job_name OPERATOR(pg_catalog.=) '{su_job}-cron';"
    ))
    .unwrap();
    su.batch_execute(&format!("CALL lease_sched.run('{su_job}-cron', 'SELECT 1')")).unwrap();
    // A failing command: run()'s error path (its GET STACKED DIAGNOSTICS variables).
    let e = su
        .batch_execute(&format!(
            "CALL lease_sched.run('{su_job}-fail', 'SELECT 1 OPERATOR(pg_catalog./) 0', every => '1 hour')"
        ))
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e), "22012");
    drop(su);
    c.batch_execute(&format!("DROP TABLE public.\"{su_job}_lease_writes\", public.\"{su_job}_lock_writes\"")).unwrap();

    // The calls covered every function and procedure lease_sched installs.
    let calls = every_call("x")
        + &run_call("x")
        + "lease_sched.sweep( lease_sched.runtime_flush( lease_sched.require_lease( lease_sched.require_lock(";
    let uncovered: Vec<String> = c
        .query(
            "SELECT DISTINCT proname::text FROM pg_proc WHERE pronamespace = 'lease_sched'::regnamespace ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|f| !calls.contains(&format!("lease_sched.{f}(")) && !CALLED_INSIDE.contains(&f.as_str()))
        // The portable edition's internals run inside its twins of the calls above (its
        // pg_cron scheduling helpers, portable_(un)schedule_sweep, pin their search_path).
        .filter(|f| !(portable() && f.starts_with("portable_")))
        .collect();
    assert!(uncovered.is_empty(), "functions no call of this test reaches: {uncovered:?} (add them to every_call)");

    let calls: Vec<(String, String, Option<String>, Option<String>)> = c
        .query("SELECT who, what, backend, query FROM public.pwn_log WHERE who <> $1 ORDER BY at", &[&role])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let (by_run, others): (Vec<_>, Vec<_>) =
        calls.into_iter().partition(|(_, _, _, q)| q.as_deref().is_some_and(|q| q.contains("lease_sched.run(")));
    assert!(others.is_empty(), "planted objects ran with another identity (worker, definer functions): {others:?}");
    assert!(
        by_run.is_empty(),
        "run(), called by a superuser on a hostile search_path, ran planted objects: {by_run:?}"
    );
    let own: i64 = c.query_one("SELECT count(*) FROM public.pwn_log", &[]).unwrap().get(0);
    eprintln!("search_path: the role's own statements ran {own} planted objects (as itself)");
    let superuser: bool = c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role]).unwrap().get(0);
    assert!(!superuser, "{role} became superuser");
}
