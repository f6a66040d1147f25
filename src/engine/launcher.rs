//! A database's launcher: a dynamic background worker the supervisor
//! (`engine::supervisor`) starts in every database where zdm is installed,
//! connected to it by OID (a rename does not matter). Once a second it starts a
//! worker for every queued or running job that has no live worker — jobs
//! whose worker failed to start, was killed, or died in a crash or restart —
//! while fewer than `zdm.max_workers` zdm workers run in the whole cluster.
//! It reads only zdm's catalog; it never touches user tables (the workers it
//! starts run as each job's own role).
//!
//! It never starts a second worker for a job whose worker is starting or
//! alive: it keeps the handle of every worker it started and asks the
//! postmaster about it, besides the pid recorded in the job row. One
//! launcher per database: a second one (the supervisor restarted while the
//! first lived) finds the first's advisory lock and waits for it; the first
//! sees that its supervisor is gone and another runs, and exits. In a database
//! without zdm, or once `DROP EXTENSION zdm` ran, it exits.

use super::process::{install_signal_handlers, reload_config_if_asked, set_activity, set_application_name, sleep_ms, transaction};
use super::{capacity, jobs};
use crate::{catalog, guc, security, spi};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::prelude::*;
use std::collections::HashMap;

/// A job whose worker has not shown a heartbeat for this long, and is not
/// alive, is resumed.
const ORPHAN_GRACE: &str = "3 seconds";

/// Whether the launcher has said once that the extension needs an update.
static VERSION_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Start the launcher of database `db` (`name` for display only).
pub fn start(db: pg_sys::Oid, name: &str) -> Result<DynamicBackgroundWorker, String> {
    BackgroundWorkerBuilder::new(&format!("zdm launcher ({name})"))
        .set_type("zdm launcher")
        .set_library("zdm")
        .set_function("zdm_launcher_main")
        .enable_spi_access()
        .set_argument(db.into_datum())
        .set_restart_time(None) // the supervisor starts it again, if its database still exists
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .map_err(|e| format!("{e:?}"))
}

/// Key of the advisory lock (in each database) held by its one launcher.
const LAUNCHER_LOCK: i64 = 0x7a64_6d5f_6c61_756e; // "zdm_laun"

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn zdm_launcher_main(arg: pg_sys::Datum) {
    install_signal_handlers();
    let db = unsafe { pg_sys::Oid::from_datum(arg, false) }.unwrap_or(pg_sys::InvalidOid);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    security::pin_session_search_path();
    super::locking::lose_deadlocks();
    set_application_name("zdm launcher");
    // One launcher per database. A second one waits for the first to end
    // rather than exit: a launcher that exits at once tells the supervisor
    // that zdm is not installed here, and the database would be probed
    // again only minutes later.
    loop {
        let ours = transaction(|| {
            catalog::installed_version()
                .map(|_| spi::one::<bool>("SELECT pg_catalog.pg_try_advisory_lock($1)", &[LAUNCHER_LOCK.into()]).unwrap_or(false))
        });
        match ours {
            Ok(Some(true)) => break,
            Ok(Some(false)) => {
                set_activity("zdm launcher: another launcher serves this database; waiting for it to end");
                sleep_ms(1000.0);
            }
            _ => unsafe { pg_sys::proc_exit(0) }, // no zdm here
        }
    }
    let mut started: HashMap<i64, DynamicBackgroundWorker> = HashMap::new();
    loop {
        reload_config_if_asked();
        if transaction(superseded).unwrap_or(false) {
            pgrx::log!("zdm launcher: the zdm supervisor that started this launcher is gone and another runs; exiting (its launcher takes over)");
            unsafe { pg_sys::proc_exit(0) };
        }
        set_activity("zdm launcher: looking for jobs without a worker");
        // Forget workers that have ended; the rest are starting or running.
        started.retain(|_, w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)));
        match transaction(|| resume_orphans(&mut started)) {
            Ok(true) => {}
            Ok(false) => {
                pgrx::log!("zdm launcher: zdm is no longer installed in this database; exiting");
                unsafe { pg_sys::proc_exit(0) };
            }
            Err(e) => pgrx::log!("zdm launcher: {e}"),
        }
        set_activity("zdm launcher: idle");
        sleep_ms(1000.0);
    }
}

/// The supervisor that started this launcher was restarted: a new one runs
/// (with a launcher of its own waiting here for this one's lock).
fn superseded() -> bool {
    let mine = unsafe { pg_sys::MyBgworkerEntry.as_ref().map(|e| e.bgw_notify_pid).unwrap_or(0) };
    mine != 0
        && spi::one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE backend_type = 'zdm supervisor' AND pid <> $1)",
            &[mine.into()],
        )
        .unwrap_or(false)
}

/// Start workers for orphaned jobs; false once zdm is not installed here.
fn resume_orphans(started: &mut HashMap<i64, DynamicBackgroundWorker>) -> bool {
    match catalog::installed_version() {
        None => return false,
        Some(v) if !catalog::catalog_matches(&v) => {
            // A new library before ALTER EXTENSION zdm UPDATE: the catalog
            // has the old shape. Jobs wait (sync triggers keep working).
            if !VERSION_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                pgrx::warning!(
                    "zdm launcher: the zdm library is version {}, but the zdm extension in this database is at version {v}; \
                     jobs wait until ALTER EXTENSION zdm UPDATE",
                    catalog::LIBRARY_VERSION
                );
            }
            return true;
        }
        Some(_) => VERSION_WARNED.store(false, std::sync::atomic::Ordering::Relaxed),
    }
    if guc::PAUSE_ALL.get() {
        return true;
    }
    let alive = jobs::WORKER_ALIVE;
    let working = capacity::WORKING;
    let alive_j2 = jobs::worker_alive_of("j2");
    // zdm.max_workers is cluster-wide: this database's working jobs, and the
    // zdm workers of every other database.
    let busy = spi::one::<i64>(
        &format!("SELECT (SELECT count(*) FROM zdm.jobs j WHERE {working} AND {alive}) + {}", capacity::OTHER_DATABASES_WORKERS),
        &[],
    )
    .unwrap_or(0);
    let free = (guc::MAX_WORKERS.get() as i64 - busy).max(0);
    if free == 0 {
        return true;
    }
    // Jobs that can run now (not before run_after, not behind a backfill
    // they depend on), whose owner is under zdm.max_workers_per_role; the
    // owner with the fewest working jobs first, so one role's queue cannot
    // keep another's waiting.
    let candidates: Vec<(i64, Vec<String>)> = spi::rows(
        &format!(
            "WITH owners AS (SELECT m.owner_name, count(*) AS working FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id \
                              WHERE {working} AND {alive} GROUP BY m.owner_name) \
             SELECT j.migration_id, coalesce(j.windows, '{{}}') FROM zdm.jobs j JOIN zdm.migrations m ON m.id = j.migration_id \
               LEFT JOIN owners o ON o.owner_name = m.owner_name \
              WHERE j.state IN ('queued', 'running') AND NOT {alive} \
                AND coalesce(j.heartbeat_at, j.queued_at) < clock_timestamp() - interval '{ORPHAN_GRACE}' \
                AND (j.run_after IS NULL OR j.run_after <= clock_timestamp()) \
                AND NOT EXISTS (SELECT 1 FROM zdm.migrations d WHERE d.id = j.depends_on AND d.phase IN ('expanded', 'backfilling')) \
                AND NOT (m.kind = ANY($3) AND EXISTS ( \
                     SELECT 1 FROM zdm.jobs j2 JOIN zdm.migrations m2 ON m2.id = j2.migration_id \
                      WHERE m2.relid = m.relid AND m2.kind = ANY($3) AND j2.migration_id <> j.migration_id \
                        AND j2.state IN ('running', 'paused') AND NOT j2.parked AND {alive_j2})) \
                AND coalesce(o.working, 0) < $1 \
              ORDER BY coalesce(o.working, 0), j.migration_id LIMIT $2"
        ),
        &[capacity::per_role_limit().into(), free.into(), super::backfilling_kinds().into()],
        |r| Ok((r.get::<i64>(1)?.unwrap_or_default(), r.get::<Vec<String>>(2)?.unwrap_or_default())),
    );
    let orphans: Vec<i64> = candidates
        .into_iter()
        .filter(|(_, windows)| super::window::outside(windows).is_none())
        .map(|(id, _)| id)
        .collect();
    for id in orphans {
        if started.contains_key(&id) {
            continue; // the worker we started for it is still starting or running
        }
        // The handle must outlive this transaction: allocate it in TopMemoryContext.
        let launched = unsafe {
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let r = jobs::launch_worker(id);
            pg_sys::MemoryContextSwitchTo(old);
            r
        };
        match launched {
            Ok(worker) => {
                started.insert(id, worker);
                pgrx::log!("zdm launcher: started a worker for migration {id}")
            }
            Err(e) => pgrx::log!("zdm launcher: could not start a worker for migration {id}: {e}"),
        }
    }
    true
}
