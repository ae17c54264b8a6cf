-- lease_next_plan for a job defined with cron '* * * * *' in Europe/Berlin (the PL/pgSQL
-- calendar planner): bench/calendar_plan.sh
SELECT lease_sched.lease_next_plan('bench_plan_cron');
