//! Shared capacity: background-worker slots and `zdm.max_workers`, and what
//! one role can hold of them.
//!
//! * A zdm call never holds a worker slot while its transaction is open: the
//!   worker is registered when the transaction commits (`launch_at_commit`),
//!   not when the call runs. A call in a transaction kept open holds nothing.
//! * Only a job that works counts toward `zdm.max_workers`: a job parked —
//!   paused, before its `run_after`, outside its windows, under
//!   `zdm.pause_all` — is marked `parked` and does not count. Leaving a
//!   hold takes capacity again (`take`), like a first claim.
//! * One role's working jobs are at most `zdm.max_workers_per_role` (by
//!   default `zdm.max_workers` − 1, at least 1), so another role always
//!   finds a worker.
//! * Where a launcher serves the database, a worker that has to wait — for
//!   capacity, or parked — exits and gives its slot back; the launcher
//!   starts the job again when it can run. Without a launcher the worker
//!   waits in place (nothing else would start it), parked and uncounted.

use super::jobs;
use crate::catalog::as_catalog_owner;
use crate::errors::{raise, Code};
use crate::{guc, spi};
use pgrx::prelude::*;
use pgrx::PgXactCallbackEvent;
use std::cell::RefCell;

thread_local! {
    /// Jobs queued in this transaction whose worker starts at commit:
    /// (migration, kind, whether failing to start fails the commit).
    static AT_COMMIT: RefCell<Vec<(i64, String, bool)>> = const { RefCell::new(Vec::new()) };
}

/// Start the job's worker when this transaction commits (it waits for the
/// commit to complete, and does nothing if the job's row is gone).
/// `required`: no free worker slot at commit fails the commit with 53000
/// (`start_backfill`, `resume`: starting is all they do); otherwise a
/// WARNING, and the launcher starts the job when a slot frees up.
pub fn launch_at_commit(migration: i64, kind: &str, required: bool) {
    let first = AT_COMMIT.with(|l| {
        let mut l = l.borrow_mut();
        let first = l.is_empty();
        match l.iter_mut().find(|(m, _, _)| *m == migration) {
            Some(entry) => entry.2 |= required,
            None => l.push((migration, kind.to_string(), required)),
        }
        first
    });
    if first {
        pgrx::register_xact_callback(PgXactCallbackEvent::PreCommit, launch_pending);
        pgrx::register_xact_callback(PgXactCallbackEvent::Abort, forget_pending);
        // A prepared transaction commits later, elsewhere: the launcher
        // starts its jobs.
        pgrx::register_xact_callback(PgXactCallbackEvent::PrePrepare, forget_pending);
    }
}

fn forget_pending() {
    AT_COMMIT.with(|l| l.borrow_mut().clear());
}

fn launch_pending() {
    let pending = AT_COMMIT.with(|l| std::mem::take(&mut *l.borrow_mut()));
    let (db, xid) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::GetTopFullTransactionIdIfAny().value) };
    for (id, kind, required) in pending {
        if let Err(e) = jobs::register_worker(id, &kind, &format!("{db} {xid}"), false) {
            // (a start_backfill in a subtransaction rolled back queued
            // nothing). Before commit no statement's snapshot is active: the
            // look-up takes the transaction's, as deferred triggers do here.
            let queued = required && unsafe {
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
                let mine = jobs::queued_by_this_transaction(id);
                pg_sys::PopActiveSnapshot();
                mine
            };
            if queued {
                raise(
                    Code::ERRCODE_INSUFFICIENT_RESOURCES,
                    format!("could not start a background worker for zdm migration {id}: {e}"),
                    "Raise max_worker_processes (needs a restart) or wait for other background workers to finish, then call zdm.start_backfill again.",
                );
            }
            pgrx::warning!("zdm migration {id}: queued but no worker started ({e}); the zdm launcher will start it, or call zdm.start_backfill({id})");
        }
    }
}

/// The most working jobs one role may have: `zdm.max_workers_per_role`, or
/// by default `zdm.max_workers` − 1 (at least 1).
pub fn per_role_limit() -> i64 {
    let max = guc::MAX_WORKERS.get() as i64;
    match guc::MAX_WORKERS_PER_ROLE.get() as i64 {
        0 => (max - 1).max(1),
        n => n.min(max),
    }
}

/// SQL condition on a pg_stat_activity row: a zdm worker (a job's process,
/// not a launcher nor the supervisor).
macro_rules! zdm_worker_sql {
    () => {
        "backend_type LIKE 'zdm %' AND backend_type NOT IN ('zdm launcher', 'zdm supervisor')"
    };
}
pub const IS_ZDM_WORKER: &str = zdm_worker_sql!();

/// SQL for how many zdm workers run in the other databases of the cluster
/// (`zdm.max_workers` bounds them all together).
pub const OTHER_DATABASES_WORKERS: &str = concat!(
    "(SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE ",
    zdm_worker_sql!(),
    " AND datname IS DISTINCT FROM pg_catalog.current_database())"
);

/// SQL condition on `j` (zdm.jobs) joined to `m` (zdm.migrations): the job
/// works now and counts toward the limits.
pub const WORKING: &str = "j.state IN ('running', 'paused') AND NOT j.parked";

/// Why the job may not work now (the caller holds its row and
/// zdm.claim_lock): None when it may. Counts every other working job with a
/// live worker, overall and of the same owner.
pub fn refusal(migration: i64) -> Option<String> {
    let (busy, mine) = spi::first_row(
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE m.owner_name = (SELECT owner_name FROM zdm.migrations WHERE id = $1)) \
               FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id \
              WHERE j.migration_id <> $1 AND {WORKING} AND {}",
            jobs::WORKER_ALIVE
        ),
        &[migration.into()],
        |r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0))),
    )
    .unwrap_or((0, 0));
    let busy = busy + spi::one::<i64>(&format!("SELECT {OTHER_DATABASES_WORKERS}"), &[]).unwrap_or(0);
    let max = guc::MAX_WORKERS.get() as i64;
    if busy >= max {
        return Some(format!("waiting for a free zdm worker (zdm.max_workers = {max})"));
    }
    let per_role = per_role_limit();
    if mine >= per_role {
        return Some(format!("waiting: its owner already runs {mine} zdm job(s) (zdm.max_workers_per_role = {per_role})"));
    }
    None
}

/// Mark the job parked (it holds no share of zdm.max_workers) with `reason`.
pub fn park(migration: i64, reason: &str) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET parked = true, throttle_reason = $2, heartbeat_at = clock_timestamp() WHERE migration_id = $1",
            &[migration.into(), reason.into()],
        )
    });
}

/// Take a share of zdm.max_workers again after a hold: None when taken
/// (the job counts as working), else why it must wait.
pub fn take(migration: i64) -> Option<String> {
    as_catalog_owner(|| {
        // The job's row, then zdm.claim_lock: the order claim takes them in.
        spi::exec_args("SELECT 1 FROM zdm.jobs WHERE migration_id = $1 FOR UPDATE", &[migration.into()]);
        spi::exec("SELECT one FROM zdm.claim_lock FOR UPDATE");
        if let Some(reason) = refusal(migration) {
            park(migration, &reason);
            return Some(reason);
        }
        spi::exec_args("UPDATE zdm.jobs SET parked = false, throttle_reason = NULL WHERE migration_id = $1", &[migration.into()]);
        None
    })
}

/// A zdm launcher serves this database: it will start a job that can run.
pub fn launcher_serves_here() -> bool {
    spi::one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.backend_type = 'zdm launcher' \
                           AND a.datname = pg_catalog.current_database())",
        &[],
    )
    .unwrap_or(false)
}
