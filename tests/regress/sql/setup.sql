-- Runs first: the extension, and error_of(), which the other files use to show an error
-- as a client gets it (SQLSTATE, message, hint) with the values that change from run to
-- run (execution ids, fencing tokens) replaced by their names.
-- No background worker sweeps this database (lease_sched.database names another), so every
-- output below is exact; CREATE EXTENSION says so, and sweeper_status() shows it.
-- (The portable edition has no worker at all: expected/setup_1.out, docs/portable.md.)
CREATE EXTENSION lease_sched;
SELECT swept, state FROM lease_sched.sweeper_status();
CREATE SCHEMA regress;

CREATE FUNCTION regress.error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    message text;
    hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    message := regexp_replace(message, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<execution_id>', 'g');
    message := regexp_replace(message, 'fencing token [0-9]+, not [0-9]+', 'fencing token <newer>, not <given>', 'g');
    RETURN state || ' ' || message || coalesce(nullif(' (hint: ' || hint || ')', ' (hint: )'), '');
END $$;
