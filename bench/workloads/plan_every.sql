-- lease_next_plan for a job defined with every (the Rust planner): bench/calendar_plan.sh
SELECT lease_sched.lease_next_plan('bench_plan_every');
