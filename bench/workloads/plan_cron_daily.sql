-- lease_next_plan for a job defined with cron '30 2 * * *' in Europe/Berlin: bench/calendar_plan.sh
SELECT lease_sched.lease_next_plan('bench_plan_cron_daily');
