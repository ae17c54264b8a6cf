#!/usr/bin/env python3
"""Generate sql/proxy/lease_sched_proxy.sql: the PL/Proxy routing layer of lease_sched.

    scripts/gen_proxy.py            write sql/proxy/lease_sched_proxy.sql
    scripts/gen_proxy.py --check    exit 1 when the committed file is not what this generates
    scripts/gen_proxy.py --stdout   print it
    scripts/gen_proxy.py --out FILE write FILE instead

The function list is read from the extension's own DDL (sql/*.sql, in the extension's load
order, upgrade scripts excluded): every CREATE FUNCTION / CREATE PROCEDURE of schema
lease_sched must be classified in ROUTES below, or the generator fails. A new API function
therefore cannot ship without a decision on how the proxy routes it.

The proxy functions keep the real names, argument names, defaults and result types, in a
schema `lease_sched` of the proxy database, so clients call the proxy exactly as they would
call one lease_sched primary. Routing (docs/scaling.md):

  job     RUN ON lease_sched_proxy.hash32(job_name)        one partition
  lock    RUN ON lease_sched_proxy.hash32(lock_name)       one partition
  name    RUN ON lease_sched_proxy.hash32(name)            one partition (runtime_register)
  any     RUN ON ANY                                       a pure function
  owner   the partition holding the row (execution_id, runtime_id) is found with one
          read-only query to every partition in parallel (one by one when a partition cannot
          be reached), then the call runs there alone
  batch   runtime_touch_batch: every partition; the ids no partition touched are returned
  stub    lease_fence / lock_fence: an error that says to call it on the partition
  local   not proxied: per-server administration (sweep, stats, the touch buffer), or bound
          to the caller's transaction (fences, leader-only triggers, run()): call these on
          the partition itself.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sql" / "proxy" / "lease_sched_proxy.sql"
# The extension's load order (README.md, "Layout").
LOAD_ORDER = ["schema", "lease", "runtime", "observability", "locks", "planner", "run", "fencing", "finalize"]

ROUTES = {
    "lease_try_claim": ("job", "job_name"),
    "lease_latest_plan": ("job", "job_name"),
    "lease_next_plan": ("job", "job_name"),
    "lease_heartbeat": ("owner", "executions"),
    "lease_finish": ("owner", "executions"),
    "job_define": ("job", "job_name"),
    "job_pause": ("job", "job_name"),
    "job_resume": ("job", "job_name"),
    "job_drop": ("job", "job_name"),
    "job_definition": ("job", "job_name"),
    "lock_acquire": ("lock", "lock_name"),
    "lock_heartbeat": ("lock", "lock_name"),
    "lock_release": ("lock", "lock_name"),
    "lock_info": ("lock", "lock_name"),
    "runtime_register": ("name", "name"),
    "runtime_touch": ("owner", "runtimes"),
    "runtime_touch_batch": ("batch", None),
    "retry_backoff": ("any", None),
    "cron_next_runs": ("any", None),
    "job_next_runs": ("job", "job_name"),
    "job_trigger": ("job", "job_name"),
    "lease_claim_next": ("job", "job_name"),
    "lease_fence": ("stub", None),
    "lock_fence": ("stub", None),
    # per-server administration
    "sweep": ("local", None),
    "stats": ("local", None),
    "sweeper_status": ("local", None),
    "sys_sweeper_announce": ("local", None),
    # pg_cron entries live on one server: schedule a job on the partition that owns it
    "schedule": ("local", None),
    "unschedule": ("local", None),
    # helpers the partition's own functions call
    "calendar_next_plan": ("local", None),
    "job_trigger_due": ("local", None),
    "cron_parse": ("local", None),
    "cron_check_timezone": ("local", None),
    "cron_error": ("local", None),
    "cron_value": ("local", None),
    "cron_field": ("local", None),
    "cron_day_matches": ("local", None),
    "cron_next_bit": ("local", None),
    "cron_next_wall": ("local", None),
    "cron_utc_offset": ("local", None),
    "cron_transition": ("local", None),
    "cron_next_slot": ("local", None),
    "runtime_flush": ("local", None),
    "runtime_pending": ("local", None),
    # bound to the caller's transaction on the partition
    "lease_fence_check": ("local", None),
    "lock_fence_check": ("local", None),
    "lock_fence_passed": ("local", None),
    "lease_fence_passed": ("local", None),
    "require_lock": ("local", None),
    "require_lease": ("local", None),
    "run_arm_deadline": ("local", None),
    "run_disarm_deadline": ("local", None),
    "run": ("local", None),
}

# Where the owner of an id is looked up on each partition (readable without any secret).
# Every function the proxy installs runs with this search_path, whatever the caller's: PL/Proxy
# evaluates RUN ON lease_sched_proxy.hash32(...) and the wrappers' SQL with the caller's
# settings, and a look-alike `||`, `&` or `=` ahead of pg_catalog would otherwise move a key
# to another partition. The bodies also name every operator with its schema.
PINNED = " SET search_path = pg_catalog, pg_temp"

OWNER_TABLE = {"executions": ("lease_sched.executions", "execution_id"),
               "runtimes": ("lease_sched.runtimes", "runtime_id")}


def matching_paren(s, i):
    """Index of the parenthesis closing the one at s[i], skipping quoted strings."""
    depth, j, quote = 0, i, False
    while j < len(s):
        c = s[j]
        if quote:
            quote = c != "'"
        elif c == "'":
            quote = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError("unbalanced parentheses")


def split_top(s):
    """Split on commas outside parentheses and quotes; collapse whitespace."""
    parts, depth, quote, cur = [], 0, False, ""
    for c in s:
        if quote:
            quote = c != "'"
        elif c == "'":
            quote = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += c
    if cur.strip():
        parts.append(cur)
    return [" ".join(p.split()) for p in parts]


def functions():
    """(kind, name, [arg], returns) for every routine of the extension, in load order."""
    found = []
    stems = [p.stem for p in sorted((ROOT / "sql").glob("*.sql")) if not p.stem.startswith("lease_sched--")]
    for stem in [s for s in LOAD_ORDER if s in stems] + [s for s in stems if s not in LOAD_ORDER]:
        path = ROOT / "sql" / f"{stem}.sql"
        sql = re.sub(r"--[^\n]*", "", path.read_text())
        for m in re.finditer(r"CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\s+lease_sched\.(\w+)\s*\(", sql):
            open_at = m.end() - 1
            close_at = matching_paren(sql, open_at)
            args = split_top(sql[open_at + 1:close_at])
            rest = sql[close_at + 1:]
            returns = None
            r = re.match(r"\s*RETURNS\s+", rest)
            if r:
                rest = rest[r.end():]
                t = re.match(r"TABLE\s*\(", rest)
                if t:
                    end = matching_paren(rest, t.end() - 1)
                    returns = "TABLE (" + ", ".join(split_top(rest[t.end():end])) + ")"
                else:
                    returns = " ".join(re.match(r"(.+?)\s+(?:LANGUAGE|AS|IMMUTABLE|STABLE|VOLATILE|SECURITY)\b",
                                                rest, re.S).group(1).split())
            found.append((m.group(1), m.group(2), args, returns))
    return found


def arg_name(a):
    return a.split()[0]


def arg_sig(a):
    """The argument without its DEFAULT."""
    return re.split(r"\s+DEFAULT\s+", a, flags=re.I)[0]


def arg_type(a):
    return arg_sig(a).split(None, 1)[1]


def proxy_function(name, args, returns, route, key):
    sig = f"lease_sched.{name}(\n    " + ",\n    ".join(args) + "\n)"
    types = ", ".join(arg_type(a) for a in args)
    if route in ("job", "lock", "name"):
        assert key in [arg_name(a) for a in args], (name, key)
        return (f"CREATE FUNCTION {sig}\nRETURNS {returns}\nLANGUAGE plproxy VOLATILE{PINNED} AS $proxy$\n"
                f"    CLUSTER 'lease_sched';\n    RUN ON lease_sched_proxy.hash32({key});\n$proxy$;\n"
                f"COMMENT ON FUNCTION lease_sched.{name}({types}) IS\n"
                f"    'Routed by {key} to partition lease_sched_proxy.partition_of({key}) (PL/Proxy; docs/scaling.md).';\n")
    if route == "any":
        return (f"CREATE FUNCTION {sig}\nRETURNS {returns}\nLANGUAGE plproxy VOLATILE{PINNED} AS $proxy$\n"
                f"    CLUSTER 'lease_sched';\n    RUN ON ANY;\n$proxy$;\n"
                f"COMMENT ON FUNCTION lease_sched.{name}({types}) IS 'A pure function: run on any partition.';\n")
    if route == "stub":
        return (f"CREATE FUNCTION {sig}\nRETURNS {returns}\nLANGUAGE plpgsql VOLATILE{PINNED} AS $stub$\nBEGIN\n"
                f"    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',\n"
                f"        MESSAGE = 'lease_sched.{name} cannot be called through the proxy',\n"
                f"        DETAIL = 'A fence holds until the end of the transaction it ran in, and every call through PL/Proxy commits on its partition at once.',\n"
                f"        HINT = 'Call lease_sched.{name} on the partition itself (lease_sched_proxy.partition_of(job or lock name)), in the transaction that writes the protected data.';\n"
                f"END;\n$stub$;\n")
    if route == "owner":
        table, idarg = OWNER_TABLE[key]
        names = [arg_name(a) for a in args]
        assert names[0] == idarg, (name, names)
        plain = ", ".join(arg_sig(a) for a in args)
        call = ", ".join(names)
        helper_on = (f"CREATE FUNCTION lease_sched_proxy.{name}_on(partition int, {plain})\nRETURNS {returns}\n"
                     f"LANGUAGE plproxy VOLATILE{PINNED} AS $proxy$\n    CLUSTER 'lease_sched';\n    RUN ON partition;\n"
                     f"    SELECT lease_sched.{name}({call}) AS {name}_on;\n$proxy$;\n")
        dollar = ", ".join(f"${i + 1}" for i in range(len(args)))
        none = "false" if returns == "boolean" else "NULL"
        nullcheck = " OR ".join(f"${i + 1} IS NULL" for i in range(min(2, len(args))))
        wrapper = f"""CREATE FUNCTION {sig}
RETURNS {returns}
LANGUAGE plpgsql VOLATILE{PINNED} AS $route$
DECLARE
    owner int;
BEGIN
    IF {nullcheck} THEN
        owner := 0;   -- any partition refuses it with the extension's own error (22004)
    ELSE
        owner := lease_sched_proxy.locate_{key}($1);
    END IF;
    IF owner IS NULL THEN
        RETURN {none};   -- no partition has it: as on one primary (lost, or unknown)
    END IF;
    RETURN lease_sched_proxy.{name}_on(owner, {dollar});
END;
$route$;
COMMENT ON FUNCTION lease_sched.{name}({types}) IS
    'Runs on the partition that holds {idarg} (found by lease_sched_proxy.locate_{key}; docs/scaling.md).';
"""
        return helper_on + "\n" + wrapper
    if route == "batch":
        assert returns == "uuid[]" and [arg_name(a) for a in args] == ["runtime_ids"], (name, args)
        return f"""CREATE FUNCTION lease_sched_proxy.{name}_all(runtime_ids uuid[])
RETURNS SETOF uuid[]
LANGUAGE plproxy VOLATILE{PINNED} AS $proxy$
    CLUSTER 'lease_sched';
    RUN ON ALL;
    SELECT lease_sched.{name}(runtime_ids) AS {name}_all;
$proxy$;

CREATE FUNCTION {sig}
RETURNS uuid[]
LANGUAGE sql VOLATILE{PINNED} AS $batch$
    -- Every partition touches the ids it has and returns the others: an id was touched
    -- somewhere unless every partition returned it.
    SELECT coalesce(pg_catalog.array_agg(id ORDER BY id), '{{}}')
      FROM (SELECT id
              FROM lease_sched_proxy.{name}_all($1) AS untouched, pg_catalog.unnest(untouched) AS id
             GROUP BY id
            HAVING pg_catalog.count(*) OPERATOR(pg_catalog.=) lease_sched_proxy.partition_count()) AS everywhere;
$batch$;
COMMENT ON FUNCTION lease_sched.{name}(uuid[]) IS
    'Sent to every partition; returns the ids that no partition touched (docs/scaling.md).';
"""
    raise ValueError(route)


HEADER = """\
-- lease_sched through PL/Proxy: the routing layer of a proxy database (docs/scaling.md).
-- GENERATED by scripts/gen_proxy.py from the extension's sql/*.sql: do not edit by hand;
-- change the generator and run it again (scripts/scaleout.sh checks the file is current).
--
-- Load into the proxy database (UTF8), which needs the plproxy extension and a server
-- naming the partitions, one libpq connect string each, a power-of-two count:
--
--   CREATE EXTENSION plproxy;
--   CREATE SERVER lease_sched FOREIGN DATA WRAPPER plproxy OPTIONS (
--       connection_lifetime '1800', query_timeout '30',
--       p0 'host=db0a,db0b port=5432,5432 dbname=lease_sched connect_timeout=2 target_session_attrs=read-write',
--       p1 'host=db1a,db1b port=5432,5432 dbname=lease_sched connect_timeout=2 target_session_attrs=read-write');
--   \\i sql/proxy/lease_sched_proxy.sql
--
-- Privileges as on one primary: PUBLIC may run nothing here (the end of this file revokes
-- it). Grant a runner role what a runner gets on a primary, plus the server and a user
-- mapping of its own (never FOR PUBLIC: every role with USAGE would act as that user):
--
--   GRANT USAGE ON SCHEMA lease_sched, lease_sched_proxy TO runner;
--   GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched, lease_sched_proxy TO runner;
--   GRANT USAGE ON FOREIGN SERVER lease_sched TO runner;
--   CREATE USER MAPPING FOR runner SERVER lease_sched OPTIONS (user 'lease_proxy', password '...');
--
-- A reader role reads the views on the partitions; on the proxy it needs only where a key
-- lives: GRANT USAGE ON SCHEMA lease_sched_proxy TO reader; GRANT EXECUTE ON FUNCTION
-- lease_sched_proxy.partition_of(text), lease_sched_proxy.hash32(text),
-- lease_sched_proxy.partition_count() TO reader.
--
-- The remote role (lease_proxy) needs, on every partition: USAGE on schema lease_sched,
-- EXECUTE on its functions, and SELECT on lease_sched.executions and lease_sched.runtimes
-- (to find the partition that holds an execution_id or runtime_id; neither holds a secret).
--
-- Partition of a key (job_name, lock_name, runtime name) -- FROZEN: changing it moves
-- every key to another partition. hash32 = the first 4 bytes of md5 of the key's UTF-8
-- bytes, big-endian, as a signed int4; PL/Proxy takes hash32 & (partition count - 1).
-- (Not hashtext(), whose values PostgreSQL does not promise to keep across releases.)

SET client_min_messages = warning;
DO $check$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'the lease_sched proxy database must be UTF8 (hash32 hashes the UTF-8 bytes of a key), not %',
              pg_catalog.getdatabaseencoding();
    END IF;
END;
$check$;

CREATE EXTENSION IF NOT EXISTS plproxy;
CREATE SCHEMA lease_sched;
CREATE SCHEMA lease_sched_proxy;

CREATE FUNCTION lease_sched_proxy.hash32(key text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $hash$
    -- A NULL key hashes to 0: the call reaches partition 0, which refuses it with the
    -- extension's own error (22004). The pinned search_path also keeps this body from
    -- being inlined into (and resolved in) a caller's query.
    SELECT coalesce(('x' OPERATOR(pg_catalog.||) pg_catalog.substr(pg_catalog.md5(key), 1, 8))
                    ::pg_catalog.bit(32)::pg_catalog.int4, 0)
$hash$;
COMMENT ON FUNCTION lease_sched_proxy.hash32(text) IS
    'FROZEN partition hash of a job, lock or runtime name: first 4 bytes of md5 (UTF-8), signed int4.';

-- SECURITY DEFINER: the server's options (pg_foreign_server.srvoptions) are readable only
-- by superusers; this reveals just how many partitions there are.
CREATE FUNCTION lease_sched_proxy.partition_count() RETURNS int
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $count$
    SELECT pg_catalog.count(*)::pg_catalog.int4
      FROM pg_catalog.pg_foreign_server s, pg_catalog.unnest(s.srvoptions) AS o
     WHERE s.srvname OPERATOR(pg_catalog.=) 'lease_sched' AND o OPERATOR(pg_catalog.~) '^p[0-9]+='
$count$;
COMMENT ON FUNCTION lease_sched_proxy.partition_count() IS 'Partitions of server lease_sched (a power of two).';

CREATE FUNCTION lease_sched_proxy.partition_of(key text) RETURNS int
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $of$
    SELECT lease_sched_proxy.hash32(key) OPERATOR(pg_catalog.&) (lease_sched_proxy.partition_count() OPERATOR(pg_catalog.-) 1)
$of$;
COMMENT ON FUNCTION lease_sched_proxy.partition_of(text) IS
    'The partition (0-based: option p<N> of server lease_sched) that owns a job, lock or runtime name.';

-- Calls that carry no key (an execution_id, a runtime_id) run on the partition that holds
-- the row. locate_<table>(id) finds it with one read-only query sent to every partition in
-- parallel (SPLIT hands each partition its own number); when a partition cannot be reached
-- the partitions are asked one at a time, and the owner counts whenever it answered. Only
-- then is the call itself sent, to the owner alone: a write is never sent speculatively,
-- so an error from another partition can never hide a write that committed.

CREATE FUNCTION lease_sched_proxy.locate_executions_all(partitions int[], key_id uuid) RETURNS SETOF int
LANGUAGE plproxy VOLATILE SET search_path = pg_catalog, pg_temp AS $proxy$
    CLUSTER 'lease_sched';
    SPLIT partitions;
    RUN ON partitions;
    SELECT p AS locate_executions_all FROM pg_catalog.unnest(partitions) AS p
     WHERE EXISTS (SELECT 1 FROM lease_sched.executions o WHERE o.id OPERATOR(pg_catalog.=) key_id);
$proxy$;

CREATE FUNCTION lease_sched_proxy.locate_executions_on(partition int, key_id uuid) RETURNS SETOF int
LANGUAGE plproxy VOLATILE SET search_path = pg_catalog, pg_temp AS $proxy$
    CLUSTER 'lease_sched';
    RUN ON partition;
    SELECT partition AS locate_executions_on WHERE EXISTS (SELECT 1 FROM lease_sched.executions o WHERE o.id OPERATOR(pg_catalog.=) key_id);
$proxy$;

CREATE FUNCTION lease_sched_proxy.locate_executions(key_id uuid) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $locate$
DECLARE
    owner int;
    p int;
    err_state text; err_msg text; err_detail text; err_hint text;
BEGIN
    BEGIN
        SELECT l INTO owner
          FROM lease_sched_proxy.locate_executions_all(
                   ARRAY(SELECT pg_catalog.generate_series(0, lease_sched_proxy.partition_count() OPERATOR(pg_catalog.-) 1)),
                   key_id) AS l
         LIMIT 1;
        RETURN owner;
    EXCEPTION WHEN OTHERS THEN
        NULL;   -- a partition is unreachable (failing over): ask them one at a time
    END;
    FOR p IN 0 .. lease_sched_proxy.partition_count() OPERATOR(pg_catalog.-) 1 LOOP
        BEGIN
            SELECT l INTO owner FROM lease_sched_proxy.locate_executions_on(p, key_id) AS l;
            IF owner IS NOT NULL THEN
                RETURN owner;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF err_state IS NULL THEN
                GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                                        err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            END IF;
        END;
    END LOOP;
    IF err_state IS NOT NULL THEN
        -- The row may be on the partition that failed: the caller retries, as after any
        -- connection error.
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
              DETAIL = coalesce(err_detail, ''), HINT = coalesce(err_hint, '');
    END IF;
    RETURN NULL;
END;
$locate$;
COMMENT ON FUNCTION lease_sched_proxy.locate_executions(uuid) IS
    'The partition whose lease_sched.executions has this id, or NULL when none has it.';

CREATE FUNCTION lease_sched_proxy.locate_runtimes_all(partitions int[], key_id uuid) RETURNS SETOF int
LANGUAGE plproxy VOLATILE SET search_path = pg_catalog, pg_temp AS $proxy$
    CLUSTER 'lease_sched';
    SPLIT partitions;
    RUN ON partitions;
    SELECT p AS locate_runtimes_all FROM pg_catalog.unnest(partitions) AS p
     WHERE EXISTS (SELECT 1 FROM lease_sched.runtimes o WHERE o.id OPERATOR(pg_catalog.=) key_id);
$proxy$;

CREATE FUNCTION lease_sched_proxy.locate_runtimes_on(partition int, key_id uuid) RETURNS SETOF int
LANGUAGE plproxy VOLATILE SET search_path = pg_catalog, pg_temp AS $proxy$
    CLUSTER 'lease_sched';
    RUN ON partition;
    SELECT partition AS locate_runtimes_on WHERE EXISTS (SELECT 1 FROM lease_sched.runtimes o WHERE o.id OPERATOR(pg_catalog.=) key_id);
$proxy$;

CREATE FUNCTION lease_sched_proxy.locate_runtimes(key_id uuid) RETURNS int
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $locate$
DECLARE
    owner int;
    p int;
    err_state text; err_msg text; err_detail text; err_hint text;
BEGIN
    BEGIN
        SELECT l INTO owner
          FROM lease_sched_proxy.locate_runtimes_all(
                   ARRAY(SELECT pg_catalog.generate_series(0, lease_sched_proxy.partition_count() OPERATOR(pg_catalog.-) 1)),
                   key_id) AS l
         LIMIT 1;
        RETURN owner;
    EXCEPTION WHEN OTHERS THEN
        NULL;   -- a partition is unreachable (failing over): ask them one at a time
    END;
    FOR p IN 0 .. lease_sched_proxy.partition_count() OPERATOR(pg_catalog.-) 1 LOOP
        BEGIN
            SELECT l INTO owner FROM lease_sched_proxy.locate_runtimes_on(p, key_id) AS l;
            IF owner IS NOT NULL THEN
                RETURN owner;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF err_state IS NULL THEN
                GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                                        err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            END IF;
        END;
    END LOOP;
    IF err_state IS NOT NULL THEN
        -- The row may be on the partition that failed: the caller retries, as after any
        -- connection error.
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
              DETAIL = coalesce(err_detail, ''), HINT = coalesce(err_hint, '');
    END IF;
    RETURN NULL;
END;
$locate$;
COMMENT ON FUNCTION lease_sched_proxy.locate_runtimes(uuid) IS
    'The partition whose lease_sched.runtimes has this id, or NULL when none has it.';

"""


def generate():
    out = [HEADER]
    local = []
    seen = set()
    for _kind, name, args, returns in functions():
        if name in seen:
            continue
        seen.add(name)
        if name not in ROUTES:
            sys.exit(f"gen_proxy: lease_sched.{name} is not classified in ROUTES: decide how the proxy routes it")
        route, key = ROUTES[name]
        if route == "local":
            local.append(name)
            continue
        out.append(f"-- lease_sched.{name}: {route}" + (f" ({key})" if key else "") + "\n")
        out.append(proxy_function(name, args, returns, route, key))
        out.append("\n")
    missing = set(ROUTES) - seen
    if missing:
        print(f"gen_proxy: note: ROUTES classifies functions sql/*.sql does not have (yet): {sorted(missing)}",
              file=sys.stderr)
    out.append("-- Not proxied (call them on each partition): " + ", ".join(local) + ".\n\n")
    out.append("-- As on one primary, PUBLIC runs nothing; grant runner and reader roles (see the top).\n"
               "REVOKE ALL ON SCHEMA lease_sched, lease_sched_proxy FROM PUBLIC;\n"
               "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched, lease_sched_proxy FROM PUBLIC;\n\n")
    out.append("RESET client_min_messages;\n")
    return "".join(out)


def main():
    text = generate()
    if "--stdout" in sys.argv:
        sys.stdout.write(text)
    elif "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"gen_proxy: {OUT.relative_to(ROOT)} is not current: run scripts/gen_proxy.py")
        print(f"gen_proxy: {OUT.relative_to(ROOT)} is current")
    elif "--out" in sys.argv:
        Path(sys.argv[sys.argv.index("--out") + 1]).write_text(text)
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        print(f"gen_proxy: wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
