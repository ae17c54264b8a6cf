-- Portable edition: appended to sql/finalize.sql, after its REVOKE of every function from
-- PUBLIC. The runtimes view calls portable_kept_touch with its reader's rights (readers are
-- granted the view only, as the native edition's table); USAGE on the schema still gates it.
GRANT EXECUTE ON FUNCTION lease_sched.portable_kept_touch(uuid) TO PUBLIC;
