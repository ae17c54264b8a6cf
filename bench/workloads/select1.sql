-- The round-trip ceiling: one prepared statement that does no work. Every other case is
-- reported as a fraction of this at the same client count.
SELECT 1;
