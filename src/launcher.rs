//! The launcher: a static background worker (needs shared_preload_libraries
//! = 'zdm') connected to `zdm.database`. Once a second it starts a worker for
//! every queued or running job that has no live worker — jobs whose worker
//! failed to start, was killed, or died in a crash or restart — up to
//! `zdm.max_workers`. It reads only zdm's catalog; it never touches user
//! tables (the workers it starts run as each job's own role).

use crate::worker::{install_signal_handlers, reload_config_if_asked, set_activity, set_application_name, sleep_ms, transaction};
use crate::{guc, jobs, spi};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::prelude::*;
use std::time::Duration;

/// A job whose worker has not shown a heartbeat for this long, and is not
/// alive, is resumed.
const ORPHAN_GRACE: &str = "3 seconds";

pub fn register() {
    BackgroundWorkerBuilder::new("zdm launcher")
        .set_type("zdm launcher")
        .set_library("zdm")
        .set_function("zdm_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn zdm_launcher_main(_arg: pg_sys::Datum) {
    install_signal_handlers();
    let db = guc::DATABASE
        .get()
        .and_then(|c| c.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| "postgres".to_string());
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    set_application_name("zdm launcher");
    loop {
        reload_config_if_asked();
        set_activity("zdm launcher: looking for jobs without a worker");
        if let Err(e) = transaction(resume_orphans) {
            pgrx::log!("zdm launcher: {e}");
        }
        set_activity("zdm launcher: idle");
        sleep_ms(1000.0);
    }
}

fn resume_orphans() {
    let installed = spi::one::<bool>("SELECT true FROM pg_catalog.pg_extension WHERE extname = 'zdm'", &[]);
    if installed.is_none() {
        return;
    }
    let alive = jobs::WORKER_ALIVE;
    let busy = spi::one::<i64>(
        &format!("SELECT count(*) FROM zdm.jobs j WHERE j.state IN ('running', 'paused') AND {alive}"),
        &[],
    )
    .unwrap_or(0);
    let free = (guc::MAX_WORKERS.get() as i64 - busy).max(0);
    if free == 0 {
        return;
    }
    let orphans: Vec<i64> = spi::one::<Vec<i64>>(
        &format!(
            "SELECT coalesce(array_agg(migration_id ORDER BY migration_id), '{{}}') FROM ( \
               SELECT j.migration_id FROM zdm.jobs j \
                WHERE j.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
                  AND j.state IN ('queued', 'running') AND NOT {alive} \
                  AND coalesce(j.heartbeat_at, j.queued_at) < clock_timestamp() - interval '{ORPHAN_GRACE}' \
                ORDER BY j.migration_id LIMIT $1) o"
        ),
        &[free.into()],
    )
    .unwrap_or_default();
    for id in orphans {
        match jobs::launch_worker(id, false) {
            Ok(()) => pgrx::log!("zdm launcher: started a worker for migration {id}"),
            Err(e) => pgrx::log!("zdm launcher: could not start a worker for migration {id}: {e}"),
        }
    }
}
