-- Runs last: functions are created with EXECUTE for PUBLIC by default; take it back so a
-- role gets the API only through the documented grants.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched FROM PUBLIC;
REVOKE EXECUTE ON ALL PROCEDURES IN SCHEMA lease_sched FROM PUBLIC;
-- Every role may ask whether this database is swept (readers of job_health do).
GRANT EXECUTE ON FUNCTION lease_sched.sweeper_status() TO PUBLIC;
-- Wake the background worker when this CREATE EXTENSION commits; warn now if nothing
-- will sweep this database.
SELECT lease_sched.sys_sweeper_announce();
