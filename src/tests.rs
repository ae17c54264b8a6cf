//! In-database tests of the lease state machine (`cargo pgrx test`). Each runs inside one
//! transaction of a scratch server; concurrency and the worker are covered by
//! tests/isolation and tests/integration, which use real separate sessions. What the SQL
//! examples (tests/regress) already show with exact output is not repeated here: only what
//! they do not pin (a claim after SUCCESS, the last attempt's retry time, a caller's own
//! allow_stale_reentry, a finish with a wrong token, the default error_code, a status in
//! the wrong case, the grants).
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn claim(job: &str, runner: &str, extra: &str) -> (String, Option<i32>, Option<i64>) {
        let (outcome, attempt, token) = Spi::get_three::<String, i32, i64>(&format!(
            "SELECT outcome, attempt, fencing_token FROM lease_sched.lease_try_claim('{job}', '2026-01-01', '{runner}'{extra})"
        ))
        .unwrap();
        (outcome.unwrap(), attempt, token)
    }

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
        Spi::get_one(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn success_is_final() {
        claim("t_succ", "r1", "");
        assert!(one::<bool>(
            "SELECT lease_sched.lease_finish(id, lease_token, 'SUCCESS', rows_affected => 7)
               FROM lease_sched.sys_cron_executions WHERE job_name = 't_succ'"
        ));
        assert_eq!(claim("t_succ", "r2", "").0, "conflicted");
        assert_eq!(
            one::<i64>("SELECT rows_affected FROM lease_sched.sys_cron_executions WHERE job_name = 't_succ'"),
            7
        );
    }

    #[pg_test]
    fn failed_run_with_attempts_left_is_stolen_as_next_attempt() {
        let (_, _, first) = claim("t_retry", "r1", ", max_attempts => 2");
        Spi::run(
            "SELECT lease_sched.lease_finish(id, lease_token, 'FAILED', retry_in => '0')
               FROM lease_sched.sys_cron_executions WHERE job_name = 't_retry'",
        )
        .unwrap();
        let (outcome, attempt, second) = claim("t_retry", "r2", ", max_attempts => 2");
        assert_eq!((outcome.as_str(), attempt), ("stole", Some(2)));
        assert!(second > first);
        Spi::run(
            "SELECT lease_sched.lease_finish(id, lease_token, 'FAILED', retry_in => '0')
               FROM lease_sched.sys_cron_executions WHERE job_name = 't_retry'",
        )
        .unwrap();
        assert_eq!(claim("t_retry", "r3", ", max_attempts => 2").0, "conflicted");
        assert!(one::<bool>(
            "SELECT next_retry_at IS NULL FROM lease_sched.sys_cron_executions WHERE job_name = 't_retry'"
        ));
    }

    #[pg_test]
    fn stale_running_lease_is_stolen_only_with_reentry() {
        claim("t_stale", "r1", "");
        Spi::run("UPDATE lease_sched.sys_cron_executions SET stale_after = now() - interval '1 s' WHERE job_name = 't_stale'")
            .unwrap();
        assert_eq!(claim("t_stale", "r2", ", allow_stale_reentry => false").0, "conflicted");
        assert_eq!(claim("t_stale", "r2", "").0, "stole");
    }

    #[pg_test]
    fn heartbeat_and_finish_need_the_current_token() {
        claim("t_tok", "r1", "");
        assert!(!one::<bool>("SELECT lease_sched.lease_heartbeat(id, gen_random_uuid()) FROM lease_sched.sys_cron_executions WHERE job_name = 't_tok'"));
        assert!(!one::<bool>("SELECT lease_sched.lease_finish(id, gen_random_uuid(), 'SUCCESS') FROM lease_sched.sys_cron_executions WHERE job_name = 't_tok'"));
        assert!(one::<bool>("SELECT lease_sched.lease_heartbeat(id, lease_token) FROM lease_sched.sys_cron_executions WHERE job_name = 't_tok'"));
    }

    #[pg_test]
    fn failure_defaults_error_code_and_success_clears_error_fields() {
        claim("t_err", "r1", "");
        Spi::run("SELECT lease_sched.lease_finish(id, lease_token, 'FAILED', error_msg => 'x', retry_in => '0') FROM lease_sched.sys_cron_executions WHERE job_name = 't_err'").unwrap();
        assert_eq!(
            one::<String>("SELECT error_code FROM lease_sched.sys_cron_executions WHERE job_name = 't_err'"),
            "handler_error"
        );
        claim("t_err", "r2", "");
        Spi::run("SELECT lease_sched.lease_finish(id, lease_token, 'SUCCESS', error_code => 'ignored') FROM lease_sched.sys_cron_executions WHERE job_name = 't_err'").unwrap();
        assert!(one::<bool>("SELECT error_code IS NULL AND error_msg IS NULL FROM lease_sched.sys_cron_executions WHERE job_name = 't_err'"));
    }

    #[pg_test(error = "status must be 'SUCCESS' or 'FAILED'")]
    fn unknown_status_is_an_error() {
        Spi::run("SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), 'success')").unwrap();
    }

    #[pg_test]
    fn api_is_not_granted_to_public() {
        assert!(!one::<bool>(
            "SELECT has_function_privilege('public', 'lease_sched.lease_heartbeat(uuid, uuid)', 'EXECUTE')"
        ));
        assert!(!one::<bool>("SELECT has_schema_privilege('public', 'lease_sched', 'USAGE')"));
        assert!(one::<bool>("SELECT prosecdef FROM pg_proc WHERE proname = 'lease_try_claim'"));
    }
}
