-- zdm 0.1.0 → 0.2.0, run by ALTER EXTENSION zdm UPDATE in one transaction.
--
-- In-flight migrations survive it: their rows are carried over below, and
-- once this commits the launcher resumes their jobs where they stopped (the
-- backfill cursor is kept). Until it runs, a 0.2.0 library refuses zdm's
-- functions (55000) and its workers wait, while the sync triggers — whose
-- arguments did not change — keep old and new columns equal.
--
-- Known limit: a rename expanded by 0.1.0 carried no indexes; contract
-- refuses (2BP01) while an index still uses the old column. Build it on the
-- new column (zdm.create_index), drop the old one (zdm.drop_index), contract.

GRANT USAGE ON SCHEMA zdm TO PUBLIC;

DROP VIEW zdm.status;  -- recreated at the end with its new columns

-- zdm.migrations -----------------------------------------------------------

-- The kinds of migration, one row each, written by the SQL of the operation
-- that implements the kind (its file in src/api/); zdm.status reads what it
-- shows per kind from here.
CREATE TABLE zdm.kinds (
    kind            text        PRIMARY KEY,
    -- a new column beside an existing one, backfilled, then contracted:
    -- zdm.status lists its carried constraints and what still uses the old
    -- column, and application code must not use the new column before the
    -- backfill is done
    adds_column     boolean     NOT NULL DEFAULT false,
    -- zdm.status.next_step once it waits only for zdm.contract: a format()
    -- string, %1$s the id, %2$I the new column, %3$I the old one (NULL: the
    -- kind has no contract step)
    ready_step      text
);
GRANT SELECT ON zdm.kinds TO PUBLIC;

INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES
    ('rename', true, 'ready for new code: deploy the version that uses %2$I; once no version uses %3$I, SELECT zdm.contract(%1$s)'),
    ('change_type', true, 'ready: SELECT zdm.contract(%1$s) swaps in the new type (the column keeps its name)'),
    ('not_null', false, NULL), ('check', false, NULL), ('foreign_key', false, NULL),
    ('create_index', false, NULL), ('drop_index', false, NULL),
    ('add_column', true, 'ready: SELECT zdm.contract(%1$s) sets the default and NOT NULL of %2$I and drops the fill trigger'),
    ('update', false, NULL);
ALTER TABLE zdm.migrations DROP CONSTRAINT migrations_kind_check;
ALTER TABLE zdm.migrations ADD CONSTRAINT migrations_kind_fkey FOREIGN KEY (kind) REFERENCES zdm.kinds (kind);
-- The backfill cursor has one name, a migration's and a range's alike.
ALTER TABLE zdm.migrations RENAME COLUMN cursor_block TO next_block;
-- Named for what they hold: a constraint or (create_index, drop_index) an index.
ALTER TABLE zdm.migrations RENAME COLUMN constraint_name TO object_name;
ALTER TABLE zdm.migrations RENAME COLUMN constraint_def TO object_def;
ALTER TABLE zdm.migrations
    ADD COLUMN new_type text,
    ADD COLUMN using_expr text,
    ADD COLUMN using_tree text,
    ADD COLUMN started_by name,
    ADD COLUMN carried_from name[] NOT NULL DEFAULT '{}',
    ADD COLUMN carried_statistics text[] NOT NULL DEFAULT '{}',
    ADD COLUMN carried_statistics_from name[] NOT NULL DEFAULT '{}',
    ADD COLUMN expr_search_path text,
    ADD COLUMN rows_visited bigint NOT NULL DEFAULT 0,
    ADD COLUMN reads_columns name[] NOT NULL DEFAULT '{}';

-- 0.1.0 ran a migration's work as the role that started it; 0.2.0 runs it as
-- the table's owner (SECURITY.md) and keeps the caller for display only. A
-- job whose starter is gone, or is no longer a member of the table's owner,
-- would now act with rights it never had: it is paused, and the owner
-- resumes it deliberately (zdm.resume) or aborts it.
UPDATE zdm.jobs j
   SET state = 'paused',
       last_error = pg_catalog.format('paused by the upgrade to 0.2.0: this job ran as role %s, which is gone or is no longer '
                                      'a member of the owner of its table; 0.2.0 runs it as the table''s owner. '
                                      'Resume it with zdm.resume(%s) if that is intended, or zdm.abort(%s).',
                                      m.owner_name, m.id, m.id)
  FROM zdm.migrations m
 WHERE j.migration_id = m.id
   AND j.state IN ('queued', 'running')
   AND m.phase IN ('expanded', 'backfilling', 'backfilled')
   AND NOT coalesce((SELECT pg_catalog.pg_has_role(m.owner_role, c.relowner, 'USAGE')
                       FROM pg_catalog.pg_class c
                      WHERE c.oid = m.relid::pg_catalog.oid
                        AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = m.owner_role)), false);
UPDATE zdm.migrations SET started_by = owner_name;
UPDATE zdm.migrations m SET owner_name = r.rolname
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
 WHERE c.oid = m.relid::pg_catalog.oid;
ALTER TABLE zdm.migrations ALTER COLUMN started_by SET NOT NULL, DROP COLUMN owner_role;

-- 0.1.0 named a carried CHECK's copy <original>_zdm<id>, cut to 63 bytes,
-- and derived the original from it; 0.2.0 records the original, which
-- contract takes over. Found in pg_catalog (a long original lost its suffix
-- to the cut), else by stripping the suffix (the original is gone).
UPDATE zdm.migrations m
   SET carried_from = ARRAY(
         SELECT coalesce((SELECT c.conname FROM pg_catalog.pg_constraint c
                           WHERE c.conrelid = m.relid::pg_catalog.oid AND c.contype = 'c' AND c.conname <> u.copy
                             AND (c.conname::pg_catalog.text || '_zdm' || m.id)::name = u.copy
                           LIMIT 1),
                         pg_catalog.regexp_replace(u.copy::pg_catalog.text, '_zdm' || m.id || '$', '')::name)
           FROM pg_catalog.unnest(m.carried_checks) WITH ORDINALITY AS u(copy, n) ORDER BY u.n)
 WHERE pg_catalog.cardinality(m.carried_checks) > 0;

-- 0.1.0 analysed a CHECK expression under the worker's default search_path;
-- 0.2.0 resolves it under the one recorded with the migration.
UPDATE zdm.migrations SET expr_search_path = '"$user", public' WHERE kind = 'check';

-- 0.2.0 makes a sync trigger fire under session_replication_role = replica
-- too (writes applied by logical replication stay in sync); 0.1.0's did not.
-- (A brief lock on each table with a rename in flight.)
DO $$
DECLARE
  m record;
BEGIN
  FOR m IN SELECT mi.relid, mi.trigger_name FROM zdm.migrations mi
            WHERE mi.kind = 'rename' AND mi.phase IN ('expanded', 'backfilling', 'backfilled')
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                           WHERE t.tgrelid = mi.relid::pg_catalog.oid AND t.tgname = mi.trigger_name)
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', m.relid, m.trigger_name);
  END LOOP;
END $$;

-- zdm.jobs -------------------------------------------------------------------

-- run_as: see owner_name above.
ALTER TABLE zdm.jobs
    DROP COLUMN run_as,
    DROP COLUMN run_as_name,
    ADD COLUMN depends_on bigint REFERENCES zdm.migrations (id) ON DELETE SET NULL,
    ADD COLUMN windows text[],
    ADD COLUMN workers int NOT NULL DEFAULT 1 CHECK (workers BETWEEN 1 AND 32),
    ADD COLUMN max_rows_per_second int CHECK (max_rows_per_second > 0),
    ADD COLUMN parked boolean NOT NULL DEFAULT false;

-- zdm.batches ----------------------------------------------------------------

-- No foreign key any more: its check would lock the migration's row at the
-- end of every batch, after the table's lock (abort takes them the other way).
ALTER TABLE zdm.batches
    DROP CONSTRAINT batches_migration_id_fkey,
    ADD COLUMN first_block bigint,
    ADD COLUMN worker_pid int;

-- New tables ------------------------------------------------------------------

-- A parallel backfill (job option workers > 1): the heap blocks the
-- migration's own cursor had left, split into disjoint ranges, each with its
-- own cursor. A batch locks its range's row, so no two workers ever scan the
-- same blocks, and advances the cursor in its own transaction (exactly once,
-- like zdm.migrations.next_block). A worker that finds every range taken
-- gets one when a range holder splits off the unvisited half of its range.
-- When every range is done the counters are folded into zdm.migrations and
-- the rows deleted.
CREATE TABLE zdm.backfill_ranges (
    migration_id    bigint  NOT NULL,         -- no foreign key: see zdm.batches
    start_block     bigint  NOT NULL,         -- where the range began (ranges are disjoint, so this names it)
    next_block      bigint  NOT NULL,         -- the range's cursor: the next heap block to visit
    end_block       bigint  NOT NULL,         -- exclusive
    rows_per_block  float8  NOT NULL DEFAULT 0,
    rows_done       bigint  NOT NULL DEFAULT 0,
    rows_visited    bigint  NOT NULL DEFAULT 0,
    batches_done    bigint  NOT NULL DEFAULT 0,
    relid           oid     NOT NULL DEFAULT 0,   -- a partitioned table's leaf whose heap the range covers (0: the migration's own table)
    relfilenode     oid,                          -- that leaf's heap when the range was planned: a rewrite restarts the leaf
    PRIMARY KEY (migration_id, relid, start_block),
    CHECK (start_block <= next_block AND start_block < end_block)
);
SELECT pg_catalog.pg_extension_config_dump('zdm.backfill_ranges', '');
REVOKE ALL ON zdm.backfill_ranges FROM PUBLIC;
GRANT SELECT ON zdm.backfill_ranges TO PUBLIC;

-- Indexes a rename carries to the new column: built concurrently by the
-- worker after the backfill, attached (UNIQUE / PRIMARY KEY USING INDEX) or
-- renamed to the old index's name at contract.
CREATE TABLE zdm.carried_indexes (
    migration_id     bigint  NOT NULL REFERENCES zdm.migrations (id) ON DELETE CASCADE,
    old_index        name    NOT NULL,                 -- on the old column; its name is taken over at contract
    new_index        name    NOT NULL,                 -- built on the new column
    definition       text    NOT NULL,                 -- CREATE INDEX … built from the catalog, names qualified
    constraint_type  text    CHECK (constraint_type IN ('u', 'p')),   -- attached USING INDEX at contract
    constraint_name  name,
    replica_identity boolean NOT NULL DEFAULT false,
    clustered        boolean NOT NULL DEFAULT false,
    state            text    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'building', 'valid', 'failed')),
    last_error       text,
    PRIMARY KEY (migration_id, old_index)
);
SELECT pg_catalog.pg_extension_config_dump('zdm.carried_indexes', '');
REVOKE ALL ON zdm.carried_indexes FROM PUBLIC;
GRANT SELECT ON zdm.carried_indexes TO PUBLIC;

-- One row, locked FOR UPDATE while a worker claims a job, so that
-- zdm.max_workers and "one backfill per table" hold under concurrent claims.
-- Only zdm can lock it (FOR UPDATE needs UPDATE privilege); an advisory lock
-- would be open to every role.
CREATE TABLE zdm.claim_lock (one boolean PRIMARY KEY DEFAULT true CHECK (one));
INSERT INTO zdm.claim_lock VALUES (true);
REVOKE ALL ON zdm.claim_lock FROM PUBLIC;

-- The full text of a migration's last error from user code or data (a
-- failed batch, build, validation or conversion): it may quote row values,
-- so only zdm reads it; zdm.status shows it to members of the owning role.
CREATE TABLE zdm.error_texts (
    migration_id    bigint      PRIMARY KEY,              -- no foreign key: see zdm.batches
    message         text        NOT NULL,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);
SELECT pg_catalog.pg_extension_config_dump('zdm.error_texts', '');
REVOKE ALL ON zdm.error_texts FROM PUBLIC;

-- zdm.status ------------------------------------------------------------------

CREATE VIEW zdm.status AS
SELECT m.id,
       m.kind,
       format('%I.%I', m.table_schema, m.table_name)              AS "table",
       m.old_column,
       m.new_column,
       m.new_type,
       coalesce(m.object_name, m.not_null_check)             AS "constraint",
       m.phase,
       j.state                                                    AS job_state,
       p.rows_done,
       greatest(m.rows_estimate, p.rows_done)                     AS rows_total,
       -- an update job: the rows its batches looked at (rows_done: those its
       -- WHERE matched and it updated); NULL for other kinds
       CASE WHEN m.kind = 'update' THEN p.rows_visited END        AS rows_visited,
       CASE WHEN m.phase IN ('backfilled', 'contracted') THEN 100.0
            WHEN m.rel_blocks > 0 THEN round(least(99.9, 100.0 * p.blocks_done / m.rel_blocks), 1)
            ELSE 0.0 END                                          AS percent,
       CASE WHEN m.backfill_started_at IS NOT NULL
             AND coalesce(m.backfilled_at, clock_timestamp()) > m.backfill_started_at
            THEN round((p.rows_done / extract(epoch FROM coalesce(m.backfilled_at, clock_timestamp()) - m.backfill_started_at))::numeric, 0)
       END                                                        AS rows_per_sec,
       CASE WHEN m.phase IN ('expanded', 'backfilling') AND p.blocks_done > 0 AND m.rel_blocks > p.blocks_done
             AND m.backfill_started_at IS NOT NULL
            THEN (clock_timestamp() - m.backfill_started_at) * ((m.rel_blocks - p.blocks_done)::float8 / p.blocks_done)
       END                                                        AS eta,
       CASE WHEN j.state = 'paused' THEN 'paused by zdm.pause()'
            WHEN j.state IN ('queued', 'running') THEN j.throttle_reason END AS throttle_reason,
       (SELECT pg_catalog.string_agg(pg_catalog.format('%I: %s', ci.new_index, ci.state), ', ' ORDER BY ci.old_index)
          FROM zdm.carried_indexes ci WHERE ci.migration_id = m.id)  AS indexes,
       -- Checks and foreign keys carried onto the new column (and its NOT
       -- NULL check): added NOT VALID at expand, validated after the backfill.
       (SELECT pg_catalog.string_agg(pg_catalog.format('%I: %s', c.conname,
                 CASE WHEN c.convalidated THEN 'valid'
                      WHEN j.state = 'failed' AND pg_catalog.strpos((SELECT e.message FROM zdm.error_texts e WHERE e.migration_id = m.id),
                           'validating ' || pg_catalog.quote_ident(c.conname::text) || ' ') = 1 THEN 'failed'
                      ELSE 'pending' END), ', ' ORDER BY c.conname)
          FROM pg_catalog.pg_constraint c
         WHERE k.adds_column AND m.phase IN ('expanded', 'backfilling', 'backfilled') AND c.conrelid = m.relid
           AND (c.conname = ANY (m.carried_checks) OR c.conname = m.not_null_check)) AS constraints,
       -- Objects still using the old column that contract will not carry:
       -- recreate them on the new column before contract.
       (SELECT pg_catalog.string_agg(DISTINCT b.what, '; ')
          FROM (SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0) AS what
                  FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                             AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
                 WHERE a.attrelid = m.relid AND a.attname = m.old_column AND d.deptype = 'n'
                   AND d.classid IN ('pg_catalog.pg_rewrite'::pg_catalog.regclass, 'pg_catalog.pg_policy'::pg_catalog.regclass,
                                     'pg_catalog.pg_trigger'::pg_catalog.regclass, 'pg_catalog.pg_publication_rel'::pg_catalog.regclass)
                UNION ALL
                -- generated columns computed from it
                SELECT pg_catalog.format('generated column %I of table %s', ga.attname, ga.attrelid::pg_catalog.regclass)
                  FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                             AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
                  JOIN pg_catalog.pg_attribute ga ON ga.attrelid = a.attrelid AND ga.attgenerated <> '' AND ga.attnum <> a.attnum
                 WHERE a.attrelid = m.relid AND a.attname = m.old_column
                   AND ((d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = a.attrelid AND d.objsubid = ga.attnum)
                     OR (d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                         AND ga.attnum = (SELECT ad.adnum FROM pg_catalog.pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = a.attrelid)))) b
         WHERE k.adds_column AND m.phase IN ('expanded', 'backfilling', 'backfilled')) AS blockers,
       j.worker_pid,
       j.workers,
       j.heartbeat_at,
       -- Error texts may quote row values: only members of the owning
       -- role read them; others see what failed and its SQLSTATE.
       CASE WHEN coalesce(j.last_error, m.last_error) IS NOT NULL
             AND EXISTS (SELECT FROM pg_catalog.pg_roles r
                          WHERE (r.rolname = m.owner_name AND pg_catalog.pg_has_role(r.oid, 'MEMBER'))
                             OR (r.rolname = CURRENT_USER AND r.rolsuper))
            THEN coalesce((SELECT e.message FROM zdm.error_texts e WHERE e.migration_id = m.id), j.last_error, m.last_error)
            ELSE coalesce(j.last_error, m.last_error) END         AS last_error,
       -- What to do next. A rename is ready for code that uses the new
       -- column only when the backfill, its carried indexes and checks are
       -- done: read before that, a NULL is saved back over the value.
       CASE WHEN m.phase = 'contracted' THEN 'done'
            WHEN m.phase = 'aborted' THEN 'aborted: nothing left to do'
            WHEN j.state = 'failed' THEN pg_catalog.format('failed: fix the cause (last_error), then zdm.start_backfill(%s), or zdm.abort(%s)', m.id, m.id)
            WHEN k.adds_column AND (m.phase <> 'backfilled' OR j.state IN ('queued', 'running', 'paused'))
            THEN pg_catalog.format('wait: SELECT zdm.wait(%s); application code must not use %I yet', m.id, m.new_column)
            WHEN k.ready_step IS NOT NULL
            THEN pg_catalog.format(k.ready_step, m.id, m.new_column, m.old_column)
            WHEN j.state IN ('queued', 'running', 'paused') THEN pg_catalog.format('wait: SELECT zdm.wait(%s)', m.id)
            ELSE 'in flight' END                                   AS next_step,
       m.started_by,
       m.owner_name                                               AS owner,
       m.created_at,
       m.updated_at
  FROM zdm.migrations m
  LEFT JOIN zdm.kinds k ON k.kind = m.kind
  LEFT JOIN zdm.jobs j ON j.migration_id = m.id
  -- progress: the migration's cursor, less what its parallel ranges still have to visit
 CROSS JOIN LATERAL (SELECT (m.rows_done + coalesce(sum(r.rows_done), 0))::bigint AS rows_done,
                            (m.rows_visited + coalesce(sum(r.rows_visited), 0))::bigint AS rows_visited,
                            (m.next_block - coalesce(sum(greatest(r.end_block - r.next_block, 0)), 0))::bigint AS blocks_done
                       FROM zdm.backfill_ranges r WHERE r.migration_id = m.id) p;
GRANT SELECT ON zdm.status TO PUBLIC;

-- Functions: two gained parameters (windows, workers); the rest are replaced in place.

DROP FUNCTION zdm.set_options(bigint, int, int, int, interval, interval, interval, timestamptz);
DROP FUNCTION zdm.start_backfill(bigint, int, int, int, interval, interval, interval, timestamptz);

CREATE OR REPLACE FUNCTION zdm.convert_trigger() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_convert_trigger';
COMMENT ON FUNCTION zdm.convert_trigger() IS
  'zdm convert trigger: sets a type change''s shadow column to the conversion of the old column on every write (installed by expand_change_type)';

CREATE FUNCTION zdm.fill_trigger() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_fill_trigger';
COMMENT ON FUNCTION zdm.fill_trigger() IS
  'zdm fill trigger: fills a column zdm.add_column added on every write that leaves it NULL or changes what its fill reads';

CREATE FUNCTION zdm.add_column(tbl regclass, col name, type text, fill text DEFAULT NULL, not_null boolean DEFAULT false,
    default_expr text DEFAULT NULL, background boolean DEFAULT true)
RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'add_column_wrapper';
COMMENT ON FUNCTION zdm.add_column(regclass, name, text, text, boolean, text, boolean) IS
  'Expand: add column col of type, kept filled with fill(row) by a trigger while old code writes, backfilled in the background; contract sets default_expr and NOT NULL without a long lock; returns the migration id';

CREATE FUNCTION zdm.update_in_batches(tbl regclass, set text, "where" text DEFAULT NULL, batch_size int DEFAULT NULL,
    pause_ms int DEFAULT NULL, target_batch_ms int DEFAULT NULL, max_replica_lag interval DEFAULT NULL,
    lock_timeout interval DEFAULT NULL, statement_timeout interval DEFAULT NULL, run_after timestamptz DEFAULT NULL,
    windows text[] DEFAULT NULL, workers int DEFAULT NULL, max_rows_per_second int DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'update_in_batches_wrapper';
COMMENT ON FUNCTION zdm.update_in_batches(regclass, text, text, int, int, int, interval, interval, interval, timestamptz, text[], int, int) IS
  'Run UPDATE tbl SET set WHERE where as a background job in throttled batches over the table''s blocks, as its owner; returns the job id (= migration id)';

CREATE FUNCTION zdm._plan(statement text) RETURNS jsonb STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_plan_wrapper';
CREATE FUNCTION zdm.plan(statement text)
RETURNS TABLE (step int, statement text, action text, relation text, lock text, blocks text, work text,
               rows bigint, bytes bigint, estimate interval, estimate_basis text, blockers text[],
               safe boolean, alternative text, note text)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE sql
AS $$
  SELECT p.step, p.statement, p.action, p.relation, p.lock, p.blocks, p.work, p.rows, p.bytes,
         pg_catalog.make_interval(secs => p.estimate_s), p.estimate_basis, p.blockers, p.safe, p.alternative, p.note
    FROM pg_catalog.jsonb_to_recordset(zdm._plan(statement)) AS p(step int, statement text, action text, relation text,
         lock text, blocks text, work text, rows bigint, bytes bigint, estimate_s float8, estimate_basis text,
         blockers text[], safe boolean, alternative text, note text)
$$;
COMMENT ON FUNCTION zdm.plan(text) IS
  'Explain DDL statements or zdm calls against the live database without running them: per step the lock and what it blocks, the work under it, rows, bytes, an estimate, who holds a conflicting lock now, and the zdm call that does it online';

CREATE OR REPLACE FUNCTION zdm.guard() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_guard';
COMMENT ON FUNCTION zdm.guard() IS
  'zdm guard: refuses DDL that would break an in-flight migration (rename/drop of its table or columns, type change, inheritance)';

CREATE OR REPLACE FUNCTION zdm.sync_trigger() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_sync_trigger';
COMMENT ON FUNCTION zdm.sync_trigger() IS
  'zdm sync trigger: keeps the old and new column of a rename equal on every write (installed by expand_rename)';

CREATE FUNCTION zdm.unwritten(migration bigint, value anyelement) RETURNS anyelement
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'zdm_unwritten';
COMMENT ON FUNCTION zdm.unwritten(bigint, anyelement) IS
  'zdm: a rename''s new column default during the migration; tells the sync trigger that an INSERT left the column out, and returns value';

CREATE OR REPLACE FUNCTION zdm._add_foreign_key(tbl regclass, columns text[], ref_tbl regclass, ref_columns text[], on_delete text, constraint_name text)
RETURNS bigint VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '_add_foreign_key_wrapper';
CREATE OR REPLACE FUNCTION zdm.add_foreign_key(tbl regclass, columns name[], ref_tbl regclass, ref_columns name[],
                                    on_delete text DEFAULT NULL, constraint_name name DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$ SELECT zdm._add_foreign_key(tbl, columns::text[], ref_tbl, ref_columns::text[], on_delete, constraint_name::text) $$;
COMMENT ON FUNCTION zdm.add_foreign_key(regclass, name[], regclass, name[], text, name) IS
  'Add a FOREIGN KEY without a long lock: NOT VALID under a brief lock, then VALIDATE in its own transaction; returns the migration id';

CREATE OR REPLACE FUNCTION zdm.abort(migration bigint)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'abort_wrapper';
COMMENT ON FUNCTION zdm.abort(bigint) IS
  'Abort: stop the backfill, drop the sync trigger and the new column; the old column is untouched';

CREATE OR REPLACE FUNCTION zdm.abort(tbl regclass, col name)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'abort_column_wrapper';
COMMENT ON FUNCTION zdm.abort(regclass, name) IS
  'Abort the migration on tbl.col (see zdm.migration_id); a no-op with a NOTICE if it is aborted already';

CREATE OR REPLACE FUNCTION zdm.add_check(tbl regclass, constraint_name name, expression text) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'add_check_wrapper';
COMMENT ON FUNCTION zdm.add_check(regclass, name, text) IS
  'Add CHECK (expression) without a long lock: NOT VALID under a brief lock, then VALIDATE in its own transaction; returns the migration id';

CREATE OR REPLACE FUNCTION zdm.backfill_batch(migration bigint, batch_size int DEFAULT 1000)
RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'backfill_batch_wrapper';
COMMENT ON FUNCTION zdm.backfill_batch(bigint, int) IS
  'Backfill in the caller''s transaction until a batch updates rows; returns rows updated, 0 when complete';

CREATE OR REPLACE FUNCTION zdm.cancel(migration bigint) RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'cancel_wrapper';
COMMENT ON FUNCTION zdm.cancel(bigint) IS
  'Stop the background backfill after its current batch; progress is kept, restart with zdm.start_backfill';

CREATE OR REPLACE FUNCTION zdm.contract(migration bigint)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'contract_wrapper';
COMMENT ON FUNCTION zdm.contract(bigint) IS
  'Contract: validate carried constraints, move default and NOT NULL, drop the trigger and the old column';

CREATE OR REPLACE FUNCTION zdm.contract(tbl regclass, col name)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'contract_column_wrapper';
COMMENT ON FUNCTION zdm.contract(regclass, name) IS
  'Contract the migration on tbl.col (see zdm.migration_id); a no-op with a NOTICE if it is contracted already';

CREATE OR REPLACE FUNCTION zdm.create_index(definition text) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'create_index_wrapper';
COMMENT ON FUNCTION zdm.create_index(text) IS
  'Build an index CONCURRENTLY in a background worker once the calling transaction commits (one CREATE INDEX statement, named); returns the migration id';

CREATE OR REPLACE FUNCTION zdm.drop_index(index regclass) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'drop_index_wrapper';
COMMENT ON FUNCTION zdm.drop_index(regclass) IS
  'Drop an index CONCURRENTLY in a background worker once the calling transaction commits; returns the migration id';

CREATE OR REPLACE FUNCTION zdm.expand_change_type(tbl regclass, col name, new_type text, using_expr text DEFAULT NULL, background boolean DEFAULT true)
RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'expand_change_type_wrapper';
COMMENT ON FUNCTION zdm.expand_change_type(regclass, name, text, text, boolean) IS
  'Expand: add a shadow column of new_type kept equal to the conversion of col (using_expr, default the assignment cast) by a trigger, and schedule the background backfill; contract swaps it in; returns the migration id';

CREATE OR REPLACE FUNCTION zdm.expand_rename(tbl regclass, old_column name, new_column name, background boolean DEFAULT true)
RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'expand_rename_wrapper';
COMMENT ON FUNCTION zdm.expand_rename(regclass, name, name, boolean) IS
  'Expand: add new_column (same type, collation, comment, checks) kept in sync with old_column by a trigger, and schedule the background backfill (unless background => false); returns the migration id';

CREATE OR REPLACE FUNCTION zdm.migration_id(tbl regclass, col name, kind text DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'migration_id_wrapper';
COMMENT ON FUNCTION zdm.migration_id(regclass, name, text) IS
  'The id of the migration in flight on tbl.col (old or new column name, or the name of a constraint or an index it builds or drops), else the latest one; 42P08 if several are in flight (pass kind), 42704 if none';

CREATE OR REPLACE FUNCTION zdm.pause(migration bigint) RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'pause_wrapper';
COMMENT ON FUNCTION zdm.pause(bigint) IS 'Pause the background backfill after its current batch';

CREATE OR REPLACE FUNCTION zdm.resume(migration bigint) RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'resume_wrapper';
COMMENT ON FUNCTION zdm.resume(bigint) IS 'Resume a paused background backfill';

CREATE OR REPLACE FUNCTION zdm.set_options(migration bigint, batch_size int DEFAULT NULL, pause_ms int DEFAULT NULL,
    target_batch_ms int DEFAULT NULL, max_replica_lag interval DEFAULT NULL, lock_timeout interval DEFAULT NULL,
    statement_timeout interval DEFAULT NULL, run_after timestamptz DEFAULT NULL, windows text[] DEFAULT NULL,
    workers int DEFAULT NULL, max_rows_per_second int DEFAULT NULL)
RETURNS void VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'set_options_wrapper';
COMMENT ON FUNCTION zdm.set_options(bigint, int, int, int, interval, interval, interval, timestamptz, text[], int, int) IS
  'Change background backfill options (NULL keeps a value; 0 turns target_batch_ms / max_replica_lag / max_rows_per_second off); applied at the next batch';

CREATE OR REPLACE FUNCTION zdm.start_backfill(migration bigint, batch_size int DEFAULT NULL, pause_ms int DEFAULT NULL,
    target_batch_ms int DEFAULT NULL, max_replica_lag interval DEFAULT NULL, lock_timeout interval DEFAULT NULL,
    statement_timeout interval DEFAULT NULL, run_after timestamptz DEFAULT NULL, windows text[] DEFAULT NULL,
    workers int DEFAULT NULL, max_rows_per_second int DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'start_backfill_wrapper';
COMMENT ON FUNCTION zdm.start_backfill(bigint, int, int, int, interval, interval, interval, timestamptz, text[], int, int) IS
  'Run the backfill in a background worker, after the calling transaction commits; returns the job id (= migration id)';

CREATE OR REPLACE FUNCTION zdm.validate_not_null(tbl regclass, col name) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'validate_not_null_wrapper';
COMMENT ON FUNCTION zdm.validate_not_null(regclass, name) IS
  'Make a column NOT NULL without a long lock: NOT VALID check, VALIDATE, SET NOT NULL, each step its own transaction; returns the migration id';

CREATE OR REPLACE FUNCTION zdm.wait(migration bigint, timeout interval DEFAULT '1 hour') RETURNS text STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', 'wait_wrapper';
COMMENT ON FUNCTION zdm.wait(bigint, interval) IS
  'Wait for the background backfill, with progress NOTICEs; returns the final phase';

CREATE FUNCTION zdm._serve_this_database() RETURNS void VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '_serve_this_database_wrapper';
REVOKE ALL ON FUNCTION zdm._serve_this_database() FROM PUBLIC;
COMMENT ON FUNCTION zdm._serve_this_database() IS
  'zdm: ask the supervisor for a launcher in this database when the transaction commits (called by CREATE EXTENSION zdm)';
SELECT zdm._serve_this_database();

-- Last: the guard fires on DDL from here on (0.1.0 had none).
CREATE EVENT TRIGGER zdm_guard_ddl ON ddl_command_start EXECUTE FUNCTION zdm.guard();
CREATE EVENT TRIGGER zdm_guard_drop ON sql_drop EXECUTE FUNCTION zdm.guard();
