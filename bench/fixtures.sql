-- Set-up helpers for bench/run.sh, in schema `bench`. Nothing here is measured: these
-- functions prepare rows before a pgbench run and read counters around it.
--
-- Every fixture is written to both sides at once, identically: `lease_sched.*` (the
-- extension's tables, written directly as superuser, exactly as the API would write them)
-- and `baseline.*`. Ids and lease tokens that a pgbench script must name are
-- deterministic, md5(prefix || k)::uuid, so the scripts compute them inside the measured
-- statement (the same expression on both sides) instead of spending a round trip on a
-- lookup:
--   runtimes      id = md5('r' || k)                      k = 1 .. N
--   leases        id = md5('h' || k), token = md5('t' || k)   (heartbeat and scale runs)

CREATE SCHEMA bench;

-- Rows of history loaded so far (cases 8 and 9).
CREATE TABLE bench.history (loaded bigint NOT NULL);
INSERT INTO bench.history VALUES (0);

-- One array of runtime ids per pgbench client, for runtime_touch_batch (case 7).
CREATE TABLE bench.batches (client int PRIMARY KEY, ids uuid[] NOT NULL);

-- Runtimes 1..n on both sides (missing ones only), online and seen now.
CREATE FUNCTION bench.ensure_runtimes(n int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['lease_sched.runtimes', 'baseline.runtimes'] LOOP
        EXECUTE format($q$
            INSERT INTO %s (id, name, status, last_seen_at, registered_at, metadata)
            SELECT md5('r' || g)::uuid, 'runtime-' || g, 'online', now(), now(),
                   jsonb_build_object('host', 'host-' || (g %% 100), 'pid', g)
              FROM generate_series(1, $1) g
            ON CONFLICT (id) DO NOTHING$q$, t) USING n;
    END LOOP;
END $$;

-- Before a touch run: every runtime online and recently seen, on both sides, so that a
-- touch takes its normal path (a touch of an offline runtime is written synchronously).
CREATE FUNCTION bench.refresh_runtimes() RETURNS void LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['lease_sched.runtimes', 'baseline.runtimes'] LOOP
        EXECUTE format($q$UPDATE %s SET status = 'online', last_seen_at = now()
                           WHERE status <> 'online' OR last_seen_at < now() - interval '5 minutes'$q$, t);
    END LOOP;
END $$;

-- RUNNING leases k = 1..n of one job on both sides (missing ones only), plan_time =
-- to_timestamp(k). With prefixes the ids and tokens are md5(prefix || k); without, random.
-- stale => stale_after is already in the past. one_job_each => lease k belongs to job
-- `job-k`, so each is the latest plan of its own job: the sweep fails a stale lease that a
-- later plan of its job superseded (nobody would come back to steal it), which would turn
-- the steal case's stale leases into FAILED runs waiting for a retry.
CREATE FUNCTION bench.ensure_leases(job text, n int, id_prefix text, token_prefix text,
                                    timeout interval, attempts int, stale boolean,
                                    one_job_each boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE pair text[]; t text; seq text;
BEGIN
    FOREACH pair SLICE 1 IN ARRAY ARRAY[['lease_sched.sys_cron_executions', 'lease_sched.fencing_token_seq'],
                                         ['baseline.sys_cron_executions', 'baseline.fencing_token_seq']] LOOP
        t := pair[1];
        seq := pair[2];
        EXECUTE format($q$
            INSERT INTO %s (id, job_name, scope_kind, scope_id, plan_time, status, attempt,
                            max_attempts, runner_id, lease_token, fencing_token, allow_stale_reentry,
                            stale_timeout, heartbeat_at, stale_after, started_at, updated_at)
            SELECT coalesce(md5($2 || g)::uuid, gen_random_uuid()),
                   CASE WHEN $8 THEN $1 || '-' || g ELSE $1 END, 'global', '', to_timestamp(g),
                   'RUNNING', 1, $6, 'setup', coalesce(md5($3 || g)::uuid, gen_random_uuid()),
                   nextval(%L), true, $5, now(),
                   CASE WHEN $7 THEN now() - interval '1 minute' ELSE now() + $5 END, now(), now()
              FROM generate_series(1, $4) g
            ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING$q$, t, seq)
            USING job, id_prefix, token_prefix, n, timeout, attempts, stale, one_job_each;
    END LOOP;
END $$;

-- Before a steal run: every lease of the job (or of its jobs `job-k`) RUNNING and stale
-- again, on both sides.
CREATE FUNCTION bench.make_stale(job text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['lease_sched.sys_cron_executions', 'baseline.sys_cron_executions'] LOOP
        EXECUTE format($q$UPDATE %s SET status = 'RUNNING', stale_after = now() - interval '1 minute'
                           WHERE job_name = $1 OR job_name LIKE $1 || '-%%'$q$, t) USING job;
    END LOOP;
END $$;

-- Client c (0-based, pgbench's :client_id) touches runtimes c*size+1 .. c*size+size.
CREATE FUNCTION bench.fill_batches(clients int, size int) RETURNS void LANGUAGE sql AS $$
    TRUNCATE bench.batches;
    INSERT INTO bench.batches
    SELECT c, ARRAY(SELECT md5('r' || (c * size + i))::uuid FROM generate_series(1, size) i)
      FROM generate_series(0, clients - 1) c;
$$;

-- History: finished (SUCCESS) executions on both sides until `upto` rows are loaded.
-- finished_at lies within the last day, so the 30-day retention prunes none of them.
CREATE FUNCTION bench.load_history(upto bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE t text; done bigint;
BEGIN
    SELECT loaded INTO done FROM bench.history;
    IF upto <= done THEN
        RETURN done;
    END IF;
    FOREACH t IN ARRAY ARRAY['lease_sched.sys_cron_executions', 'baseline.sys_cron_executions'] LOOP
        EXECUTE format($q$
            INSERT INTO %s (id, job_name, scope_kind, scope_id, plan_time, status, attempt,
                            max_attempts, runner_id, lease_token, fencing_token, allow_stale_reentry,
                            stale_timeout, heartbeat_at, stale_after, started_at, finished_at,
                            duration_ms, rows_affected, result, updated_at)
            SELECT gen_random_uuid(), 'history-' || (g %% 200), 'global', '',
                   timestamptz '2001-01-01' + g * interval '1 minute', 'SUCCESS', 1, 3,
                   'runner-' || (g %% 16), gen_random_uuid(), g, true, interval '5 minutes',
                   f - interval '2 seconds', f + interval '5 minutes', f - interval '2 seconds', f,
                   2000, g %% 1000, jsonb_build_object('rows', g %% 1000), f
              FROM generate_series($1 + 1, $2) g,
                   LATERAL (SELECT now() - (g %% 80000) * interval '1 second' AS f) x$q$, t)
            USING done, upto;
    END LOOP;
    UPDATE bench.history SET loaded = upto;
    RETURN upto;
END $$;

-- After a claim run at some history size: its claims become finished history too, so
-- the number of RUNNING rows (which the sweep reads) is the same at every size.
CREATE FUNCTION bench.settle(job text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['lease_sched.sys_cron_executions', 'baseline.sys_cron_executions'] LOOP
        EXECUTE format($q$UPDATE %s SET status = 'SUCCESS', finished_at = now(), duration_ms = 0,
                                        updated_at = now()
                           WHERE job_name = $1 AND status = 'RUNNING'$q$, t) USING job;
    END LOOP;
END $$;

-- Counters read before and after every run; bench/report.py takes the differences.
CREATE FUNCTION bench.snapshot() RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'wal', pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
        'stats', (SELECT jsonb_object_agg(name, value) FROM lease_sched.stats()),
        'pending', lease_sched.runtime_pending(),
        'tables', (SELECT jsonb_object_agg(schemaname || '.' || relname, jsonb_build_object(
                       'ins', n_tup_ins, 'upd', n_tup_upd, 'hot', n_tup_hot_upd, 'del', n_tup_del,
                       'live', n_live_tup, 'dead', n_dead_tup,
                       'autovacuum', autovacuum_count, 'autoanalyze', autoanalyze_count,
                       'bytes', pg_total_relation_size(relid)))
                     FROM pg_stat_user_tables
                    WHERE schemaname IN ('lease_sched', 'baseline')
                      AND relname IN ('sys_cron_executions', 'runtimes')))
$$;
