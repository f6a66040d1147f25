-- zdm demo: rename orders.customer_email → orders.email on a live 1M-row table.
\set QUIET on
\pset footer off
\timing on
CREATE EXTENSION zdm;

\echo '--- 1. a table with' :rows 'rows (customer_email is NOT NULL, has a default and a CHECK)'
CREATE TABLE orders (
    id             bigint PRIMARY KEY,
    customer_email text   NOT NULL DEFAULT 'unknown@example.com' CHECK (customer_email LIKE '%@%'),
    status         text   NOT NULL DEFAULT 'new',
    pad            text
);
INSERT INTO orders SELECT g, 'customer' || g || '@example.com', 'paid', repeat('x', 40)
  FROM generate_series(1, :rows) g;
VACUUM ANALYZE orders;

\echo '--- 2. expand: add "email", install the sync trigger, queue the background backfill'
SELECT zdm.expand_rename('orders', 'customer_email', 'email') AS migration \gset
\d orders

\echo '--- the current application version keeps writing; the trigger keeps both columns equal'
INSERT INTO orders (id, customer_email) VALUES (:rows + 1, 'old-app@example.com');
SELECT id, customer_email, email FROM orders WHERE id > :rows;

\echo '--- 3. the backfill runs in a background worker; zdm.wait prints its progress'
\echo '---    (the same release: code that reads "email" ships only after this, when next_step says so)'
SELECT backend_type, application_name FROM pg_stat_activity WHERE backend_type LIKE 'zdm%';
SELECT zdm.wait(:migration);
SELECT next_step FROM zdm.status WHERE id = :migration;

\echo '--- the next release: new code writes "email" beside the old code; the trigger keeps both equal'
INSERT INTO orders (id, email)          VALUES (:rows + 2, 'new-app@example.com');
UPDATE orders SET customer_email = 'old-app-2@example.com' WHERE id = 1;
SELECT id, customer_email, email FROM orders WHERE id IN (1, :rows + 2);
SELECT id, phase, job_state, rows_done, percent, rows_per_sec FROM zdm.status;
SELECT count(*) AS batches, round(avg(duration_ms)::numeric, 1) AS avg_batch_ms,
       min(batch_size) AS min_batch, max(batch_size) AS max_batch, round(sum(duration_ms)::numeric / 1000, 2) AS busy_s
  FROM zdm.batches WHERE migration_id = :migration;
SELECT count(*) AS rows_out_of_sync FROM orders WHERE email IS DISTINCT FROM customer_email;

\echo '--- 4. a later release, once no old code runs: contract validates the carried constraints, moves default and NOT NULL, drops the old column'
SELECT zdm.contract(:migration);
\d orders

\echo '--- every step, with its duration and lock wait'
SELECT step, round(duration_ms::numeric, 1) AS ms, round(lock_wait_ms::numeric, 2) AS lock_wait_ms, detail
  FROM zdm.events WHERE migration_id = :migration ORDER BY id;
