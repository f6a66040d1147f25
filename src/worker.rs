//! The worker: one dynamic background worker process per running job. For a
//! rename it runs the backfill loop below; for a constraint migration it runs
//! `constraints::run`. It connects to the job's database, waits until the transaction that
//! queued the job has committed (and exits if it rolled back), claims the job,
//! then runs one batch per transaction:
//!
//!   read options → honour pause / cancel / pause_all / run_after / replica
//!   lag → run `backfill::step` as the migration's role, under per-batch
//!   lock_timeout and statement_timeout → persist cursor, history, heartbeat.
//!
//! A timed-out batch is retried with half the size, a bounded number of
//! times. Any other error fails the job with the reason in `zdm.status`.
//! SIGTERM uses Postgres' own `die` handler, so even a running batch stops at
//! once and rolls back together with its cursor.

use crate::catalog::as_catalog_owner;
use crate::locking::{error_code, error_message, in_subtransaction};
use crate::{backfill, catalog, guc, jobs, security, spi};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CString;
use std::time::Instant;

unsafe extern "C-unwind" {
    // utils/timeout.h (not in pgrx's bindings)
    fn enable_timeout_after(id: u32, delay_ms: i32);
    fn disable_timeout(id: u32, keep_indicator: bool);
    // Postgres' signal handlers, as raw C functions (pgrx only exposes guarded wrappers).
    fn die(signal: i32);
    fn SignalHandlerForConfigReload(signal: i32);
}
/// `STATEMENT_TIMEOUT` in `enum TimeoutId` (PG 13–17).
const STATEMENT_TIMEOUT: u32 = 3;
/// Smallest batch the adaptive sizing steers to (unless asked for less).
const MIN_ADAPTIVE_BATCH: i32 = 100;
const MAX_ADAPTIVE_BATCH: i32 = 1_000_000;
/// How often the history is trimmed to `zdm.batch_history` rows.
const PRUNE_EVERY: i64 = 100;

thread_local! {
    /// Time waited since the last batch, and why: recorded with the next batch.
    static PENDING_WAIT: RefCell<(f64, Option<String>)> = const { RefCell::new((0.0, None)) };
}

/// SIGTERM → `die` (interrupts a running statement; the process exits at the
/// next CHECK_FOR_INTERRUPTS); SIGHUP → flag a configuration reload.
pub fn install_signal_handlers() {
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

pub fn reload_config_if_asked() {
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// One transaction. An ERROR inside is caught, the transaction aborted, and
/// the message returned; FATAL (SIGTERM) still ends the process.
pub fn transaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let body = std::panic::AssertUnwindSafe(move || Ok(f()));
    match PgTryBuilder::new(body).catch_others(|e: CaughtError| Err(error_message(&e))).execute() {
        Ok(v) => {
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Ok(v)
        }
        Err(e) => {
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(e)
        }
    }
}

/// Sleep on the latch; SIGTERM wakes it and exits through CHECK_FOR_INTERRUPTS.
pub fn sleep_ms(ms: f64) {
    crate::locking::interruptible_sleep(std::time::Duration::from_millis(ms.max(1.0) as u64));
}

pub fn set_activity(text: &str) {
    let c = CString::new(text).unwrap_or_default();
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
}

pub fn set_application_name(name: &str) {
    let (k, v) = (c"application_name", CString::new(name).unwrap_or_default());
    unsafe {
        pg_sys::SetConfigOption(k.as_ptr(), v.as_ptr(), pg_sys::GucContext::PGC_USERSET, pg_sys::GucSource::PGC_S_SESSION)
    };
}

fn with_statement_timeout<R>(ms: i32, f: impl FnOnce() -> R) -> R {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            unsafe { disable_timeout(STATEMENT_TIMEOUT, false) };
        }
    }
    unsafe { enable_timeout_after(STATEMENT_TIMEOUT, ms) };
    let _disarm = Disarm;
    f()
}

/// Entry point of every zdm worker process. `extra` is "<database oid>
/// <creator xid or 0>[ <dsm handle> <length>]": a creator xid means "start
/// once that transaction commits"; a DSM segment carries a constraint request
/// from a caller in autocommit mode, which the worker records itself.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn zdm_worker_main(arg: pg_sys::Datum) {
    let migration = arg.value() as i64;
    install_signal_handlers();
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split_whitespace();
    let db: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let creator_xid = parts.next().unwrap_or("0").to_string();
    let handoff: Option<(u32, usize)> = match (parts.next(), parts.next()) {
        (Some(h), Some(l)) => h.parse().ok().zip(l.parse().ok()),
        _ => None,
    };
    // Connected as the bootstrap superuser, for zdm's own catalog only: every
    // piece of user-visible work switches to the migration's owner
    // (`security::as_owner`), and zdm's SQL never resolves a name through a
    // search_path someone else chose (ALTER DATABASE … SET included).
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    security::pin_session_search_path();
    let name = BackgroundWorker::get_name().to_string();
    set_application_name(&name);

    if let Some((handle, len)) = handoff {
        let Some(request) = read_request(handle, len) else { return };
        if let Err(e) = transaction(|| crate::constraints::record(&request, true)) {
            pgrx::log!("{name}: could not record the request: {e}");
            return;
        }
    }
    if creator_xid != "0" && !wait_for_creator(&name, &creator_xid) {
        return; // the transaction that queued the job rolled back: nothing to do
    }
    loop {
        set_activity(&format!("{name}: claiming job"));
        match transaction(|| claim(migration)) {
            Ok(Claim::Mine) => break,
            Ok(Claim::Gone) => return,
            Ok(Claim::Wait) => sleep_ms(1000.0),
            Err(e) => {
                pgrx::log!("{name}: could not claim job: {e}");
                return;
            }
        }
    }
    let kind = match transaction(|| catalog::load(migration, false).map(|m| m.kind)) {
        Ok(Some(kind)) => kind,
        Ok(None) => return,
        Err(e) => {
            pgrx::log!("{name}: could not read migration {migration}: {e}");
            return; // the launcher (or a later call) tries again
        }
    };
    match kind.as_str() {
        "rename" => {}
        "create_index" | "drop_index" => return crate::index::run(migration),
        _ => return crate::constraints::run(migration),
    }
    // Whom the work runs as: the owner's name resolved now, checked again
    // before every batch.
    let owner = match transaction(|| {
        let job = jobs::load_row(migration)?;
        Some((security::resolve_owner(&job.owner_name, migration), job.owner_name))
    }) {
        Ok(Some(owner)) => owner,
        Ok(None) => return,
        Err(e) => {
            let _ = transaction(|| fail_job(migration, &e));
            return;
        }
    };
    let mut batches: i64 = 0;
    loop {
        reload_config_if_asked();
        set_activity(&format!("{name}: batch {}", batches + 1));
        let next = transaction(|| one_batch(migration, &owner)).unwrap_or_else(|e| {
            // An error outside the batch itself (catalog, options): record it.
            let _ = transaction(|| fail_job(migration, &e));
            Next::Stop
        });
        match next {
            Next::Continue { pause_ms } => {
                batches += 1;
                if batches % PRUNE_EVERY == 0 {
                    let _ = transaction(|| prune_history(migration));
                }
                if pause_ms > 0 {
                    note_wait(pause_ms as f64, None);
                    set_activity(&format!("{name}: pause_ms between batches"));
                    sleep_ms(pause_ms as f64);
                }
            }
            Next::Wait { ms, reason } => {
                set_activity(&format!("{name}: waiting: {reason}"));
                let _ = transaction(|| set_throttle_reason(migration, Some(&reason)));
                note_wait(ms, Some(reason));
                sleep_ms(ms);
            }
            Next::Stop => return,
            Next::Done => {
                set_activity(&format!("{name}: building indexes"));
                match crate::index::build_carried(migration, owner.0) {
                    Ok(true) => {
                        let _ = transaction(|| jobs::transition(migration, &["running", "queued", "paused"], "completed"));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let _ = transaction(|| fail_job(migration, &e));
                    }
                }
                return;
            }
        }
    }
}

/// Copy a constraint request out of the caller's DSM segment.
fn read_request(handle: u32, len: usize) -> Option<crate::constraints::Request> {
    unsafe {
        let seg = pg_sys::dsm_attach(handle);
        if seg.is_null() {
            return None; // the caller gave up before we started
        }
        let bytes = std::slice::from_raw_parts(pg_sys::dsm_segment_address(seg) as *const u8, len).to_vec();
        pg_sys::dsm_detach(seg);
        serde_json::from_slice(&bytes).ok()
    }
}

/// Wait until the transaction that queued the job ends. True if it committed.
fn wait_for_creator(name: &str, xid: &str) -> bool {
    set_activity(&format!("{name}: waiting for the transaction that queued it to commit"));
    loop {
        let status = transaction(|| {
            spi::one::<String>("SELECT pg_catalog.pg_xact_status($1::text::xid8)", &[xid.into()])
        });
        match status {
            Ok(Some(s)) if s == "in progress" => sleep_ms(50.0),
            Ok(Some(s)) if s == "aborted" => return false,
            _ => return true,
        }
    }
}

enum Claim {
    Mine,
    Wait,
    Gone,
}

/// Take ownership of the job, unless another live worker has it, the job is
/// over, or the limits say wait (zdm.max_workers, one backfill per table).
/// The job row is locked FOR UPDATE SKIP LOCKED (a second claimant waits
/// instead of queueing), and `zdm.claim_lock` serialises the counting; no
/// role but zdm's owner can lock either.
fn claim(migration: i64) -> Claim {
    as_catalog_owner(|| {
        let mine = spi::one::<i64>(
            "SELECT migration_id FROM zdm.jobs WHERE migration_id = $1 FOR UPDATE SKIP LOCKED",
            &[migration.into()],
        );
        if mine.is_none() {
            let exists = spi::one::<i64>("SELECT migration_id FROM zdm.jobs WHERE migration_id = $1", &[migration.into()]);
            return if exists.is_some() { Claim::Wait } else { Claim::Gone };
        }
        spi::exec("SELECT one FROM zdm.claim_lock FOR UPDATE");
        let row = spi::first_row(
            &format!(
                "SELECT j.state, (j.worker_pid <> pg_catalog.pg_backend_pid() AND {alive}), m.relid::oid \
                   FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id WHERE j.migration_id = $1",
                alive = jobs::WORKER_ALIVE
            ),
            &[migration.into()],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<bool>(2)?.unwrap_or(false),
                    r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                ))
            },
        );
        let Some((state, taken, relid)) = row else { return Claim::Gone };
        if taken || !matches!(state.as_str(), "queued" | "running" | "paused") {
            return Claim::Gone;
        }
        // Mark this process as the job's worker even while it waits, so the
        // launcher does not start a second one.
        spi::exec_args(
            "UPDATE zdm.jobs SET worker_pid = pg_catalog.pg_backend_pid(), \
               worker_started_at = (SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()), \
               heartbeat_at = clock_timestamp() WHERE migration_id = $1",
            &[migration.into()],
        );
        let busy = spi::one::<i64>(
            &format!(
                "SELECT count(*) FROM zdm.jobs j WHERE j.migration_id <> $1 AND j.state IN ('running', 'paused') AND {}",
                jobs::WORKER_ALIVE
            ),
            &[migration.into()],
        )
        .unwrap_or(0);
        let max = guc::MAX_WORKERS.get() as i64;
        if busy >= max {
            set_throttle_reason(migration, Some(&format!("waiting for a free zdm worker (zdm.max_workers = {max})")));
            return Claim::Wait;
        }
        // One backfill per table (constraint jobs do not count: one may be
        // waiting for this very backfill).
        let same_table = spi::one::<i64>(
            &format!(
                "SELECT min(j.migration_id) FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id \
                  WHERE m.relid = $2::oid::regclass AND m.kind = 'rename' AND j.migration_id <> $1 \
                    AND j.state IN ('running', 'paused') AND {} \
                    AND (SELECT kind FROM zdm.migrations WHERE id = $1) = 'rename'",
                jobs::WORKER_ALIVE
            ),
            &[migration.into(), relid.into()],
        );
        if let Some(other) = same_table {
            set_throttle_reason(migration, Some(&format!("waiting for the backfill of migration {other} on the same table")));
            return Claim::Wait;
        }
        spi::exec_args(
            "UPDATE zdm.jobs SET state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
               started_at = coalesce(started_at, clock_timestamp()), throttle_reason = NULL, \
               current_batch_size = coalesce(current_batch_size, batch_size) WHERE migration_id = $1",
            &[migration.into()],
        );
        Claim::Mine
    })
}

enum Next {
    Continue { pause_ms: i32 },
    /// The rows are backfilled: build the carried indexes, then complete.
    Done,
    Wait { ms: f64, reason: String },
    Stop,
}

fn wait(ms: f64, reason: String) -> Next {
    Next::Wait { ms, reason }
}

fn one_batch(migration: i64, owner: &(pg_sys::Oid, String)) -> Next {
    let Some(job) = jobs::load_row(migration) else { return Next::Stop };
    security::check_owner_unchanged(owner.0, &owner.1, migration);
    if job.worker_pid != Some(unsafe { pg_sys::MyProcPid }) {
        return Next::Stop; // another worker took the job over
    }
    match job.state.as_str() {
        "running" | "queued" => {}
        "paused" => return wait(1000.0, "paused by zdm.pause()".into()),
        _ => return Next::Stop, // cancelled, completed, failed
    }
    if guc::PAUSE_ALL.get() {
        return wait(1000.0, "zdm.pause_all is on".into());
    }
    if job.wait_for_run_after_ms > 0.0 {
        return wait(job.wait_for_run_after_ms.min(1000.0), "scheduled: waiting for run_after".into());
    }
    if let Some(max_lag) = job.max_replica_lag_ms {
        let lag = spi::one::<f64>(
            "SELECT coalesce(max(extract(epoch FROM replay_lag)) * 1000, 0)::float8 FROM pg_catalog.pg_stat_replication",
            &[],
        )
        .unwrap_or(0.0);
        if lag > max_lag {
            return wait(
                1000.0,
                format!("replica replay lag {:.1}s exceeds max_replica_lag {:.1}s", lag / 1000.0, max_lag / 1000.0),
            );
        }
    }
    let mut size = job.batch_size;
    let mut last_error = String::new();
    for attempt in 1..=job.max_attempts {
        let started = Instant::now();
        let outcome = in_subtransaction(|| {
            // lock_timeout applies to the batch only (rolled back with
            // as_owner's nest level): zdm's own catalog writes after it wait
            // for a caller holding the job row instead of failing the job.
            security::as_owner(owner.0, || {
                spi::exec(&format!("SET LOCAL lock_timeout = '{}ms'", job.lock_timeout_ms));
                with_statement_timeout(job.statement_timeout_ms, || backfill::step(migration, size))
            })
        });
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        match outcome {
            Ok(out) => {
                record_batch(migration, out.rows, out.blocks, size, took_ms);
                let next = next_batch_size(size, job.configured_batch_size, job.target_batch_ms, took_ms);
                spi::exec_args(
                    "UPDATE zdm.jobs SET heartbeat_at = clock_timestamp(), current_batch_size = $2, throttle_reason = NULL \
                      WHERE migration_id = $1",
                    &[migration.into(), next.into()],
                );
                if out.done {
                    return Next::Done;
                }
                return Next::Continue { pause_ms: job.pause_ms };
            }
            Err(e) if is_retryable(error_code(&e)) => {
                last_error = error_message(&e);
                size = (size / 2).max(1);
                set_throttle_reason(
                    migration,
                    Some(&format!("batch attempt {attempt} failed ({last_error}); retrying with batch size {size}")),
                );
                spi::exec_args(
                    "UPDATE zdm.jobs SET current_batch_size = $2 WHERE migration_id = $1",
                    &[migration.into(), size.into()],
                );
            }
            Err(e) => {
                fail_job(migration, &error_message(&e));
                return Next::Stop;
            }
        }
    }
    fail_job(migration, &format!("gave up after {} attempts: {last_error}", job.max_attempts));
    Next::Stop
}

/// Lock and statement timeouts, deadlocks and serialization failures: worth
/// another try with a smaller batch.
fn is_retryable(code: PgSqlErrorCode) -> bool {
    matches!(
        code,
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
            | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
            | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
    )
}

/// Adaptive sizing toward `target_batch_ms`: grow at most ×1.2 per batch,
/// shrink in proportion, clamp. Without a target, a size halved by a timeout
/// grows back toward the configured one.
pub fn next_batch_size(current: i32, configured: i32, target_ms: Option<i32>, took_ms: f64) -> i32 {
    let current = current.max(1) as f64;
    match target_ms {
        Some(target) => {
            let ratio = target as f64 / took_ms.max(0.1);
            let next = if ratio >= 1.0 { current * ratio.min(1.2) } else { current * ratio };
            let min = MIN_ADAPTIVE_BATCH.min(configured).max(1) as f64;
            next.clamp(min, MAX_ADAPTIVE_BATCH as f64).round() as i32
        }
        None => (current * 1.2).min(configured as f64).max(1.0).round() as i32,
    }
}

fn note_wait(ms: f64, reason: Option<String>) {
    PENDING_WAIT.with(|w| {
        let mut w = w.borrow_mut();
        w.0 += ms;
        if reason.is_some() {
            w.1 = reason;
        }
    });
}

fn record_batch(migration: i64, rows: i64, blocks: i64, size: i32, took_ms: f64) {
    let (wait_ms, reason) = PENDING_WAIT.with(|w| std::mem::take(&mut *w.borrow_mut()));
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.batches (migration_id, rows, blocks, batch_size, duration_ms, wait_ms, wait_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[migration.into(), rows.into(), blocks.into(), size.into(), took_ms.into(), wait_ms.into(), reason.into()],
        )
    });
}

fn prune_history(migration: i64) {
    as_catalog_owner(|| {
        spi::exec_args(
            "DELETE FROM zdm.batches WHERE migration_id = $1 AND id <= \
               (SELECT id FROM zdm.batches WHERE migration_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            &[migration.into(), (guc::BATCH_HISTORY.get() as i64).into()],
        )
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

fn fail_job(migration: i64, error: &str) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET state = 'failed', last_error = $2, finished_at = clock_timestamp(), throttle_reason = NULL \
              WHERE migration_id = $1 AND state NOT IN ('completed', 'cancelled')",
            &[migration.into(), error.into()],
        )
    });
    catalog::set_last_error(migration, Some(error));
    catalog::log_step(catalog::Step {
        migration,
        step: "backfill failed",
        duration_ms: 0.0,
        lock_wait_ms: None,
        lock_attempts: None,
        detail: Some(error.to_string()),
    });
}

#[cfg(test)]
mod tests {
    use super::next_batch_size;

    #[test]
    fn adaptive_size_grows_at_most_20_percent_and_shrinks_proportionally() {
        assert_eq!(next_batch_size(1000, 1000, Some(250), 50.0), 1200);
        assert_eq!(next_batch_size(1000, 1000, Some(250), 500.0), 500);
        assert_eq!(next_batch_size(150, 1000, Some(250), 10_000.0), 100);
        assert_eq!(next_batch_size(10, 10, Some(250), 10_000.0), 10);
    }

    #[test]
    fn without_target_a_halved_size_recovers_to_the_configured_one() {
        assert_eq!(next_batch_size(500, 1000, None, 1.0), 600);
        assert_eq!(next_batch_size(900, 1000, None, 1.0), 1000);
    }
}
