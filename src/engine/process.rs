//! The worker process's own plumbing: signals, configuration reloads, one
//! transaction at a time, sleeping on the latch, what pg_stat_activity shows.

use crate::errors::message_of;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::ffi::CString;

unsafe extern "C-unwind" {
    // utils/timeout.h (not in pgrx's bindings)
    fn enable_timeout_after(id: u32, delay_ms: i32);
    fn disable_timeout(id: u32, keep_indicator: bool);
    // Postgres' signal handlers, as raw C functions (pgrx only exposes guarded wrappers).
    fn die(signal: i32);
    fn SignalHandlerForConfigReload(signal: i32);
}
/// `STATEMENT_TIMEOUT` in `enum TimeoutId` (PG 13–18).
const STATEMENT_TIMEOUT: u32 = 3;

/// SIGTERM → `die` (interrupts a running statement; the process exits at the
/// next CHECK_FOR_INTERRUPTS); SIGHUP → flag a configuration reload.
pub fn install_signal_handlers() {
    unsafe {
        crate::compat::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        crate::compat::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

pub fn reload_config_if_asked() {
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            super::locking::lose_deadlocks();
        }
    }
}

/// One transaction. An ERROR inside is caught, the transaction aborted, and
/// the message returned; FATAL (SIGTERM) still ends the process.
pub fn transaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    caught_transaction(f).map_err(|e| message_of(&e))
}

/// `transaction`, returning the caught error itself (its SQLSTATE decides
/// whether it is retried).
pub fn caught_transaction<R>(f: impl FnOnce() -> R) -> Result<R, CaughtError> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let body = std::panic::AssertUnwindSafe(move || Ok(f()));
    match PgTryBuilder::new(body).catch_others(Err).execute() {
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

/// This transaction's commit does not wait for its WAL to reach the disk
/// (`synchronous_commit = off` until it ends): for bookkeeping a crash may
/// lose (a heartbeat), not for a batch or anything a caller relies on.
pub fn commit_without_waiting() {
    crate::security::set_guc(c"synchronous_commit", c"off", pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// Sleep on the latch; SIGTERM wakes it and exits through CHECK_FOR_INTERRUPTS.
pub fn sleep_ms(ms: f64) {
    super::locking::interruptible_sleep(std::time::Duration::from_millis(ms.max(1.0) as u64));
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

/// Run `f` with Postgres' statement timeout armed for `ms`.
pub fn with_statement_timeout<R>(ms: i32, f: impl FnOnce() -> R) -> R {
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
