use crate::catalog::{self, Phase};
use crate::errors::{raise, Code};
use crate::engine::jobs::{self, Options};
use crate::catalog::as_catalog_owner;
use crate::engine::locking;
use crate::ops::column::backfill;
use crate::spi;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

const OPTION_ARGS: &str = "batch_size int DEFAULT NULL, pause_ms int DEFAULT NULL, target_batch_ms int DEFAULT NULL, \
    max_replica_lag interval DEFAULT NULL, lock_timeout interval DEFAULT NULL, statement_timeout interval DEFAULT NULL, \
    run_after timestamptz DEFAULT NULL, windows text[] DEFAULT NULL, workers int DEFAULT NULL, \
    max_rows_per_second int DEFAULT NULL";
const _: &str = OPTION_ARGS; // documented in README; repeated literally in the SQL below

fn required(migration: Option<i64>) -> i64 {
    migration.unwrap_or_else(|| {
        raise(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "migration must not be NULL",
            "Pass the id that zdm.expand_rename returned; see zdm.status.",
        )
    })
}

/// The migration, checked to be a backfillable rename the caller may control
/// (rights first, then the row lock).
fn owned_backfillable(migration: i64) -> catalog::Migration {
    let m = catalog::load_for(migration, "start the backfill of", true);
    backfill::require_backfillable(&m);
    m.table_sql();
    m
}

#[allow(clippy::too_many_arguments)]
pub(super) fn options(
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    target_batch_ms: Option<i32>,
    max_replica_lag: Option<Interval>,
    lock_timeout: Option<Interval>,
    statement_timeout: Option<Interval>,
    run_after: Option<TimestampWithTimeZone>,
    windows: Option<Vec<String>>,
    workers: Option<i32>,
    max_rows_per_second: Option<i32>,
) -> Options {
    let o = Options {
        batch_size,
        pause_ms,
        target_batch_ms,
        max_replica_lag,
        lock_timeout,
        statement_timeout,
        run_after,
        windows,
        workers,
        max_rows_per_second,
    };
    o.validate();
    o
}

/// Start (or restart after cancel or failure) the background backfill. It
/// begins once the calling transaction commits. Returns the job id (= the
/// migration id).
#[pg_extern(sql = "
CREATE FUNCTION zdm.start_backfill(migration bigint, batch_size int DEFAULT NULL, pause_ms int DEFAULT NULL,
    target_batch_ms int DEFAULT NULL, max_replica_lag interval DEFAULT NULL, lock_timeout interval DEFAULT NULL,
    statement_timeout interval DEFAULT NULL, run_after timestamptz DEFAULT NULL, windows text[] DEFAULT NULL,
    workers int DEFAULT NULL, max_rows_per_second int DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.start_backfill(bigint, int, int, int, interval, interval, interval, timestamptz, text[], int, int) IS
  'Run the backfill in a background worker, after the calling transaction commits; returns the job id (= migration id)';
")]
#[allow(clippy::too_many_arguments)]
fn start_backfill(
    migration: Option<i64>,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    target_batch_ms: Option<i32>,
    max_replica_lag: Option<Interval>,
    lock_timeout: Option<Interval>,
    statement_timeout: Option<Interval>,
    run_after: Option<TimestampWithTimeZone>,
    windows: Option<Vec<String>>,
    workers: Option<i32>,
    max_rows_per_second: Option<i32>,
) -> i64 {
    let id = required(migration);
    let opts = options(batch_size, pause_ms, target_batch_ms, max_replica_lag, lock_timeout, statement_timeout, run_after, windows, workers, max_rows_per_second);
    let m = owned_backfillable(id);
    // A backfilled rename's job may still have index builds or validations
    // to finish (e.g. after a failed unique build and fixed data, or a
    // partition created since the build).
    let job_done = matches!(jobs::state(id).as_deref(), Some("completed") | None);
    if m.phase == Phase::Backfilled && job_done && crate::engine::operation(&m.kind).builds(id).is_empty() {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {id} on {} is already backfilled", m.display_table()),
            format!("Call zdm.contract({id}) to finish it."),
        );
    }
    if let Some(state) = jobs::state(id) {
        // A worker that is alive, or one registered by a transaction that has
        // not ended yet (this one included): never a second worker per job,
        // so no caller can fill the server's worker slots with one job.
        if matches!(state.as_str(), "queued" | "running" | "paused") && (jobs::worker_alive(id) || jobs::start_pending(id)) {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm migration {id} already has a background backfill ({state})"),
                format!("Change it with zdm.set_options({id}, ...), zdm.pause({id}) or zdm.cancel({id})."),
            );
        }
    }
    jobs::queue(id, &opts);
    jobs::launch_worker_or_raise(id);
    id
}

/// Change a job's options; a running worker applies them at its next batch.
#[pg_extern(sql = "
CREATE FUNCTION zdm.set_options(migration bigint, batch_size int DEFAULT NULL, pause_ms int DEFAULT NULL,
    target_batch_ms int DEFAULT NULL, max_replica_lag interval DEFAULT NULL, lock_timeout interval DEFAULT NULL,
    statement_timeout interval DEFAULT NULL, run_after timestamptz DEFAULT NULL, windows text[] DEFAULT NULL,
    workers int DEFAULT NULL, max_rows_per_second int DEFAULT NULL)
RETURNS void VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.set_options(bigint, int, int, int, interval, interval, interval, timestamptz, text[], int, int) IS
  'Change background backfill options (NULL keeps a value; 0 turns target_batch_ms / max_replica_lag / max_rows_per_second off); applied at the next batch';
")]
#[allow(clippy::too_many_arguments)]
fn set_options(
    migration: Option<i64>,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    target_batch_ms: Option<i32>,
    max_replica_lag: Option<Interval>,
    lock_timeout: Option<Interval>,
    statement_timeout: Option<Interval>,
    run_after: Option<TimestampWithTimeZone>,
    windows: Option<Vec<String>>,
    workers: Option<i32>,
    max_rows_per_second: Option<i32>,
) {
    let id = required(migration);
    let opts = options(batch_size, pause_ms, target_batch_ms, max_replica_lag, lock_timeout, statement_timeout, run_after, windows, workers, max_rows_per_second);
    catalog::load_for(id, "change the options of", false);
    if jobs::state(id).is_none() {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {id} has no background job"),
            format!("Start one with zdm.start_backfill({id}, ...)."),
        );
    }
    jobs::set_options(id, &opts);
}

fn change_state(id: i64, from: &[&str], to: &str, verb: &str) {
    catalog::load_for(id, verb, false);
    if !jobs::transition(id, from, to) {
        let state = jobs::state(id).unwrap_or_else(|| "no job".into());
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot {verb} the backfill of zdm migration {id}: its job is {state}"),
            match state.as_str() {
                "no job" | "cancelled" | "failed" => format!("Start it with zdm.start_backfill({id})."),
                "paused" => format!("Resume it with zdm.resume({id})."),
                "completed" => format!("It is done; call zdm.contract({id})."),
                _ => "See zdm.status.".to_string(),
            },
        );
    }
}

#[pg_extern(sql = "
CREATE FUNCTION zdm.pause(migration bigint) RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.pause(bigint) IS 'Pause the background backfill after its current batch';
")]
fn pause(migration: i64) {
    change_state(migration, &["queued", "running"], "paused", "pause");
}

#[pg_extern(sql = "
CREATE FUNCTION zdm.resume(migration bigint) RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.resume(bigint) IS 'Resume a paused background backfill';
")]
fn resume(migration: i64) {
    if jobs::worker_alive(migration) {
        change_state(migration, &["paused"], "running", "resume");
    } else {
        change_state(migration, &["paused"], "queued", "resume");
        jobs::launch_worker_or_raise(migration);
    }
}

#[pg_extern(sql = "
CREATE FUNCTION zdm.cancel(migration bigint) RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.cancel(bigint) IS
  'Stop the background backfill after its current batch; progress is kept, restart with zdm.start_backfill';
")]
fn cancel(migration: i64) {
    change_state(migration, &["queued", "running", "paused"], "cancelled", "cancel");
}

struct Progress {
    phase: String,
    job_state: Option<String>,
    rows_done: i64,
    rows_total: i64,
    percent: f64,
    rows_per_sec: Option<f64>,
    eta: Option<String>,
    reason: Option<String>,
    error: Option<String>,
}

fn progress(id: i64) -> Option<Progress> {
    spi::first_row(
        "SELECT phase, job_state, rows_done, rows_total, percent::float8, rows_per_sec::float8, \
                date_trunc('second', eta)::text, throttle_reason, last_error FROM zdm.status WHERE id = $1",
        &[id.into()],
        |r| Ok(Progress {
            phase: r.get::<String>(1)?.unwrap_or_default(),
            job_state: r.get::<String>(2)?,
            rows_done: r.get::<i64>(3)?.unwrap_or(0),
            rows_total: r.get::<i64>(4)?.unwrap_or(0),
            percent: r.get::<f64>(5)?.unwrap_or(0.0),
            rows_per_sec: r.get::<f64>(6)?,
            eta: r.get::<String>(7)?,
            reason: r.get::<String>(8)?,
            error: r.get::<String>(9)?,
        }),
    )
}

/// "building index X: phase, blocks a of b" from pg_stat_progress_create_index
/// for the migration's worker, while it builds.
fn index_build_progress(id: i64) -> Option<String> {
    as_catalog_owner(|| {
        spi::one::<String>(
            "SELECT pg_catalog.format('building index %s: %s, %s%% of blocks', \
                      coalesce((SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = p.index_relid), '?'), p.phase, \
                      CASE WHEN p.blocks_total > 0 THEN round(100.0 * p.blocks_done / p.blocks_total, 1) ELSE 0 END) \
               FROM pg_catalog.pg_stat_progress_create_index p JOIN zdm.jobs j ON j.worker_pid = p.pid \
              WHERE j.migration_id = $1",
            &[id.into()],
        )
    })
}

/// A job that has no worker and that nothing will resume: fail at once
/// instead of sitting out the timeout. A worker that is starting, or a
/// launcher serving this database, counts as something that will.
fn raise_if_abandoned(id: i64, state: &str) {
    let row = as_catalog_owner(|| {
        spi::first_row(
            &format!(
                "SELECT {alive}, greatest(j.heartbeat_at, j.queued_at) < clock_timestamp() - interval '5 seconds', \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.backend_type = 'zdm launcher' \
                                   AND a.datname = pg_catalog.current_database()) \
                   FROM zdm.jobs j WHERE j.migration_id = $1",
                alive = jobs::WORKER_ALIVE
            ),
            &[id.into()],
            |r| Ok((r.get::<bool>(1)?.unwrap_or(false), r.get::<bool>(2)?.unwrap_or(false), r.get::<bool>(3)?.unwrap_or(false))),
        )
    });
    let Some((alive, stale, launcher)) = row else { return };
    if alive {
        return;
    }
    if state == "paused" {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {id} is paused and has no worker; nothing will resume it"),
            format!("Call zdm.resume({id}), then zdm.wait({id})."),
        );
    }
    if stale && !launcher {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {id} is {state} but its worker is gone, and no zdm launcher serves this database to resume it"),
            format!(
                "Call zdm.start_backfill({id}) to start a worker (it resumes from its cursor), or preload zdm with zdm.database = current database so that the launcher resumes jobs."
            ),
        );
    }
}

/// Wait for the backfill to finish, printing progress as NOTICEs; returns the
/// final phase.
#[pg_extern(sql = "
CREATE FUNCTION zdm.wait(migration bigint, timeout interval DEFAULT '1 hour') RETURNS text STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.wait(bigint, interval) IS
  'Wait for the background backfill, with progress NOTICEs; returns the final phase';
")]
fn wait(migration: i64, timeout: Interval) -> String {
    let id = migration;
    let kind = catalog::load_for(id, "wait for", false).kind;
    let op = crate::engine::operation(&kind);
    let backfills = op.has_backfill();
    let timeout_ms = jobs::interval_ms(&timeout);
    let mine = spi::one::<bool>(
        "SELECT created_xid = pg_catalog.pg_current_xact_id_if_assigned() FROM zdm.jobs WHERE migration_id = $1",
        &[id.into()],
    );
    if mine == Some(true) {
        raise(
            Code::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("zdm.wait({id}) cannot run in the transaction that started the backfill of migration {id}"),
            format!("The backfill starts only after this transaction commits: COMMIT first, then call zdm.wait({id})."),
        );
    }
    let isolation = spi::one::<String>("SELECT current_setting('transaction_isolation')", &[]).unwrap_or_default();
    if isolation != "read committed" {
        raise(
            Code::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("zdm.wait({id}) needs READ COMMITTED to see progress (this transaction is {isolation})"),
            "Call it outside an explicit REPEATABLE READ / SERIALIZABLE transaction.",
        );
    }
    let started = Instant::now();
    let mut last_notice: Option<Instant> = None;
    let mut last_rows = -1;
    let mut last_step: Option<String> = None;
    loop {
        let Some(p) = progress(id) else { catalog::load_or_raise(id, false); unreachable!() };
        if p.job_state.as_deref() == Some("failed") {
            crate::ops::constraint::raise_if_failed(id);
        }
        let finished = if backfills { ["backfilled", "contracted", "aborted"].as_slice() } else { ["contracted", "aborted"].as_slice() };
        // A backfilled migration's job goes on with its index builds and
        // validations; it is done when the job is.
        let building = backfills
            && p.phase == "backfilled"
            && matches!(p.job_state.as_deref(), Some("queued" | "running" | "paused"));
        if finished.contains(&p.phase.as_str()) && !building {
            if backfills {
                pgrx::notice!("zdm migration {id}: {} ({} rows backfilled)", p.phase, p.rows_done);
            } else {
                pgrx::notice!("zdm migration {id}: {}", p.phase);
            }
            return p.phase;
        }
        match p.job_state.as_deref() {
            None => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm migration {id} has no background backfill to wait for (phase {})", p.phase),
                format!("Start one with zdm.start_backfill({id}), or run zdm.backfill_batch({id}) until it returns 0."),
            ),
            Some("failed") => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("the backfill of zdm migration {id} failed: {}", p.error.unwrap_or_default()),
                format!("Fix the cause, then call zdm.start_backfill({id}); it resumes from its cursor."),
            ),
            Some("cancelled") => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("the backfill of zdm migration {id} was cancelled at {:.1}%", p.percent),
                format!("Restart it with zdm.start_backfill({id}); it resumes from its cursor."),
            ),
            Some(state) => raise_if_abandoned(id, state),
        }
        // Not finished: would it be waiting for this very transaction?
        if let Some(why) = jobs::held_by_this_transaction(id) {
            raise(
                Code::ERRCODE_ACTIVE_SQL_TRANSACTION,
                format!("zdm.wait({id}) would wait for its own transaction: {why}"),
                format!("The migration's worker cannot go on until this transaction ends: COMMIT first, then call zdm.wait({id})."),
            );
        }
        let due = last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        // Index builds (a backfill's carried indexes; a kind without a
        // backfill may build one itself): PostgreSQL's own progress view of
        // the worker's build.
        if due && (building || !backfills) {
            if let Some(line) = index_build_progress(id) {
                pgrx::notice!("zdm migration {id}: {line}");
                last_notice = Some(Instant::now());
            }
        }
        if !backfills {
            // No rows to count: say which step it is at (once per change).
            let step = as_catalog_owner(|| {
                spi::one::<String>("SELECT step FROM zdm.events WHERE migration_id = $1 ORDER BY id DESC LIMIT 1", &[id.into()])
            })
            .unwrap_or_else(|| "queued".into());
            let line = format!("{} (last step: {step}){}", p.phase, p.reason.clone().map(|r| format!("; {r}")).unwrap_or_default());
            if due && last_step.as_deref() != Some(line.as_str()) {
                pgrx::notice!("zdm migration {id}: {line}");
                last_notice = Some(Instant::now());
                last_step = Some(line);
            }
        } else if due && p.rows_done != last_rows && !building {
            pgrx::notice!(
                "zdm migration {id}: {:.1}% — {} of ~{} rows, {} rows/s, ETA {}{}",
                p.percent,
                p.rows_done,
                p.rows_total,
                p.rows_per_sec.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into()),
                p.eta.unwrap_or_else(|| "-".into()),
                p.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
            last_notice = Some(Instant::now());
            last_rows = p.rows_done;
        }
        if started.elapsed().as_secs_f64() * 1000.0 >= timeout_ms {
            raise(
                Code::ERRCODE_QUERY_CANCELED,
                format!(
                    "zdm.wait({id}) timed out after {:.0} s at {:.1}%; the backfill goes on in the background",
                    timeout_ms / 1000.0,
                    p.percent
                ),
                format!("Call zdm.wait({id}) again, or watch SELECT * FROM zdm.status WHERE id = {id}."),
            );
        }
        release_snapshots();
        locking::interruptible_sleep(Duration::from_millis(200));
    }
}

/// Between polls `wait` needs no snapshot (each poll, in READ COMMITTED,
/// takes a fresh one), so it stops advertising an xmin, as PostgreSQL does
/// between statements. Otherwise a long wait would hold back VACUUM, and a
/// concurrent index build — which waits for every older snapshot — would
/// wait for the very `zdm.wait` that waits for it.
///
/// It also drops the transaction's copy of the activity statistics: within
/// one transaction pg_stat_activity is read once and kept, so a worker that
/// ended after the first poll would look alive for the whole wait (what
/// `raise_if_abandoned` must not miss).
///
/// Only when nothing still reads with a snapshot: the statement's own must
/// be the only one registered (a cursor the caller opened earlier in the
/// transaction, an outer query calling `wait` from a function, a large
/// object open for reading each keep theirs), and the statement must be
/// `SELECT zdm.wait(…)` alone — nothing evaluated after `wait` returns (a
/// scan in `SELECT zdm.wait(id) FROM t`, a function in `SELECT zdm.wait(1),
/// f()`) may still read with its snapshot. VACUUM must keep what those see.
fn release_snapshots() {
    unsafe {
        pg_sys::pgstat_clear_snapshot();
        pg_sys::InvalidateCatalogSnapshot();
        if !pg_sys::MyProc.is_null() && pg_sys::ThereAreNoPriorRegisteredSnapshots() && statement_is_wait_alone() {
            (*pg_sys::MyProc).xmin = pg_sys::InvalidTransactionId;
        }
    }
}

/// The running top-level statement is `SELECT zdm.wait(…)` and nothing
/// else: one plan, a Result node with no input and no condition, whose one
/// output is the call (its arguments are evaluated before it).
unsafe fn statement_is_wait_alone() -> bool {
    unsafe {
        let portal = pg_sys::ActivePortal;
        if portal.is_null() || (*portal).stmts.is_null() || (*(*portal).stmts).length != 1 {
            return false;
        }
        let first = |list: *mut pg_sys::List| -> *mut std::ffi::c_void {
            if list.is_null() || (*list).length != 1 { std::ptr::null_mut() } else { (*(*list).elements).ptr_value }
        };
        let stmt = first((*portal).stmts) as *mut pg_sys::Node;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_PlannedStmt {
            return false;
        }
        let plan = (*(stmt as *mut pg_sys::PlannedStmt)).planTree;
        if plan.is_null() || (*plan).type_ != pg_sys::NodeTag::T_Result || !(*plan).lefttree.is_null() || !(*plan).qual.is_null() {
            return false;
        }
        if !(*(plan as *mut pg_sys::Result)).resconstantqual.is_null() {
            return false;
        }
        let tle = first((*plan).targetlist) as *mut pg_sys::TargetEntry;
        if tle.is_null() || (*tle).expr.is_null() || (*((*tle).expr as *mut pg_sys::Node)).type_ != pg_sys::NodeTag::T_FuncExpr {
            return false;
        }
        crate::introspect::is_zdm_function((*((*tle).expr as *mut pg_sys::FuncExpr)).funcid, c"wait")
    }
}
