//! Concurrent index builds and drops, run by a worker at top level through
//! `toplevel` (they cannot run inside a transaction), one at a time.
//!
//! A build that fails leaves an INVALID index behind; it is dropped
//! (concurrently) before the next attempt and after the last one, so none
//! stays. A retryable error (`locking::retryable`) is tried again after
//! `locking::retry_pause`, up to the job's `max_attempts`; an error of the data
//! (a duplicate key for a unique index) or of the definition is final. Each
//! lock wait of a build is bounded by the job's lock timeout.
//! Pause and cancel take effect between attempts.

use super::locking::{self, LockPolicy};
use crate::errors::{code_of, message_with_detail};
use super::process::{sleep_ms, transaction};
use super::{gate, index_tree, jobs, toplevel, IndexTask};
use crate::catalog::{self, Step};
use crate::spi::{self, ident};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::time::Instant;

/// How an index task ended.
pub enum Outcome {
    Done,
    /// the job was cancelled (or is over) between attempts
    Stopped,
    Failed(PgSqlErrorCode, String),
}

/// None: no such index; Some(valid).
fn index_state(t: &IndexTask) -> Option<bool> {
    spi::one::<bool>(
        "SELECT i.indisvalid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid WHERE c.relname = $1 AND n.nspname = $2",
        &[t.index.as_str().into(), t.schema.as_str().into()],
    )
}

fn index_sql(t: &IndexTask) -> String {
    spi::qualified(&t.schema, &t.index)
}

/// A build's lock waits include waiting for older snapshots to go: at least
/// zdm.lock_timeout, whatever shorter timeout the job keeps its batches to.
fn build_timeout_ms() -> i32 {
    LockPolicy::current().timeout_ms.max(crate::guc::LOCK_TIMEOUT_MS.get())
}

fn drop_concurrently(t: &IndexTask, owner: pg_sys::Oid) -> Result<(), CaughtError> {
    toplevel::run(&format!("DROP INDEX CONCURRENTLY IF EXISTS {}", index_sql(t)), owner, &t.search_path, build_timeout_ms(), |_| {})
}

fn build_concurrently(t: &IndexTask, owner: pg_sys::Oid) -> Result<(), CaughtError> {
    toplevel::run(&t.definition, owner, &t.search_path, build_timeout_ms(), |node| unsafe {
        if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_IndexStmt {
            (*(node as *mut pg_sys::IndexStmt)).concurrent = true;
        }
    })
}

/// PostgreSQL cannot drop a partitioned index concurrently: one brief ACCESS
/// EXCLUSIVE on the tree (catalog only), bounded by the lock timeout.
fn drop_partitioned(t: &IndexTask, owner: pg_sys::Oid) -> Result<(), CaughtError> {
    toplevel::run(&format!("DROP INDEX IF EXISTS {}", index_sql(t)), owner, &t.search_path, build_timeout_ms(), |_| {})
}

/// A step of an index task in zdm.events, in its own transaction.
pub(super) fn log(id: i64, step: &str, started: Instant, detail: String) {
    let _ = transaction(|| {
        catalog::log_step(Step {
            migration: id,
            step,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            lock_wait_ms: None,
            lock_attempts: None,
            detail: Some(detail),
        })
    });
}

/// Attempts at one task, as `owner`, until it succeeds, fails for good, or
/// the job is cancelled.
pub fn run(id: i64, t: &IndexTask, owner: pg_sys::Oid) -> Outcome {
    let mut last_error = String::new();
    let verb = if t.drop { "drop index" } else { "create index" };
    let attempts = LockPolicy::current().attempts.max(1);
    for attempt in 1..=attempts {
        if !gate::open(id) {
            return Outcome::Stopped;
        }
        let state = match transaction(|| index_state(t)) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, e),
        };
        let started = Instant::now();
        let partitioned = transaction(|| crate::tree::is_partitioned(t.relid)).unwrap_or(false);
        let mut partition = None;
        let outcome = match (t.drop, state) {
            (false, Some(true)) | (true, None) => Ok(()),
            // A partitioned table: ON ONLY, a build per leaf, ATTACH
            // (index_tree), resuming where an earlier attempt stopped.
            (false, _) if partitioned => index_tree::build(id, t, owner, build_timeout_ms()).map_err(|f| {
                partition = f.partition;
                f.error
            }),
            (false, Some(false)) => {
                // Left INVALID by an earlier failed or cancelled build.
                let dropped = drop_concurrently(t, owner);
                log(id, "dropped invalid index", started, index_sql(t));
                dropped.and_then(|_| build_concurrently(t, owner))
            }
            (false, None) => build_concurrently(t, owner),
            (true, Some(_)) if partitioned => drop_partitioned(t, owner),
            (true, Some(_)) => drop_concurrently(t, owner),
        };
        match outcome {
            Ok(()) => {
                let done = if t.drop { "dropped" } else { "built" };
                log(id, &format!("index {done}"), started, format!("{} ({done} concurrently, attempt {attempt})", index_sql(t)));
                return Outcome::Done;
            }
            Err(e) => {
                let code = code_of(&e);
                last_error = match &partition {
                    Some(leaf) => format!("on partition {leaf}: {}", message_with_detail(&e)),
                    None => message_with_detail(&e),
                };
                let shown = transaction(|| {
                    catalog::hide_values(id, &format!("index {} attempt {attempt} failed", ident(&t.index)), &last_error, Some(code as i32))
                })
                .unwrap_or_default();
                log(id, "attempt failed", started, format!("{}: {shown}", index_sql(t)));
                let retry = locking::retryable(code);
                if !t.drop && !partitioned {
                    // Never leave an INVALID index behind.
                    let _ = drop_concurrently(t, owner);
                } else if !t.drop && !retry {
                    // A tree keeps what was built for the next attempt (its
                    // failed leaf's INVALID index is gone already), unless
                    // there is none.
                    let _ = index_tree::remove(t, owner, build_timeout_ms());
                }
                if !retry {
                    return Outcome::Failed(code, format!("{verb} {} failed: {last_error}", ident(&t.index)));
                }
                let reason = format!("{shown}; retrying");
                let _ = transaction(|| jobs::set_throttle_reason(id, Some(&reason)));
                sleep_ms(locking::retry_pause(attempt as i32).as_secs_f64() * 1000.0);
            }
        }
    }
    Outcome::Failed(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("{verb} {} gave up after {attempts} attempts: {last_error}", ident(&t.index)),
    )
}
