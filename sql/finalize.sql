-- Runs last: functions are created with EXECUTE for PUBLIC by default; take it back so a
-- role gets the API only through the documented grants.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched FROM PUBLIC;
REVOKE EXECUTE ON ALL PROCEDURES IN SCHEMA lease_sched FROM PUBLIC;
