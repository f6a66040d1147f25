//! The worker: one dynamic background worker process per running job (plus
//! helpers for a parallel backfill, see `batches`). It
//! connects to the job's database, waits until the transaction that queued
//! the job has committed (and exits if it rolled back), claims the job, then
//! drives it through its operation's steps, each optional:
//!
//!   backfill (`batches`) → index builds (`index_build`) → validate → done
//!
//! SIGTERM uses Postgres' own `die` handler, so even a running batch stops at
//! once and rolls back together with its cursor.

use super::process::{install_signal_handlers, reload_config_if_asked, set_activity, set_application_name, sleep_ms, transaction};
use super::batches::Role;
use super::{batches, capacity, index_build, jobs, BuildState, Operation};
use crate::catalog::{self, as_catalog_owner};
use crate::{security, spi};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

/// Entry point of every zdm worker process. `extra` is "<database oid>
/// <creator xid or 0>[ <kind> <dsm handle> <length>]": a creator xid means
/// "start once that transaction commits"; a DSM segment carries a request
/// from a caller in autocommit mode, which the worker records itself. A
/// helper of a parallel backfill gets "<database oid> 0 helper <slot> <leader pid>".
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn zdm_worker_main(arg: pg_sys::Datum) {
    let migration = arg.value() as i64;
    install_signal_handlers();
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split_whitespace();
    let db: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let creator_xid = parts.next().unwrap_or("0").to_string();
    let (mut handoff, mut helper): (Option<(String, u32, usize)>, Option<Role>) = (None, None);
    match (parts.next(), parts.next(), parts.next()) {
        (Some("helper"), Some(slot), Some(leader)) => {
            helper = slot.parse().ok().zip(leader.parse().ok()).map(|(slot, leader)| Role::Helper { slot, leader })
        }
        (Some(k), Some(h), Some(l)) => handoff = h.parse().ok().zip(l.parse().ok()).map(|(h, l)| (k.to_string(), h, l)),
        _ => {}
    }
    // Connected as the bootstrap superuser, for zdm's own catalog only: every
    // piece of user-visible work switches to the migration's owner
    // (`security::as_owner`), and zdm's SQL never resolves a name through a
    // search_path someone else chose (ALTER DATABASE … SET included).
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    security::pin_session_search_path();
    super::locking::lose_deadlocks();
    let name = BackgroundWorker::get_name().to_string();
    set_application_name(&name);

    if let Some(role) = helper {
        // A helper of a parallel backfill: no claim (the leader holds the
        // job), only batches, until the backfill is complete or the job or
        // its leader stops.
        let found = transaction(|| catalog::load(migration, false).map(|m| super::operation(&m.kind)).zip(jobs::load_row(migration)));
        if let Ok(Some((op, job))) = found {
            super::locking::for_job(job.lock_policy(), || batches::run(migration, op, &name, role));
        }
        return;
    }

    if let Some((kind, handle, len)) = handoff {
        let Some(payload) = read_handoff(handle, len) else { return };
        let recorded = transaction(|| super::operation(&kind).record_handoff(&payload)).and_then(|r| r);
        if let Err(e) = recorded {
            pgrx::log!("{name}: could not record the request: {e}");
            return;
        }
    }
    if creator_xid != "0" && !wait_for_creator(&name, &creator_xid) {
        return; // the transaction that queued the job rolled back: nothing to do
    }
    loop {
        reload_config_if_asked(); // zdm.pause_all, zdm.max_workers
        set_activity(&format!("{name}: claiming job"));
        match transaction(|| claim(migration)) {
            Ok(Claim::Mine) => break,
            Ok(Claim::Gone) => return,
            Ok(Claim::Busy) => sleep_ms(1000.0),
            // Held, or no capacity: where a launcher serves this database it
            // starts the job when it can run; give the slot back meanwhile.
            Ok(Claim::Wait(reason)) => {
                if transaction(capacity::launcher_serves_here).unwrap_or(false) {
                    pgrx::log!("{name}: {reason}; the zdm launcher starts it when it can run");
                    return;
                }
                set_activity(&format!("{name}: {reason}"));
                sleep_ms(1000.0);
            }
            Err(e) => {
                pgrx::log!("{name}: could not claim job: {e}");
                return;
            }
        }
    }
    let op = match transaction(|| catalog::load(migration, false).map(|m| super::operation(&m.kind))) {
        Ok(Some(op)) => op,
        Ok(None) => return,
        Err(e) => {
            pgrx::log!("{name}: could not read migration {migration}: {e}");
            return; // the launcher (or a later call) tries again
        }
    };
    run_steps(migration, op, &name);
}

/// Backfill, builds, validation, done — each step optional, each stopping
/// the job quietly when it was cancelled or recorded a failure.
fn run_steps(migration: i64, op: &dyn Operation, name: &str) {
    // Every lock its steps take waits and retries as the job says.
    let policy = match transaction(|| jobs::load_row(migration).map(|j| j.lock_policy())) {
        Ok(Some(policy)) => policy,
        Ok(None) => return,
        Err(e) => {
            pgrx::log!("{name}: could not read job {migration}: {e}");
            return; // the launcher (or a later call) tries again
        }
    };
    super::locking::for_job(policy, || steps(migration, op, name))
}

fn steps(migration: i64, op: &dyn Operation, name: &str) {
    if op.has_backfill() && !batches::run(migration, op, name, Role::Leader) {
        return;
    }
    if !run_builds(migration, op, name) {
        return;
    }
    if !op.validate(migration) {
        return;
    }
    let _ = transaction(|| op.job_done(migration));
}

/// The operation's index builds and drops, one at a time, as the owner.
fn run_builds(migration: i64, op: &dyn Operation, name: &str) -> bool {
    let planned = transaction(|| {
        let tasks = op.builds(migration);
        let owner = if tasks.is_empty() {
            pg_sys::InvalidOid
        } else {
            let m = catalog::load_or_raise(migration, false);
            security::resolve_owner(&m.owner_name, migration)
        };
        (tasks, owner)
    });
    let (tasks, owner) = match planned {
        Ok(p) => p,
        Err(e) => {
            let _ = transaction(|| jobs::fail(migration, "index build failed", &e));
            return false;
        }
    };
    for task in tasks {
        set_activity(&format!("{name}: {} index {}", if task.drop { "dropping" } else { "building" }, task.index));
        let _ = transaction(|| op.build_state(migration, &task, BuildState::Building));
        match index_build::run(migration, &task, owner) {
            index_build::Outcome::Done => {
                let _ = transaction(|| op.build_state(migration, &task, BuildState::Valid));
            }
            index_build::Outcome::Stopped => return false,
            index_build::Outcome::Failed(code, message) => {
                let _ = transaction(|| op.build_state(migration, &task, BuildState::Failed { code, message: &message }));
                return false;
            }
        }
    }
    true
}

/// Copy a request out of the caller's DSM segment.
fn read_handoff(handle: u32, len: usize) -> Option<Vec<u8>> {
    unsafe {
        let seg = pg_sys::dsm_attach(handle);
        if seg.is_null() {
            return None; // the caller gave up before we started
        }
        let bytes = std::slice::from_raw_parts(pg_sys::dsm_segment_address(seg) as *const u8, len).to_vec();
        pg_sys::dsm_detach(seg);
        Some(bytes)
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
    /// held or no capacity, and why
    Wait(String),
    /// another session holds the job's row for a moment
    Busy,
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
            return if exists.is_some() { Claim::Busy } else { Claim::Gone };
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
        // Held (paused, scheduled, outside its windows, waiting for another
        // migration): parked, holding no
        // share of zdm.max_workers.
        if let Some(reason) = jobs::load_row(migration).and_then(|job| job.held()) {
            capacity::park(migration, &reason);
            return Claim::Wait(reason);
        }
        if let Some(reason) = capacity::refusal(migration) {
            capacity::park(migration, &reason);
            return Claim::Wait(reason);
        }
        // One backfill per table (other jobs do not count: a constraint
        // may be waiting for this very backfill).
        let same_table = spi::one::<i64>(
            &format!(
                "SELECT min(j.migration_id) FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id \
                  WHERE m.relid = $2::oid::regclass AND m.kind = ANY($3) AND j.migration_id <> $1 \
                    AND j.state IN ('running', 'paused') AND {} \
                    AND (SELECT kind FROM zdm.migrations WHERE id = $1) = ANY($3)",
                jobs::WORKER_ALIVE
            ),
            &[migration.into(), relid.into(), super::backfilling_kinds().into()],
        );
        if let Some(other) = same_table {
            let reason = format!("waiting for the backfill of migration {other} on the same table");
            capacity::park(migration, &reason);
            return Claim::Wait(reason);
        }
        spi::exec_args(
            "UPDATE zdm.jobs SET state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, parked = false, \
               started_at = coalesce(started_at, clock_timestamp()), throttle_reason = NULL, \
               current_batch_size = coalesce(current_batch_size, batch_size) WHERE migration_id = $1",
            &[migration.into()],
        );
        Claim::Mine
    })
}

