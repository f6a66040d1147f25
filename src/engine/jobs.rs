//! Background jobs: one per migration in `zdm.jobs` (the job id is the
//! migration id). This module owns the job row: queueing, options, state
//! changes, liveness of its worker, and registering a worker process.

use crate::catalog::as_catalog_owner;
use crate::errors::{raise, Code};
use crate::spi;
use pgrx::bgworkers::{BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

/// Options a caller may set; None keeps the current value. For
/// `target_batch_ms`, `max_replica_lag` and `max_rows_per_second`, 0 turns
/// the feature off.
#[derive(Default)]
pub struct Options {
    pub batch_size: Option<i32>,
    pub pause_ms: Option<i32>,
    pub target_batch_ms: Option<i32>,
    pub max_replica_lag: Option<Interval>,
    pub lock_timeout: Option<Interval>,
    pub statement_timeout: Option<Interval>,
    pub run_after: Option<TimestampWithTimeZone>,
    /// maintenance windows; an empty list removes them
    pub windows: Option<Vec<String>>,
    /// processes sharing the backfill
    pub workers: Option<i32>,
    /// a cap on the rows the job's batches write per second, all workers
    /// together (a latency-first job: see `batches::rate_share`)
    pub max_rows_per_second: Option<i32>,
}

impl Options {
    pub fn validate(&self) {
        let bad = |what: &str, hint: &str| -> ! {
            raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, what.to_string(), hint.to_string())
        };
        if matches!(self.batch_size, Some(n) if !(1..=10_000_000).contains(&n)) {
            bad("batch_size must be between 1 and 10000000", "1000 to 10000 rows keeps each transaction short.");
        }
        if matches!(self.pause_ms, Some(n) if n < 0) {
            bad("pause_ms must not be negative", "0 turns the pause between batches off.");
        }
        if matches!(self.target_batch_ms, Some(n) if n < 0) {
            bad("target_batch_ms must not be negative", "0 turns adaptive batch sizing off.");
        }
        if matches!(self.max_rows_per_second, Some(n) if n < 0) {
            bad("max_rows_per_second must not be negative", "0 removes the cap; e.g. 10000 writes at most 10000 rows a second.");
        }
        if let Some(w) = &self.windows {
            super::window::validate(w);
        }
        if matches!(self.workers, Some(n) if !(1..=MAX_JOB_WORKERS).contains(&n)) {
            bad(
                &format!("workers must be between 1 and {MAX_JOB_WORKERS}"),
                "Each worker is a background worker process (max_worker_processes); more than the server's cores rarely helps.",
            );
        }
        for (name, v) in [("lock_timeout", &self.lock_timeout), ("statement_timeout", &self.statement_timeout)] {
            if let Some(i) = v {
                if interval_ms(i) < 1.0 {
                    bad(&format!("{name} must be at least 1 ms"), "Use e.g. '1s'.");
                }
            }
        }
    }
}

/// The most processes one job may run (the CHECK on zdm.jobs.workers).
pub const MAX_JOB_WORKERS: i32 = 32;

pub fn interval_ms(i: &Interval) -> f64 {
    spi::one::<f64>("SELECT extract(epoch FROM $1::interval)::float8 * 1000", &[(*i).into()]).unwrap_or(0.0)
}

const OPTION_ASSIGNMENTS: &str = "batch_size = coalesce($2, batch_size), \
     current_batch_size = coalesce($2, current_batch_size), \
     pause_ms = coalesce($3, pause_ms), \
     target_batch_ms = CASE WHEN $4 IS NULL THEN target_batch_ms WHEN $4 = 0 THEN NULL ELSE $4 END, \
     max_replica_lag = CASE WHEN $5::interval IS NULL THEN max_replica_lag WHEN $5::interval <= '0' THEN NULL ELSE $5::interval END, \
     lock_timeout_ms = coalesce((extract(epoch FROM $6::interval) * 1000)::int, lock_timeout_ms), \
     statement_timeout_ms = coalesce((extract(epoch FROM $7::interval) * 1000)::int, statement_timeout_ms), \
     run_after = coalesce($8, run_after), \
     windows = CASE WHEN $9::text[] IS NULL THEN windows WHEN cardinality($9::text[]) = 0 THEN NULL ELSE $9::text[] END, \
     workers = coalesce($10, workers), \
     max_rows_per_second = CASE WHEN $11 IS NULL THEN max_rows_per_second WHEN $11 = 0 THEN NULL ELSE $11 END";

/// Queue (or re-queue) the migration's job in the caller's transaction. The
/// worker starts its work only once this transaction has committed. Whoever
/// queues it, the work runs as the migration's owner.
pub fn queue(migration: i64, o: &Options) {
    let db = unsafe { pg_sys::MyDatabaseId };
    // The job's lock policy is the caller's settings when it is queued (or
    // queued again: start_backfill, resume); the lock_timeout option
    // overrides it.
    let policy = super::locking::LockPolicy::current();
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.jobs (migration_id, database, created_xid, lock_timeout_ms, lock_retries) \
             VALUES ($1, $2, pg_catalog.pg_current_xact_id(), $3, $4) \
             ON CONFLICT (migration_id) DO UPDATE SET state = 'queued', \
               created_xid = excluded.created_xid, queued_at = clock_timestamp(), \
               lock_timeout_ms = excluded.lock_timeout_ms, lock_retries = excluded.lock_retries, \
               worker_pid = NULL, worker_started_at = NULL, heartbeat_at = NULL, finished_at = NULL, last_error = NULL, throttle_reason = NULL",
            &[migration.into(), db.into(), policy.timeout_ms.into(), policy.retries.into()],
        );
        set_options_row(migration, o);
    });
}

fn set_options_row(migration: i64, o: &Options) {
    spi::exec_args(
        &format!("UPDATE zdm.jobs SET {OPTION_ASSIGNMENTS} WHERE migration_id = $1"),
        &[
            migration.into(),
            o.batch_size.into(),
            o.pause_ms.into(),
            o.target_batch_ms.into(),
            o.max_replica_lag.into(),
            o.lock_timeout.into(),
            o.statement_timeout.into(),
            o.run_after.into(),
            o.windows.as_ref().map(|w| super::window::validate(w)).into(),
            o.workers.into(),
            o.max_rows_per_second.into(),
        ],
    );
}

pub fn set_options(migration: i64, o: &Options) {
    as_catalog_owner(|| set_options_row(migration, o));
}

/// The job's state, if it has a job.
pub fn state(migration: i64) -> Option<String> {
    as_catalog_owner(|| spi::one::<String>("SELECT state FROM zdm.jobs WHERE migration_id = $1", &[migration.into()]))
}

/// Move the job from one of `from` to `to`; returns whether it moved.
pub fn transition(migration: i64, from: &[&str], to: &str) -> bool {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    as_catalog_owner(|| {
        spi::one::<i64>(
            "WITH u AS (UPDATE zdm.jobs SET state = $3, \
                 finished_at = CASE WHEN $3 IN ('completed', 'failed', 'cancelled') THEN clock_timestamp() END \
               WHERE migration_id = $1 AND state = ANY($2) RETURNING 1) SELECT count(*) FROM u",
            &[migration.into(), from.into(), to.into()],
        )
    }) == Some(1)
}

/// Mark a migration's job as finished (contract, abort) if it has one.
pub fn finish_for_migration(id: i64, state: &str) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET state = $2, finished_at = clock_timestamp(), throttle_reason = NULL \
              WHERE migration_id = $1 AND state NOT IN ('completed', 'failed', 'cancelled')",
            &[id.into(), state.into()],
        )
    });
}

/// SQL condition: the job's recorded worker is alive (same pid and start time).
pub const WORKER_ALIVE: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a \
     WHERE a.pid = j.worker_pid AND a.backend_start = j.worker_started_at)";

/// `WORKER_ALIVE` for the job row under another alias.
pub fn worker_alive_of(alias: &str) -> String {
    WORKER_ALIVE.replace("j.worker_", &format!("{alias}.worker_"))
}

/// The job was (re)queued by a transaction that is still in progress: its
/// worker is registered and waits for that transaction to end.
pub fn start_pending(migration: i64) -> bool {
    as_catalog_owner(|| {
        spi::one::<bool>(
            "SELECT pg_catalog.pg_xact_status(created_xid) OPERATOR(pg_catalog.=) 'in progress' FROM zdm.jobs WHERE migration_id = $1",
            &[migration.into()],
        )
    })
    .unwrap_or(false)
}

/// The job's row was (re)queued by this transaction, in a part of it that
/// was not rolled back.
pub fn queued_by_this_transaction(migration: i64) -> bool {
    as_catalog_owner(|| {
        spi::one::<bool>(
            "SELECT created_xid OPERATOR(pg_catalog.=) pg_catalog.pg_current_xact_id_if_assigned() FROM zdm.jobs WHERE migration_id = $1",
            &[migration.into()],
        )
    })
    .unwrap_or(false)
}

pub fn worker_alive(migration: i64) -> bool {
    as_catalog_owner(|| {
        spi::one::<bool>(
            &format!("SELECT {WORKER_ALIVE} FROM zdm.jobs j WHERE j.migration_id = $1"),
            &[migration.into()],
        )
    })
    .unwrap_or(false)
}

/// Stop the job's worker processes (its helpers too) and wait until they
/// are gone: what they were doing rolls back. Only this database's (ids are
/// per database). As the catalog owner: they run as the bootstrap superuser,
/// whom the migration's owner may not signal; the caller's right to act on
/// the migration was checked.
pub fn stop_workers(migration: i64, worker_type: &str) {
    let name = format!("{worker_type} {migration}");
    let query = format!("SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid)) FROM pg_catalog.pg_stat_activity a WHERE {WORKERS_OF_JOB}");
    for _ in 0..300 {
        unsafe { pg_sys::pgstat_clear_snapshot() }; // read pg_stat_activity afresh
        if as_catalog_owner(|| spi::one::<i64>(&query, &[worker_type.into(), name.as_str().into()])).unwrap_or(0) == 0 {
            return;
        }
        super::locking::interruptible_sleep(std::time::Duration::from_millis(100));
    }
}

/// Lock the job's row until this transaction ends (after the migration's:
/// the order every caller takes them in). A worker's claim skips it.
pub fn lock_row(migration: i64) {
    as_catalog_owner(|| spi::exec_args("SELECT 1 FROM zdm.jobs WHERE migration_id = $1 FOR UPDATE", &[migration.into()]));
}

/// The job's worker processes (its helpers too) in this database, as
/// pg_stat_activity rows `a` (`$1` worker type, `$2` its process name).
const WORKERS_OF_JOB: &str = "a.backend_type OPERATOR(pg_catalog.=) $1 \
     AND a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
     AND (a.application_name OPERATOR(pg_catalog.=) $2 \
          OR pg_catalog.starts_with(a.application_name, $2 OPERATOR(pg_catalog.||) ' worker '))";

/// Why the job's worker cannot go on while this transaction lasts, if it
/// cannot: the transaction wrote the job's or the migration's row
/// (`set_options`, `pause`, … before `zdm.wait` in one transaction), holds
/// a lock on the table (or a partition) that blocks the worker's writes
/// (`LOCK`, another migration's expand). (Not "a worker waits for this
/// transaction now": an index build waits for the snapshots of every
/// session, `zdm.wait`'s own polls included, for a moment.)
pub fn held_by_this_transaction(migration: i64) -> Option<String> {
    let (job, row, relid) = as_catalog_owner(|| {
        spi::first_row(
            "SELECT j.xmin, m.xmin, m.relid FROM zdm.migrations m LEFT JOIN zdm.jobs j ON j.migration_id = m.id WHERE m.id = $1",
            &[migration.into()],
            |r| Ok((r.get::<pg_sys::TransactionId>(1)?, r.get::<pg_sys::TransactionId>(2)?, r.get::<pg_sys::Oid>(3)?)),
        )
    })?;
    let relid = relid?;
    // (a subtransaction's xid counts as this transaction's)
    let mine = |x: Option<pg_sys::TransactionId>| x.is_some_and(|x| unsafe { pg_sys::TransactionIdIsCurrentTransactionId(x) });
    if mine(job) || mine(row) {
        return Some(format!("this transaction changed zdm migration {migration} or its job"));
    }
    let held = spi::first_row(
        "SELECT l.mode, l.relation::regclass::text FROM pg_catalog.pg_locks l \
          WHERE l.pid = pg_catalog.pg_backend_pid() AND l.granted AND l.locktype = 'relation' \
            AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
            AND (l.relation = $1 OR l.relation IN (SELECT t.relid FROM pg_catalog.pg_partition_tree($1::oid::regclass) t)) LIMIT 1",
        &[relid.into()],
        |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
    );
    held.map(|(mode, rel)| format!("this transaction holds a {mode} on {rel}, which the worker's writes wait for"))
}

fn kind_of(migration: i64) -> String {
    as_catalog_owner(|| spi::one::<String>("SELECT kind FROM zdm.migrations WHERE id = $1", &[migration.into()]))
        .unwrap_or_default()
}

/// Register a dynamic background worker for `migration`. `extra` is
/// "<database oid> <creator xid or 0>[ <kind> <dsm handle> <length>]" or, for
/// a helper of a parallel backfill, "<database oid> 0 helper <slot> <leader pid>".
pub fn register_worker(migration: i64, kind: &str, extra: &str, notify: bool) -> Result<DynamicBackgroundWorker, String> {
    // The process name says what it does: `zdm backfill 12`, `zdm index 13`,
    // `zdm backfill 12 worker 2`.
    let ty = super::find(kind).map(|op| op.worker_type()).unwrap_or("zdm worker");
    let name = match extra.split_whitespace().collect::<Vec<_>>().as_slice() {
        [_, _, "helper", slot, _] => format!("{ty} {migration} worker {}", slot.parse::<i32>().unwrap_or(0) + 1),
        _ => format!("{ty} {migration}"),
    };
    let mut b = BackgroundWorkerBuilder::new(&name)
        .set_type(ty)
        .set_library("zdm")
        .set_function("zdm_worker_main")
        .set_argument(migration.into_datum())
        .set_extra(extra)
        .enable_spi_access();
    if notify {
        b = b.set_notify_pid(unsafe { pg_sys::MyProcPid });
    }
    b.load_dynamic().map_err(|_| "no free background worker slot".to_string())
}

/// Start a worker for the job now (the launcher resuming it).
pub fn launch_worker(migration: i64) -> Result<DynamicBackgroundWorker, String> {
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    register_worker(migration, &kind_of(migration), &format!("{db} 0"), false)
}

/// Start the job's worker when this transaction commits — never while it
/// is open (see `capacity`). Without a free slot then: a WARNING, and the
/// launcher starts it later.
pub fn launch_after_commit(migration: i64) {
    super::capacity::launch_at_commit(migration, &kind_of(migration), false);
}

/// Start helper `slot` (1 ..) of a parallel backfill led by this process (in
/// a transaction). The handle outlives the transaction: it is allocated in
/// TopMemoryContext.
pub fn launch_helper(migration: i64, slot: i32) -> Result<DynamicBackgroundWorker, String> {
    let (db, leader) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::MyProcPid) };
    let (kind, extra) = (kind_of(migration), format!("{db} 0 helper {slot} {leader}"));
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let r = register_worker(migration, &kind, &extra, false);
        pg_sys::MemoryContextSwitchTo(old);
        r
    }
}

/// Like `launch_after_commit`, for calls whose whole point is starting it
/// (start_backfill, resume): without a free slot at commit, the commit fails
/// with 53000.
pub fn launch_worker_or_raise(migration: i64) {
    super::capacity::launch_at_commit(migration, &kind_of(migration), true);
}

/// Everything the worker needs before a batch, read fresh each time.
pub struct JobRow {
    pub state: String,
    pub worker_pid: Option<i32>,
    /// the migration's owner: all work runs as this role
    pub owner_name: String,
    /// what the caller asked for
    pub configured_batch_size: i32,
    /// what the next batch uses (adaptive sizing, halving after a timeout)
    pub batch_size: i32,
    pub pause_ms: i32,
    pub target_batch_ms: Option<i32>,
    pub max_replica_lag_ms: Option<f64>,
    pub max_rows_per_second: Option<i32>,
    pub lock_timeout_ms: i32,
    pub lock_retries: i32,
    pub statement_timeout_ms: i32,
    pub max_attempts: i32,
    pub wait_for_run_after_ms: f64,
    pub windows: Vec<String>,
    /// processes the job runs (the leader, worker_pid, and its helpers)
    pub workers: i32,
    /// the leader (worker_pid) is alive
    pub worker_alive: bool,
    /// its backend_start (tells it from a later process with the same pid)
    pub worker_started_at: String,
    /// the migration it depends on (`depends_on`), while that one's
    /// backfill has not finished
    pub waits_for: Option<i64>,
}

impl JobRow {
    /// The lock policy its steps run under (`locking::for_job`).
    pub fn lock_policy(&self) -> super::locking::LockPolicy {
        super::locking::LockPolicy { timeout_ms: self.lock_timeout_ms, retries: self.lock_retries, attempts: self.max_attempts }
    }

    /// Not cancelled, failed or completed.
    pub fn active(&self) -> bool {
        matches!(self.state.as_str(), "running" | "queued" | "paused")
    }

    /// Why the job may not work now, if it may not: the one gate every step
    /// of every job passes (a claim, each batch, between build and
    /// validation steps). Paused, `zdm.pause_all`, before `run_after`,
    /// outside its windows, or waiting for the backfill of the migration it
    /// depends on (a rename still filling the column a constraint reads).
    pub fn held(&self) -> Option<String> {
        if self.state == "paused" {
            return Some("paused by zdm.pause()".into());
        }
        if crate::guc::PAUSE_ALL.get() {
            return Some("zdm.pause_all is on".into());
        }
        if self.wait_for_run_after_ms > 0.0 {
            return Some("scheduled: waiting for run_after".into());
        }
        if let Some(dep) = self.waits_for {
            return Some(format!("waiting for the backfill of zdm migration {dep} to complete"));
        }
        super::window::outside(&self.windows)
    }
}

pub fn load_row(migration: i64) -> Option<JobRow> {
    as_catalog_owner(|| {
        spi::first_row(
                &format!("SELECT j.state, j.worker_pid, m.owner_name::text, j.batch_size, coalesce(j.current_batch_size, j.batch_size), \
                        j.pause_ms, j.target_batch_ms, (extract(epoch FROM j.max_replica_lag) * 1000)::float8, \
                        j.lock_timeout_ms, j.statement_timeout_ms, j.max_attempts, \
                        greatest(0, extract(epoch FROM j.run_after - clock_timestamp()) * 1000)::float8, j.windows, \
                        j.workers, {WORKER_ALIVE}, j.worker_started_at::text, \
                        (SELECT d.id FROM zdm.migrations d WHERE d.id = j.depends_on AND d.phase IN ('expanded', 'backfilling')), \
                        j.lock_retries, j.max_rows_per_second \
                   FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id WHERE j.migration_id = $1"),
            &[migration.into()],
            |r| Ok(JobRow {
                state: r.get::<String>(1)?.unwrap_or_default(),
                worker_pid: r.get::<i32>(2)?,
                owner_name: r.get::<String>(3)?.unwrap_or_default(),
                configured_batch_size: r.get::<i32>(4)?.unwrap_or(1000),
                batch_size: r.get::<i32>(5)?.unwrap_or(1000),
                pause_ms: r.get::<i32>(6)?.unwrap_or(0),
                target_batch_ms: r.get::<i32>(7)?,
                max_replica_lag_ms: r.get::<f64>(8)?,
                lock_timeout_ms: r.get::<i32>(9)?.unwrap_or(1000),
                statement_timeout_ms: r.get::<i32>(10)?.unwrap_or(30000),
                max_attempts: r.get::<i32>(11)?.unwrap_or(5),
                wait_for_run_after_ms: r.get::<f64>(12)?.unwrap_or(0.0),
                windows: r.get::<Vec<String>>(13)?.unwrap_or_default(),
                workers: r.get::<i32>(14)?.unwrap_or(1),
                worker_alive: r.get::<bool>(15)?.unwrap_or(false),
                worker_started_at: r.get::<String>(16)?.unwrap_or_default(),
                waits_for: r.get::<i64>(17)?,
                lock_retries: r.get::<i32>(18)?.unwrap_or(10),
                max_rows_per_second: r.get::<i32>(19)?,
            }),
        )
    })
}

pub fn set_current_batch_size(migration: i64, size: i32) {
    as_catalog_owner(|| {
        spi::exec_args("UPDATE zdm.jobs SET current_batch_size = $2 WHERE migration_id = $1", &[migration.into(), size.into()])
    });
}

pub fn set_throttle_reason(migration: i64, reason: Option<&str>) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET throttle_reason = $2, heartbeat_at = clock_timestamp() WHERE migration_id = $1",
            &[migration.into(), reason.into()],
        )
    });
}

/// The job failed with `error`; the migration keeps its phase (resumable)
/// and shows the error; the event log gets `step`.
pub fn fail(migration: i64, step: &str, error: &str) {
    fail_with_code(migration, step, error, None)
}

/// `fail`, with the SQLSTATE of the error that stopped it (shown with the
/// error; the code alone is public, the text may quote row values).
pub fn fail_with_code(migration: i64, step: &str, error: &str, code: Option<PgSqlErrorCode>) {
    let shown = crate::catalog::hide_values(migration, step, error, code.map(|c| c as i32));
    let error = shown.as_str();
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET state = 'failed', last_error = $2, finished_at = clock_timestamp(), throttle_reason = NULL \
              WHERE migration_id = $1 AND state NOT IN ('completed', 'cancelled')",
            &[migration.into(), error.into()],
        )
    });
    crate::catalog::set_last_error(migration, Some(error));
    crate::catalog::log_step(crate::catalog::Step {
        migration,
        step,
        duration_ms: 0.0,
        lock_wait_ms: None,
        lock_attempts: None,
        detail: Some(error.to_string()),
    });
}
