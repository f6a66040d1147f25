//! The supervisor: the one static background worker (needs
//! shared_preload_libraries = 'zdm'), connected to no database, like
//! PostgreSQL's autovacuum launcher. It keeps a zdm launcher
//! (`engine::launcher`) running in every database where zdm is installed
//! — TimescaleDB's model — so that jobs everywhere are resumed after a
//! crash or restart.
//!
//! * Once a second it reads pg_database (a shared catalog) and starts a
//!   launcher, by database OID, in every database that accepts connections,
//!   is not a template, is not being dropped and is allowed by
//!   `zdm.database` (an optional list; unset: every database).
//! * A launcher in a database without zdm finds no extension and exits at
//!   once; the supervisor probes that database again only when asked
//!   (`wake`: CREATE EXTENSION zdm, sending it SIGHUP) or every
//!   `ABSENT_RECHECK`, at most `PROBES_PER_SECOND` databases a second. A launcher that ran (zdm is there) and stopped — killed,
//!   crashed, stopped for DROP DATABASE or ALTER DATABASE … RENAME — is started
//!   again after `RESTART_DELAY`, if its database still exists.
//! * It holds no connection to any database, so it never blocks DROP
//!   DATABASE, CREATE DATABASE from a template, or a rename; launchers and
//!   workers in a database about to be dropped or renamed are stopped by
//!   `stop_database_workers` (called from the ProcessUtility hook).

use super::process::{install_signal_handlers, set_activity, sleep_ms, transaction};
use crate::guc;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A launcher that lived at least this long served a database with zdm (one
/// without zdm exits at once, before its first one-second round).
const SERVED_AFTER: Duration = Duration::from_secs(1);
/// How long after a serving launcher stopped it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// How often a database without zdm is probed again without being asked.
const ABSENT_RECHECK: Duration = Duration::from_secs(300);

pub fn register() {
    BackgroundWorkerBuilder::new("zdm supervisor")
        .set_type("zdm supervisor")
        .set_library("zdm")
        .set_function("zdm_supervisor_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// At most this many databases not known to have zdm are probed per second
/// of wall-clock time (a SIGHUP — any configuration reload — asks for a probe
/// of every one, and every launcher that starts or stops wakes the
/// supervisor).
const PROBES_PER_SECOND: f64 = 4.0;

/// Probes allowed now: refilled at PROBES_PER_SECOND, at most one second's.
struct ProbeBudget {
    tokens: f64,
    at: Instant,
}

impl ProbeBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * PROBES_PER_SECOND).min(PROBES_PER_SECOND);
        self.at = now;
        (self.tokens >= 1.0).then(|| self.tokens -= 1.0).is_some()
    }
}

/// A database's launcher, as the supervisor knows it.
struct Served {
    worker: Option<Launcher>,
    started: Instant,
    /// When to start it again if it is not running.
    next_start: Instant,
    /// Its last launcher served it (zdm is installed there).
    serving: bool,
    /// Asked to look again (`wake`) since its last launcher started: a
    /// launcher probing while CREATE EXTENSION commits may have looked just
    /// before, and found no zdm.
    woken: bool,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn zdm_supervisor_main(_arg: pg_sys::Datum) {
    install_signal_handlers();
    // No database: pg_database is a shared catalog.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut served: HashMap<u32, Served> = HashMap::new();
    let mut budget = ProbeBudget { tokens: PROBES_PER_SECOND, at: Instant::now() };
    loop {
        let woken = unsafe { pg_sys::ConfigReloadPending != 0 };
        if woken {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        set_activity("zdm supervisor: looking at the databases");
        match transaction(databases) {
            Ok(dbs) => supervise(&mut served, &dbs, woken, &mut budget),
            Err(e) => pgrx::log!("zdm supervisor: {e}"),
        }
        set_activity("zdm supervisor: idle");
        sleep_ms(1000.0);
    }
}

fn supervise(served: &mut HashMap<u32, Served>, dbs: &[(pg_sys::Oid, String)], woken: bool, budget: &mut ProbeBudget) {
    let now = Instant::now();
    let allowed = guc::served_databases();
    // Databases gone, or no longer allowed: stop their launchers.
    served.retain(|oid, s| {
        let keep = dbs.iter().any(|(o, name)| o.to_u32() == *oid && allowed.as_ref().is_none_or(|a| a.contains(name)));
        if !keep {
            if let Some(w) = s.worker.take() {
                w.terminate();
            }
        }
        keep
    });
    for (oid, name) in dbs {
        if allowed.as_ref().is_some_and(|a| !a.contains(name)) {
            continue;
        }
        let s = served.entry(oid.to_u32()).or_insert(Served { worker: None, started: now, next_start: now, serving: false, woken: false });
        s.woken |= woken;
        if let Some(w) = &s.worker {
            match w.handle.pid() {
                Err(BackgroundWorkerStatus::Stopped) | Err(BackgroundWorkerStatus::PostmasterDied) => {
                    // It ran and stopped: zdm is there (started again soon),
                    // or it found no zdm (probed again when asked).
                    s.serving = now.duration_since(s.started) >= SERVED_AFTER;
                    s.next_start = now + if s.serving { RESTART_DELAY } else { ABSENT_RECHECK };
                    if s.serving {
                        s.woken = woken; // (a wake during its life asked nothing of it)
                    }
                    if let Some(w) = s.worker.take() {
                        w.forget();
                    }
                }
                _ => continue, // starting or running
            }
        }
        if s.woken {
            // (CREATE EXTENSION wakes us as it commits.)
            s.next_start = s.next_start.min(now + Duration::from_secs(1));
        }
        if now < s.next_start {
            continue;
        }
        if !s.serving && !budget.take() {
            continue; // a later round
        }
        s.started = now;
        s.next_start = now + ABSENT_RECHECK;
        s.woken = false;
        match Launcher::start(*oid, name) {
            Ok(w) => s.worker = Some(w),
            Err(e) => {
                // (no free background worker slot): try again soon
                s.next_start = now + RESTART_DELAY;
                pgrx::log!("zdm supervisor: could not start a launcher for database {name}: {e}");
            }
        }
    }
}

/// A launcher's handle, in a memory context of its own (the handle must
/// outlive this loop's allocations; deleting the context frees it, where
/// one started every few minutes for years would otherwise add up).
struct Launcher {
    handle: DynamicBackgroundWorker,
    context: pg_sys::MemoryContext,
}

impl Launcher {
    fn start(oid: pg_sys::Oid, name: &str) -> Result<Launcher, String> {
        unsafe {
            let context = pg_sys::AllocSetContextCreateInternal(pg_sys::TopMemoryContext, c"zdm launcher handle".as_ptr(), 0, 1024, 8192);
            let old = pg_sys::MemoryContextSwitchTo(context);
            let r = super::launcher::start(oid, name);
            pg_sys::MemoryContextSwitchTo(old);
            match r {
                Ok(handle) => Ok(Launcher { handle, context }),
                Err(e) => {
                    pg_sys::MemoryContextDelete(context);
                    Err(e)
                }
            }
        }
    }

    /// Ask it to stop, and forget it.
    fn terminate(self) {
        let Launcher { handle, context } = self;
        drop(handle.terminate());
        unsafe { pg_sys::MemoryContextDelete(context) };
    }

    /// It has stopped: forget it.
    fn forget(self) {
        let Launcher { handle, context } = self;
        drop(handle);
        unsafe { pg_sys::MemoryContextDelete(context) };
    }
}

/// The databases a launcher may connect to: not templates, accepting
/// connections, not half-dropped (`datconnlimit` -2). Read from pg_database
/// directly (a shared catalog; no database connection needed).
fn databases() -> Vec<(pg_sys::Oid, String)> {
    let mut out = Vec::new();
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let form = (header as *mut u8).add((*header).t_hoff as usize) as *mut pg_sys::FormData_pg_database;
            if (*form).datistemplate || !(*form).datallowconn || (*form).datconnlimit == -2 {
                continue;
            }
            let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
            out.push(((*form).oid, name));
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
    out
}

/// Ask the supervisor to look at every database again once this
/// transaction commits (CREATE EXTENSION zdm): its pid is looked up now,
/// SIGHUP is sent once the commit is visible (no SQL then), and the
/// supervisor starts the launcher a second later.
pub fn wake_at_commit() {
    let pids = supervisor_pids();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        for pid in pids.iter().filter(|p| **p > 0) {
            unsafe { libc_kill(*pid, pg_sys::SIGHUP as i32) };
        }
    });
}

/// Run `f` (a fixed query of pg_stat_activity, no user code) as the
/// bootstrap superuser: other roles see NULL for a zdm process's
/// `backend_type`, and zdm's processes must be found whoever asks.
fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    crate::security::as_role(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), f)
}

fn supervisor_pids() -> Vec<i32> {
    as_superuser(|| crate::spi::read_rows(
        "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'zdm supervisor'",
        &[],
        |r| Ok(r.get::<i32>(1)?.unwrap_or(0)),
    ))
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Stop zdm's launcher and workers connected to database `name`, and wait
/// (up to 10 s) until they are gone: DROP DATABASE and ALTER DATABASE …
/// RENAME refuse to run while any session is connected to it. Their jobs
/// stay queued; after a rename the supervisor starts the launcher again,
/// which resumes them. For a user who may drop or rename the database only
/// (its owner, or a superuser): PostgreSQL refuses the others.
pub fn stop_database_workers(name: &str) {
    let may = crate::spi::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role(datdba, 'USAGE') FROM pg_catalog.pg_database WHERE datname = $1",
        &[name.into()],
    );
    if may != Some(true) {
        return;
    }
    let find = || {
        as_superuser(|| crate::spi::read_rows(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND backend_type LIKE 'zdm %' AND backend_type <> 'zdm supervisor'",
            &[name.into()],
            |r| Ok(r.get::<i32>(1)?.unwrap_or(0)),
        ))
    };
    let pids = find();
    if pids.is_empty() {
        return;
    }
    for pid in &pids {
        unsafe { libc_kill(*pid, pg_sys::SIGTERM as i32) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Any zdm process still there — including one that started after
        // the first round (a helper, a worker registered just before) — is
        // told again.
        let left = find();
        if left.is_empty() {
            break;
        }
        for pid in &left {
            unsafe { libc_kill(*pid, pg_sys::SIGTERM as i32) };
        }
        super::locking::interruptible_sleep(Duration::from_millis(50));
        unsafe { pg_sys::pgstat_clear_snapshot() };
    }
    // Woken, the supervisor starts the launcher again a second later (by
    // OID: after a rename it serves the renamed database; a launcher that
    // arrives while the statement runs waits for it at connection, and
    // finds no database after a DROP).
    for pid in supervisor_pids().into_iter().filter(|p| *p > 0) {
        unsafe { libc_kill(pid, pg_sys::SIGHUP as i32) };
    }
}
