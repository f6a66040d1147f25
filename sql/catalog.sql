-- zdm catalog: every migration, its background job, each batch and every step.
-- The tables belong to the extension and are dumped by pg_dump (config dump).
-- Users never write them directly: zdm's functions switch to the extension
-- owner for catalog writes only, while the user-visible work (DDL, UPDATEs,
-- scans) runs as the migration's owner, security-restricted (SECURITY.md).

-- Every role may call zdm's functions and read its catalog; each function
-- checks the caller's rights on the migration or table itself.
GRANT USAGE ON SCHEMA zdm TO PUBLIC;

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

CREATE TABLE zdm.migrations (
    id              bigserial PRIMARY KEY,
    kind            text        NOT NULL REFERENCES zdm.kinds (kind),
    relid           regclass    NOT NULL,                 -- the table, by OID: every step resolves it from here
    table_schema    name        NOT NULL,                 -- for display: the name at expand
    table_name      name        NOT NULL,
    old_column      name,
    new_column      name,                                 -- rename: the new name; change_type: the shadow column
    new_type        text,                                 -- change_type, add_column: the new type, as format_type prints it
    using_expr      text,                                 -- change_type: the conversion from old_column, deparsed (the assignment cast if none was given);
                                                          -- add_column: what fills the column (its fill, else a volatile default); update: the WHERE
    using_tree      text,                                 -- change_type, add_column: the same, as the analysed node tree the trigger runs (OIDs)
    phase           text        NOT NULL DEFAULT 'expanded'
                    CHECK (phase IN ('expanded', 'backfilling', 'backfilled', 'contracted', 'aborted')),
    -- The migration's owner: the table's owner at expand. All its work runs
    -- as this role (resolved by name when work starts, checked before each
    -- batch), and only its members may control the migration.
    owner_name      name        NOT NULL,
    started_by      name        NOT NULL,                 -- who called it (display only)
    trigger_name    name,
    not_null_check  name,                                 -- CHECK (new IS NOT NULL) NOT VALID carried from old NOT NULL
    carried_checks  name[]      NOT NULL DEFAULT '{}',    -- CHECK constraints copied to the new column NOT VALID
    carried_from    name[]      NOT NULL DEFAULT '{}',    -- their originals' names, taken over at contract
    carried_statistics text[]   NOT NULL DEFAULT '{}',    -- extended statistics copied onto the new column ("schema"."name")
    carried_statistics_from name[] NOT NULL DEFAULT '{}', -- their originals' names, taken over at contract
    reads_columns   name[]      NOT NULL DEFAULT '{}',    -- add_column: the columns its fill reads; update: the columns its SET writes (protected like a migrated column)
    -- backfill cursor: the next heap block to visit. Persisted in the same
    -- transaction as each batch, so progress is exactly-once.
    next_block      bigint      NOT NULL DEFAULT 0,
    -- Where the backfill ends: the heap size measured under expand's lock.
    -- Every tuple written after that went through the sync trigger, so the
    -- blocks beyond hold nothing to backfill. If the table is rewritten
    -- (VACUUM FULL, CLUSTER), its relfilenode changes and the scan restarts.
    rel_blocks      bigint      NOT NULL DEFAULT 0,
    relfilenode     oid,
    rows_per_block  float8      NOT NULL DEFAULT 0,       -- estimate used to turn batch_size into a block range
    rows_done       bigint      NOT NULL DEFAULT 0,
    rows_visited    bigint      NOT NULL DEFAULT 0,         -- an update job: rows its batches looked at
    rows_estimate   bigint      NOT NULL DEFAULT 0,
    batches_done    bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    backfill_started_at timestamptz,
    backfilled_at   timestamptz,
    finished_at     timestamptz,
    last_error      text,
    last_errcode    int,                                  -- SQLSTATE of last_error (packed as in elog.h)
    -- what a migration that adds no column adds or drops, by name: the
    -- constraint (check, foreign_key; not_null: its temporary CHECK) or the
    -- index (create_index, drop_index)
    object_name     name,
    object_def      text,                                 -- e.g. CHECK (...) / FOREIGN KEY (...) REFERENCES ... / CREATE INDEX ...; add_column: its default; update: the SET list
    ref_relid       regclass,                             -- foreign_key: the referenced table
    expr_search_path text,                                -- check, update: the caller's search_path, to resolve names in the expression
    violations      bigint                                -- rows that violated it, when validation failed
);
CREATE INDEX migrations_in_flight ON zdm.migrations (relid) WHERE phase IN ('expanded', 'backfilling', 'backfilled');

-- Every step zdm takes, with its duration and how long it waited for locks.
CREATE TABLE zdm.events (
    id              bigserial PRIMARY KEY,
    migration_id    bigint      REFERENCES zdm.migrations (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    step            text        NOT NULL,
    duration_ms     float8,
    lock_wait_ms    float8,
    lock_attempts   int,
    detail          text
);
CREATE INDEX events_by_migration ON zdm.events (migration_id, id);

SELECT pg_catalog.pg_extension_config_dump('zdm.migrations', '');
SELECT pg_catalog.pg_extension_config_dump('zdm.migrations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('zdm.events', '');
SELECT pg_catalog.pg_extension_config_dump('zdm.events_id_seq', '');

REVOKE ALL ON zdm.migrations, zdm.events FROM PUBLIC;
GRANT SELECT ON zdm.migrations, zdm.events TO PUBLIC;

-- The background job of a migration (one per migration; a restart reuses it).
-- Options are read again before every batch, so a change takes effect at the
-- next batch.
CREATE TABLE zdm.jobs (
    migration_id        bigint      PRIMARY KEY REFERENCES zdm.migrations (id) ON DELETE CASCADE,
    state               text        NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    database            oid         NOT NULL,
    created_xid         xid8,                                  -- the transaction that queued it: work starts after it commits
    -- (work runs as zdm.migrations.owner_name; nothing here can change that)
    depends_on          bigint      REFERENCES zdm.migrations (id) ON DELETE SET NULL,  -- starts once that rename is backfilled
    -- Defaults keep a busy OLTP table healthy: batches steered to ~100 ms with
    -- a 400 ms breather after each (about a fifth of one core), short lock
    -- waits. Measured on 2 cores under pgbench: ≥ 90 % TPS, p99 < 2× (bench/).
    batch_size          int         NOT NULL DEFAULT 2000 CHECK (batch_size BETWEEN 1 AND 10000000),
    current_batch_size  int,                                   -- what the adaptive sizing / timeout halving uses now
    pause_ms            int         NOT NULL DEFAULT 400 CHECK (pause_ms >= 0),
    target_batch_ms     int         DEFAULT 100 CHECK (target_batch_ms > 0),
    max_replica_lag     interval    DEFAULT '10 seconds',
    max_rows_per_second int         CHECK (max_rows_per_second > 0),  -- a cap on rows written a second (all workers); NULL: none
    lock_timeout_ms     int         NOT NULL DEFAULT 1000 CHECK (lock_timeout_ms > 0),
    lock_retries        int         NOT NULL DEFAULT 10 CHECK (lock_retries >= 0),   -- for constraint steps
    statement_timeout_ms int        NOT NULL DEFAULT 30000 CHECK (statement_timeout_ms > 0),
    max_attempts        int         NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    run_after           timestamptz,
    windows             text[],                -- maintenance windows ('01:00-05:00 Europe/Berlin'); NULL/empty: any time
    workers             int         NOT NULL DEFAULT 1 CHECK (workers BETWEEN 1 AND 32),   -- processes sharing the backfill
    parked              boolean     NOT NULL DEFAULT false,    -- held (paused, run_after, windows, pause_all): no share of zdm.max_workers
    queued_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker_pid          int,
    worker_started_at   timestamptz,                           -- backend_start of worker_pid: tells a live worker from a reused pid
    heartbeat_at        timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz,
    throttle_reason     text,
    last_error          text
);

-- Per-batch history, bounded: the worker keeps the newest zdm.batch_history rows per migration.
-- No foreign key to zdm.migrations here nor in zdm.backfill_ranges: its check
-- would lock the migration's row (FOR KEY SHARE) at the end of every batch,
-- after the batch took the table's lock, while abort locks the row first and
-- the table after — a deadlock. zdm never deletes a migration row.
CREATE TABLE zdm.batches (
    id              bigserial   PRIMARY KEY,
    migration_id    bigint      NOT NULL,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    rows            bigint      NOT NULL,
    blocks          bigint      NOT NULL,
    batch_size      int         NOT NULL,
    duration_ms     float8      NOT NULL,
    wait_ms         float8      NOT NULL DEFAULT 0,
    wait_reason     text,
    first_block     bigint,                   -- the batch covered heap blocks [first_block, first_block + blocks)
    worker_pid      int                       -- which of the job's workers ran it
);
CREATE INDEX batches_by_migration ON zdm.batches (migration_id, id);

-- A parallel backfill (job option workers > 1): the heap blocks the
-- migration's own cursor had left, split into disjoint ranges, each with its
-- own cursor. A batch locks its range's row, so no two workers ever scan the
-- same blocks, and advances the cursor in its own transaction (exactly once,
-- like zdm.migrations.next_block). A worker that finds every range taken
-- gets one when a range holder splits off the unvisited half of its range.
-- When every range is done the counters are folded into zdm.migrations and
-- the rows deleted. A partitioned table's backfill always runs on ranges:
-- one per leaf partition to begin with, split further as workers go idle.
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

SELECT pg_catalog.pg_extension_config_dump('zdm.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('zdm.batches', '');
SELECT pg_catalog.pg_extension_config_dump('zdm.batches_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('zdm.backfill_ranges', '');
REVOKE ALL ON zdm.jobs, zdm.batches, zdm.backfill_ranges FROM PUBLIC;
GRANT SELECT ON zdm.jobs, zdm.batches, zdm.backfill_ranges TO PUBLIC;

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

-- One row per migration: where it is, how fast it goes, why it waits.
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
