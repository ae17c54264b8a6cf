-- Case 2 (extension): every runner asks for one of :nplans runs that another runner holds
-- with a live lease (pre-claimed for 30 days by bench/run.sh) -> outcome 'conflicted'.
-- One round trip; the extension reads the row, decides, writes nothing.
\set k random(1, :nplans)
SELECT * FROM lease_sched.lease_try_claim('contended', to_timestamp(:k), 'runner-' || :client_id,
                                          'global', '', interval '5 minutes', 3, true);
