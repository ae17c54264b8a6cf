"""The proxy against a hostile caller: a runner role that owns a schema plants look-alike
operators and functions ahead of pg_catalog on its search_path, then calls every proxied
function. Every key must still land on its frozen partition and every result must be what
the same call returns with a clean search_path. And the proxy's privileges mirror one
primary's: PUBLIC runs nothing, a runner runs the API, a reader only finds partitions."""
import datetime as dt
import uuid

import psycopg
import pytest

from conftest import PARTITIONS, PROXY_DSN, connect, partition_of, unique

pytestmark = pytest.mark.routing
PLAN = dt.datetime(2026, 1, 1, 3, 0, tzinfo=dt.timezone.utc)
RUNNER_DSN = PROXY_DSN.replace("user=postgres", "user=lease_runner")
READER_DSN = PROXY_DSN.replace("user=postgres", "user=lease_reader")

# Look-alikes of everything the proxy's own SQL uses, each answering something that would
# move a key (hash 0: partition 0) or make a lookup find the wrong row.
LOOK_ALIKES = """
CREATE FUNCTION evil.cat(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT 'x00000000' $$;
CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.cat);
CREATE FUNCTION evil.band(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT 0 $$;
CREATE OPERATOR evil.& (LEFTARG = int, RIGHTARG = int, FUNCTION = evil.band);
CREATE FUNCTION evil.minus(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT 0 $$;
CREATE OPERATOR evil.- (LEFTARG = int, RIGHTARG = int, FUNCTION = evil.minus);
CREATE FUNCTION evil.uuid_eq(a uuid, b uuid) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq);
CREATE FUNCTION evil.bigint_eq(a bigint, b int) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = int, FUNCTION = evil.bigint_eq);
CREATE FUNCTION evil.name_eq(a name, b text) RETURNS boolean LANGUAGE sql AS $$ SELECT false $$;
CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = text, FUNCTION = evil.name_eq);
CREATE FUNCTION evil.md5(t text) RETURNS text LANGUAGE sql AS $$ SELECT '00000000000000000000000000000000' $$;
CREATE FUNCTION evil.substr(t text, a int, b int) RETURNS text LANGUAGE sql AS $$ SELECT '00000000' $$;
"""


@pytest.fixture(scope="module")
def hostile():
    """The runner's connection, its search_path led by a schema full of look-alikes."""
    admin = connect(PROXY_DSN, retry_for=30)
    admin.execute("DROP SCHEMA IF EXISTS evil CASCADE")
    admin.execute("CREATE SCHEMA evil AUTHORIZATION lease_runner")
    admin.close()
    c = connect(RUNNER_DSN, retry_for=30)
    c.execute(LOOK_ALIKES)
    c.execute("SET search_path = evil, pg_catalog")
    yield c
    c.close()
    admin = connect(PROXY_DSN)
    admin.execute("DROP SCHEMA evil CASCADE")
    admin.close()


def job_on(p, prefix):
    return next(j for j in (unique(prefix) for _ in range(200)) if partition_of(j) == p)


def rows_on(parts, table, column, value):
    return [c.execute(f"SELECT count(*) FROM lease_sched.{table} WHERE {column} = %s", (value,)).fetchone()[0]
            for c in parts]


def test_the_look_alikes_are_live(hostile):
    # Outside the proxy's functions the planted operators do win: the attack is real.
    assert hostile.execute("SELECT 'a' || 'b'").fetchone()[0] == "x00000000"
    assert hostile.execute("SELECT 7 & 3").fetchone()[0] == 0


def test_a_hostile_search_path_moves_no_key(hostile, parts):
    assert len(PARTITIONS) == 2
    for p in (0, 1):
        job = job_on(p, f"hostile{p}")
        assert hostile.execute("SELECT lease_sched_proxy.hash32(%s)", (job,)).fetchone()[0] != 0
        assert hostile.execute("SELECT lease_sched_proxy.partition_of(%s)", (job,)).fetchone()[0] == p
        assert hostile.execute("SELECT lease_sched_proxy.partition_count()").fetchone()[0] == 2
        outcome, eid, token = hostile.execute(
            "SELECT outcome, execution_id, lease_token FROM lease_sched.lease_try_claim(%s, %s, 'thief')",
            (job, PLAN)).fetchone()
        assert outcome == "won"
        assert rows_on(parts, "executions", "job_name", job) == [int(p == 0), int(p == 1)], job
        # An honest runner with a clean path sees the same lease: one holder, one partition.
        honest = connect(RUNNER_DSN)
        assert honest.execute("SELECT outcome FROM lease_sched.lease_try_claim(%s, %s, 'honest')",
                              (job, PLAN)).fetchone()[0] == "conflicted"
        honest.close()
        assert hostile.execute("SELECT lease_sched.lease_heartbeat(%s, %s)", (eid, token)).fetchone()[0] is True
        assert hostile.execute("SELECT lease_sched.lease_heartbeat(%s, %s)", (eid, uuid.uuid4())).fetchone()[0] is False
        assert hostile.execute("SELECT lease_sched.lease_heartbeat(%s, %s)",
                               (uuid.uuid4(), token)).fetchone()[0] is False
        assert hostile.execute("SELECT status FROM lease_sched.lease_latest_plan(%s)", (job,)).fetchone()[0] \
            == "RUNNING"
        assert hostile.execute("SELECT lease_sched.lease_finish(%s, %s, 'SUCCESS')", (eid, token)).fetchone()[0] is True
        assert parts[p].execute("SELECT status FROM lease_sched.executions WHERE id = %s", (eid,)).fetchone()[0] \
            == "SUCCESS"


def test_every_proxied_function_answers_as_with_a_clean_path(hostile, parts):
    clean = connect(RUNNER_DSN)
    for p in (0, 1):
        job = job_on(p, f"jobs{p}")
        hostile.execute("SELECT lease_sched.job_define(%s, '1 hour')", (job,))
        assert rows_on(parts, "jobs", "job_name", job) == [int(p == 0), int(p == 1)]
        for c in (hostile, clean):
            assert c.execute("SELECT every FROM lease_sched.job_definition(%s)", (job,)).fetchone()[0] \
                == dt.timedelta(hours=1)
        hostile.execute("SELECT lease_sched.job_pause(%s)", (job,))
        assert clean.execute("SELECT paused FROM lease_sched.job_definition(%s)", (job,)).fetchone()[0] is True
        hostile.execute("SELECT lease_sched.job_resume(%s)", (job,))
        assert hostile.execute("SELECT count(*) FROM lease_sched.job_next_runs(%s, 3)", (job,)).fetchone()[0] == 3
        triggered = hostile.execute("SELECT lease_sched.job_trigger(%s)", (job,)).fetchone()[0]
        outcome, plan_time = hostile.execute(
            "SELECT outcome, plan_time FROM lease_sched.lease_claim_next(%s, 'thief')", (job,)).fetchone()
        assert (outcome, plan_time) == ("won", triggered)
        assert rows_on(parts, "executions", "job_name", job) == [int(p == 0), int(p == 1)]
        hostile.execute("SELECT lease_sched.job_drop(%s)", (job,))
        assert rows_on(parts, "jobs", "job_name", job) == [0, 0]
        planned = job_on(p, f"planned{p}")
        nxt = hostile.execute("SELECT lease_sched.lease_next_plan(%s, '2 hours')", (planned,)).fetchone()[0]
        assert nxt is not None
        assert hostile.execute("SELECT outcome FROM lease_sched.lease_try_claim(%s, %s, 'thief')",
                               (planned, nxt)).fetchone()[0] == "won"
        assert rows_on(parts, "executions", "job_name", planned) == [int(p == 0), int(p == 1)]
        assert clean.execute("SELECT lease_sched.lease_next_plan(%s, '2 hours')", (planned,)).fetchone()[0] is None

        lock = job_on(p, f"lock{p}")
        acquired, token = hostile.execute(
            "SELECT acquired, lock_token FROM lease_sched.lock_acquire(%s, 'thief', '1 minute')", (lock,)).fetchone()
        assert acquired
        assert rows_on(parts, "locks", "name", lock) == [int(p == 0), int(p == 1)]
        assert clean.execute("SELECT acquired FROM lease_sched.lock_acquire(%s, 'honest')", (lock,)).fetchone()[0] \
            is False
        assert hostile.execute("SELECT holder FROM lease_sched.lock_info(%s)", (lock,)).fetchone()[0] == "thief"
        assert hostile.execute("SELECT lease_sched.lock_heartbeat(%s, %s)", (lock, token)).fetchone()[0] is True
        assert hostile.execute("SELECT lease_sched.lock_release(%s, %s)", (lock, token)).fetchone()[0] is True

        name = job_on(p, f"rt{p}")
        rt = hostile.execute("SELECT lease_sched.runtime_register(%s)", (name,)).fetchone()[0]
        assert rows_on(parts, "runtimes", "id", rt) == [int(p == 0), int(p == 1)]
        assert hostile.execute("SELECT lease_sched.runtime_touch(%s)", (rt,)).fetchone()[0] is True
        assert hostile.execute("SELECT lease_sched.runtime_touch(%s)", (uuid.uuid4(),)).fetchone()[0] is False
        stranger = uuid.uuid4()
        assert hostile.execute("SELECT lease_sched.runtime_touch_batch(%s)", ([rt, stranger],)).fetchone()[0] \
            == [stranger]
    assert hostile.execute("SELECT lease_sched.retry_backoff(3, '10 seconds', '1 hour')").fetchone()[0] \
        == dt.timedelta(seconds=40)
    after = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    runs = "SELECT array_agg(plan_time) FROM lease_sched.cron_next_runs('30 2 * * *', 'Europe/Berlin', 3, %s)"
    assert hostile.execute(runs, (after,)).fetchone()[0] == clean.execute(runs, (after,)).fetchone()[0]
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        hostile.execute("SELECT lease_sched.lease_fence(%s, 1)", (uuid.uuid4(),))
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        hostile.execute("SELECT lease_sched.lock_fence('x', 1)")
    clean.close()


def test_public_runs_nothing_and_a_reader_only_finds_partitions(proxy):
    admin = proxy
    outsider = unique("outsider")
    admin.execute(f"CREATE ROLE {outsider}")
    try:
        # Even with USAGE on both schemas, no function runs: EXECUTE is a barrier of its own.
        admin.execute(f"GRANT USAGE ON SCHEMA lease_sched, lease_sched_proxy TO {outsider}")
        runnable = admin.execute(
            "SELECT pg_catalog.array_agg(p.oid::regprocedure::text) FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname IN ('lease_sched', 'lease_sched_proxy') "
            "AND has_function_privilege(%s, p.oid, 'EXECUTE')", (outsider,)).fetchone()[0]
        assert runnable is None, runnable
        admin.execute("BEGIN")
        admin.execute(f"SET LOCAL ROLE {outsider}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.execute("SELECT * FROM lease_sched.lease_try_claim('x', now(), 'r')")
        admin.execute("ROLLBACK")
    finally:
        admin.execute(f"DROP OWNED BY {outsider}")
        admin.execute(f"DROP ROLE {outsider}")
    # No user mapping for PUBLIC: a role reaches the partitions only as what it is mapped to.
    assert admin.execute("SELECT count(*) FROM pg_user_mappings WHERE usename = 'public'").fetchone()[0] == 0
    reader = connect(READER_DSN)
    assert reader.execute("SELECT lease_sched_proxy.partition_of('nightly-report')").fetchone()[0] \
        == partition_of("nightly-report")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader.execute("SELECT * FROM lease_sched.lease_try_claim('x', now(), 'r')")
    reader.close()
