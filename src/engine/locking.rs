//! Taking table locks without stalling everyone behind us.
//!
//! A plain `ALTER TABLE` queued behind a long transaction blocks every query
//! that arrives after it. zdm instead asks for the lock with a short
//! `lock_timeout` (`zdm.lock_timeout`), and on timeout rolls back a
//! subtransaction, sleeps with jittered exponential backoff and tries again,
//! up to `zdm.lock_retries` times. Once a lock is held, the DDL that follows
//! in the same transaction does not wait.

use crate::errors::{raise_with_detail, Code};
use crate::guc;
use crate::spi;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

pub struct LockStats {
    pub wait_ms: f64,
    pub attempts: i32,
}

/// Run `f` in a subtransaction. On error the subtransaction is rolled back
/// and the error returned; the outer transaction stays usable.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, CaughtError> {
    unsafe {
        let old_cxt = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_cxt);
        let body = std::panic::AssertUnwindSafe(move || Ok(f()));
        let result = PgTryBuilder::new(body).catch_others(Err).execute();
        match result {
            Ok(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(old_cxt);
                pg_sys::CurrentResourceOwner = old_owner;
                Ok(v)
            }
            Err(e) => {
                pg_sys::MemoryContextSwitchTo(old_cxt);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(old_cxt);
                pg_sys::CurrentResourceOwner = old_owner;
                Err(e)
            }
        }
    }
}

/// Run `f` in a subtransaction that is always rolled back, so that whatever
/// it did — and every lock it took — is gone afterwards. For checks that
/// must not leave the caller holding a lock a worker will need.
pub fn rolled_back(f: impl FnOnce()) -> Result<(), CaughtError> {
    unsafe {
        let old_cxt = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_cxt);
        let body = std::panic::AssertUnwindSafe(move || {
            f();
            Ok(())
        });
        let result = PgTryBuilder::new(body).catch_others(Err).execute();
        pg_sys::MemoryContextSwitchTo(old_cxt);
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        pg_sys::MemoryContextSwitchTo(old_cxt);
        pg_sys::CurrentResourceOwner = old_owner;
        result
    }
}

pub fn error_code(e: &CaughtError) -> PgSqlErrorCode {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.sql_error_code(),
        CaughtError::RustPanic { ereport, .. } => ereport.sql_error_code(),
    }
}

/// The message, with PostgreSQL's detail line when there is one (e.g. which
/// key is duplicated).
pub fn error_message_with_detail(e: &CaughtError) -> String {
    let detail = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.detail().map(str::to_string),
        CaughtError::RustPanic { ereport, .. } => ereport.detail().map(str::to_string),
    };
    match detail {
        Some(d) => format!("{} ({d})", error_message(e)),
        None => error_message(e),
    }
}

pub fn error_message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// Sleep in a way that query cancel and termination still interrupt.
pub fn interruptible_sleep(d: Duration) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
    }
}

fn jitter_fraction() -> f64 {
    // Cheap per-backend pseudo-randomness: good enough to de-synchronise retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let pid = unsafe { pg_sys::MyProcPid } as u32;
    let x = nanos.wrapping_mul(2654435761).wrapping_add(pid.wrapping_mul(40503));
    (x % 1000) as f64 / 1000.0
}

/// Backoff before attempt `n` (1-based): 50 ms doubling, capped at 2 s, with
/// 50–100 % jitter.
fn backoff(attempt: i32) -> Duration {
    let base = (50.0 * 2f64.powi(attempt.saturating_sub(1).min(10))).min(2000.0);
    Duration::from_millis((base * (0.5 + 0.5 * jitter_fraction())) as u64)
}

fn blocking_pids(relid: pg_sys::Oid) -> Vec<i32> {
    spi::one::<Vec<i32>>(
        "SELECT coalesce(array_agg(DISTINCT pid ORDER BY pid), '{}') FROM pg_catalog.pg_locks \
          WHERE locktype = 'relation' AND relation = $1 AND granted AND pid <> pg_catalog.pg_backend_pid()",
        &[relid.into()],
    )
    .unwrap_or_default()
}

/// `LOCK TABLE table IN mode MODE` with timeout, backoff and retries.
pub fn lock_table(relid: pg_sys::Oid, table_sql: &str, mode: &str) -> LockStats {
    let timeout_ms = guc::LOCK_TIMEOUT_MS.get();
    let retries = guc::LOCK_RETRIES.get();
    let started = Instant::now();
    let statement = format!("LOCK TABLE {table_sql} IN {mode} MODE");
    let previous = spi::one::<String>("SELECT pg_catalog.current_setting('lock_timeout')", &[]).unwrap_or_default();
    let mut blockers: Vec<i32> = Vec::new();
    for attempt in 1..=retries + 1 {
        let outcome = in_subtransaction(|| {
            spi::exec(&format!("SET LOCAL lock_timeout = '{timeout_ms}ms'"));
            spi::exec(&statement);
        });
        match outcome {
            Ok(()) => {
                spi::exec_args("SELECT pg_catalog.set_config('lock_timeout', $1, true)", &[previous.as_str().into()]);
                return LockStats { wait_ms: started.elapsed().as_secs_f64() * 1000.0, attempts: attempt };
            }
            Err(e) if error_code(&e) == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
                blockers = blocking_pids(relid);
                if attempt <= retries {
                    interruptible_sleep(backoff(attempt));
                }
            }
            Err(e) => e.rethrow(),
        }
    }
    let pids = blockers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    raise_with_detail(
        Code::ERRCODE_LOCK_NOT_AVAILABLE,
        format!(
            "could not lock table {table_sql} in {mode} mode: {} attempts of {timeout_ms} ms each timed out; blocked by pid(s) {}",
            retries + 1,
            if pids.is_empty() { "unknown".into() } else { pids.clone() }
        ),
        format!("Sessions holding locks on {table_sql}: {}", if pids.is_empty() { "none seen".into() } else { pids.clone() }),
        format!(
            "Find them with SELECT pid, state, xact_start, query FROM pg_stat_activity WHERE pid IN ({}); \
             end or wait for them and call again, or raise zdm.lock_timeout / zdm.lock_retries.",
            if pids.is_empty() { "0".into() } else { pids }
        ),
    )
}
