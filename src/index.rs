//! Index operations — `create_index` (a concurrent build) and `drop_index`
//! (a concurrent drop) — run by a worker after the requesting transaction
//! commits, through `toplevel` (they cannot run inside a transaction).
//!
//! A build that fails leaves an INVALID index behind; zdm drops it
//! (concurrently) before trying again. Lock and statement timeouts, deadlocks
//! and serialization failures are retried with backoff, a bounded number of
//! times; an error of the data (a duplicate key for a unique index) or of
//! the definition ends the migration with that error's SQLSTATE, leaving no
//! index behind. Pause and cancel take effect between attempts.

use crate::catalog::{self, as_catalog_owner, Phase, Step};
use crate::locking::{error_code, error_message_with_detail};
use crate::spi::{self, ident};
use crate::{constraints, jobs, security, toplevel, worker};
use pgrx::prelude::*;
use std::time::Instant;

/// How many times a build is attempted before the migration fails.
const MAX_ATTEMPTS: u32 = 5;

struct Plan {
    kind: String,
    /// `"schema"."index"`
    index_sql: String,
    index_name: String,
    schema: String,
    definition: String,
    owner: pg_sys::Oid,
    search_path: String,
    lock_timeout_ms: i32,
}

fn load_plan(id: i64) -> Option<Plan> {
    let m = catalog::load(id, false)?;
    let (index_name, definition, search_path, lock_timeout_ms) = as_catalog_owner(|| {
        spi::first_row(
            "SELECT m.constraint_name::text, m.constraint_def, coalesce(m.expr_search_path, 'pg_catalog, pg_temp'), j.lock_timeout_ms \
               FROM zdm.migrations m JOIN zdm.jobs j ON j.migration_id = m.id WHERE m.id = $1",
            &[id.into()],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<i32>(4)?.unwrap_or(2000),
                ))
            },
        )
    })?;
    let schema = catalog::current_schema_of(m.relid).unwrap_or_else(|| m.table_schema.clone());
    Some(Plan {
        kind: m.kind.clone(),
        index_sql: spi::qualified(&schema, &index_name),
        index_name,
        schema,
        definition,
        owner: security::resolve_owner(&m.owner_name, id),
        search_path,
        lock_timeout_ms,
    })
}

/// None: no such index; Some(valid).
fn index_state(p: &Plan) -> Option<bool> {
    spi::one::<bool>(
        "SELECT i.indisvalid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid WHERE c.relname = $1 AND n.nspname = $2",
        &[p.index_name.as_str().into(), p.schema.as_str().into()],
    )
}

fn drop_concurrently(p: &Plan) -> Result<(), pgrx::pg_sys::panic::CaughtError> {
    toplevel::run(&format!("DROP INDEX CONCURRENTLY IF EXISTS {}", p.index_sql), p.owner, &p.search_path, p.lock_timeout_ms, |_| {})
}

fn build_concurrently(p: &Plan) -> Result<(), pgrx::pg_sys::panic::CaughtError> {
    toplevel::run(&p.definition, p.owner, &p.search_path, p.lock_timeout_ms, |node| unsafe {
        if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_IndexStmt {
            (*(node as *mut pg_sys::IndexStmt)).concurrent = true;
        }
    })
}

fn retryable(code: PgSqlErrorCode) -> bool {
    matches!(
        code,
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
            | PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
            | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
    )
}

fn log(id: i64, step: &str, started: Instant, detail: String) {
    let _ = worker::transaction(|| {
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

/// Attempts at one index operation until it succeeds, fails for good, or the
/// job is cancelled (`Err(None)`). Pause and cancel act between attempts.
fn attempts(id: i64, p: &Plan) -> Result<(), Option<(PgSqlErrorCode, String)>> {
    let mut last_error = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if !constraints::gate(id) {
            return Err(None);
        }
        let state = worker::transaction(|| index_state(p)).map_err(|e| Some((PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, e)))?;
        let started = Instant::now();
        let outcome = match (p.kind.as_str(), state) {
            ("create_index", Some(true)) | ("drop_index", None) => Ok(()),
            ("create_index", Some(false)) => {
                // Left INVALID by an earlier failed or cancelled build.
                let dropped = drop_concurrently(p);
                log(id, "dropped invalid index", started, p.index_sql.clone());
                dropped.and_then(|_| build_concurrently(p))
            }
            ("create_index", None) => build_concurrently(p),
            _ => drop_concurrently(p),
        };
        match outcome {
            Ok(()) => {
                let verb = if p.kind == "create_index" { "built" } else { "dropped" };
                log(id, &format!("index {verb}"), started, format!("{} ({verb} concurrently, attempt {attempt})", p.index_sql));
                return Ok(());
            }
            Err(e) => {
                let code = error_code(&e);
                last_error = error_message_with_detail(&e);
                log(id, "attempt failed", started, format!("{}: attempt {attempt}: {last_error}", p.index_sql));
                if p.kind == "create_index" {
                    // Never leave an INVALID index behind.
                    let _ = drop_concurrently(p);
                }
                if !retryable(code) {
                    let message = format!("{} of {} failed: {last_error}", p.kind.replace('_', " "), ident(&p.index_name));
                    return Err(Some((code, message)));
                }
                let reason = format!("index {}: attempt {attempt} failed ({last_error}); retrying", p.index_name);
                let _ = worker::transaction(|| worker::set_throttle_reason(id, Some(&reason)));
                worker::sleep_ms(500.0 * 2f64.powi(attempt as i32));
            }
        }
    }
    Err(Some((PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, format!("gave up after {MAX_ATTEMPTS} attempts: {last_error}"))))
}

/// Drive a create_index / drop_index migration to its end. Runs in a worker.
pub fn run(id: i64) {
    let p = match worker::transaction(|| load_plan(id)) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            let _ = worker::transaction(|| catalog::fail_migration(id, PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, &e, false));
            return;
        }
    };
    if p.kind == "create_index" {
        let _ = worker::transaction(|| catalog::set_phase(id, Phase::Backfilling));
    }
    match attempts(id, &p) {
        Ok(()) => {
            let _ = worker::transaction(|| {
                catalog::set_phase(id, Phase::Contracted);
                jobs::finish_for_migration(id, "completed");
            });
        }
        Err(None) => {}
        Err(Some((code, message))) => {
            let _ = worker::transaction(|| catalog::fail_migration(id, code, &message, true));
        }
    }
}

/// Build a rename's carried indexes, one at a time, after its backfill.
/// `Ok(false)`: the job was cancelled meanwhile.
pub fn build_carried(id: i64, owner: pg_sys::Oid) -> Result<bool, String> {
    let (carried, schema, lock_timeout_ms) = worker::transaction(|| {
        let m = catalog::load_or_raise(id, false);
        let schema = catalog::current_schema_of(m.relid).unwrap_or_default();
        let timeout = jobs::load_row(id).map(|j| j.lock_timeout_ms).unwrap_or(2000);
        (crate::carry::list(id), schema, timeout)
    })?;
    for (c, state) in carried {
        if state == "valid" {
            continue;
        }
        let p = Plan {
            kind: "create_index".into(),
            index_sql: spi::qualified(&schema, &c.new_index),
            index_name: c.new_index.clone(),
            schema: schema.clone(),
            definition: c.definition.clone(),
            owner,
            search_path: "pg_catalog, pg_temp".into(),
            lock_timeout_ms: lock_timeout_ms.max(guc_lock_timeout()),
        };
        let _ = worker::transaction(|| crate::carry::set_state(id, &c.old_index, "building", None));
        worker::set_activity(&format!("zdm backfill {id}: building index {}", c.new_index));
        match attempts(id, &p) {
            Ok(()) => {
                let _ = worker::transaction(|| crate::carry::set_state(id, &c.old_index, "valid", None));
            }
            Err(None) => return Ok(false),
            Err(Some((_, message))) => {
                let _ = worker::transaction(|| crate::carry::set_state(id, &c.old_index, "failed", Some(&message)));
                return Err(message);
            }
        }
    }
    Ok(true)
}

fn guc_lock_timeout() -> i32 {
    crate::guc::LOCK_TIMEOUT_MS.get()
}
