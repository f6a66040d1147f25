//! What the SQL surface does to an existing migration of any kind —
//! `zdm.backfill_batch`, `zdm.contract`, `zdm.abort`: rights, phase rules and
//! the row lock here, the kind's own work in its `Operation`, run as the
//! migration's owner.

use super::{jobs, operation, Share};
use crate::catalog::{self, Phase};
use crate::errors::{raise, raise_with_detail, Code};
use crate::security;
use std::time::Instant;

/// Batches in the caller's transaction until one updates rows or the
/// backfill is complete; returns the rows updated, 0 meaning complete. (A
/// range whose rows the application already rewrote does not end the call.)
pub fn backfill_batch(id: i64, batch_size: i32) -> i64 {
    // Rights first (no lock taken for anyone else); then the batch runs as
    // the migration's owner, security-restricted, like the worker's.
    let m = catalog::load_for(id, "backfill", false);
    let op = operation(&m.kind);
    if !op.has_backfill() {
        raise_with_detail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {id} is a {} migration and has no backfill", m.kind),
            "Only migrations that add a column (rename, change_type) copy data.",
            "Use zdm.status to see what it is waiting for.",
        );
    }
    let owner = security::resolve_owner(&m.owner_name, id);
    // In a deadlock with the application, the batch is the side cancelled,
    // as a worker's would be.
    super::locking::losing_deadlocks(|| {
        security::as_owner(owner, || loop {
            let out = op.backfill_batch(id, batch_size, Share::CALLER);
            if out.done {
                return 0;
            }
            if out.rows > 0 {
                return out.rows;
            }
        })
    })
}

pub fn contract(id: i64) {
    let m = catalog::load_for(id, "contract", true);
    let op = operation(&m.kind);
    if m.phase == Phase::Contracted && op.has_contract() {
        // A migration tool re-running its contract step.
        pgrx::notice!("zdm migration {id} is already contracted; nothing to do");
        return;
    }
    if !op.has_contract() {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {id} is a {} migration; it has no contract step", m.kind),
            "It finishes by itself; follow it with zdm.wait() or zdm.status.",
        );
    }
    if m.phase.in_flight() {
        m.table_sql(); // a dropped table first: 42P01 with "call zdm.abort"
    }
    m.require_phase("contract");
    let owner = security::resolve_owner(&m.owner_name, id);
    security::as_owner(owner, || op.contract(&m));
}

pub fn abort(id: i64) {
    let started = Instant::now();
    // Rights first, then the job's workers are stopped before abort takes
    // the migration's row and the table: a worker may hold them for minutes
    // (a constraint's VALIDATE holds the row, a rename's index build a lock
    // that conflicts with ACCESS EXCLUSIVE), and abort would wait behind
    // its own job's work, or give up naming zdm's worker.
    let m = catalog::load_for(id, "abort", false);
    let workers = operation(&m.kind).worker_type();
    if m.phase.in_flight() {
        jobs::stop_workers(id, workers);
    }
    let m = catalog::load_for(id, "abort", true);
    if m.phase.in_flight() {
        // The job's row too, then once more: a worker the launcher started
        // meanwhile goes, and the next one finds the row taken until this
        // transaction ends (and the job cancelled once it commits).
        jobs::lock_row(id);
        jobs::stop_workers(id, workers);
    }
    if m.phase == Phase::Aborted {
        pgrx::notice!("zdm migration {id} is already aborted; nothing to do");
        return;
    }
    if !m.phase.in_flight() {
        m.require_phase("abort");
    }
    let op = operation(&m.kind);
    if !m.table_exists() {
        // Dropped (around the guard, or with the guard bypassed): nothing
        // left to undo in the table; close the migration in the catalog.
        jobs::finish_for_migration(id, "cancelled");
        catalog::set_phase(id, Phase::Aborted);
        catalog::log_abort(id, started, None, format!("the table {} no longer exists; migration closed", m.display_table()));
        return;
    }
    // No `migratable_table` check: undoing must work even if the table has
    // since become something zdm would not start on (e.g. FORCE RLS on).
    security::as_owner(m.ddl_role(), || op.abort(&m));
}
