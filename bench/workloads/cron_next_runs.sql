-- cron_next_runs of a business-hours expression, 10 slots: bench/calendar_plan.sh
SELECT count(*) FROM lease_sched.cron_next_runs('*/15 9-17 * * mon-fri', 'America/New_York', 10);
