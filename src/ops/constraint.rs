//! Constraint migrations — `not_null`, `check`, `foreign_key` — run as a
//! sequence of steps (see `steps`), each in its own transaction, by a
//! background worker acting as the role that asked:
//!
//!   1. ADD CONSTRAINT … NOT VALID        brief lock            phase expanded
//!   2. VALIDATE CONSTRAINT               SHARE UPDATE EXCLUSIVE  phase backfilled
//!   3. (not_null) SET NOT NULL + drop the check, brief lock      phase contracted
//!
//! Every step is idempotent and reads where the migration stands from the
//! catalog and pg_constraint, so a run interrupted anywhere (worker killed,
//! crash) finishes when started again. Violations found by VALIDATE remove
//! the constraint again and fail the migration with the matching SQLSTATE and
//! the number of violating rows; nothing half-added stays behind.

use crate::catalog::{self, as_catalog_owner, Migration, Phase, Step};
use crate::engine::locking::{self, LockPolicy, LockStats};
use crate::errors::{code_of, message_of};
use crate::subxact;
use crate::engine::process::{caught_transaction, set_activity, transaction};
use crate::engine::{gate, jobs, steps, Operation};
use crate::errors::{raise_with_detail, Code};
use crate::spi::{self, ident};
use crate::security;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a caller asked for; travels to the worker (DSM in autocommit mode).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Request {
    pub id: i64,
    pub kind: String,
    pub relid: u32,
    /// not_null: the column
    pub column: Option<String>,
    /// the constraint zdm adds (not_null: the temporary CHECK)
    pub constraint_name: String,
    /// `CHECK (...)` or `FOREIGN KEY (...) REFERENCES ...`
    pub definition: String,
    pub ref_relid: Option<u32>,
    /// who asked (display only: the work runs as the table's owner)
    pub started_by: String,
    /// the caller's search_path, to resolve names in a CHECK expression
    pub search_path: String,
    /// an in-flight rename filling a column this constraint reads: the steps
    /// start once its backfill is complete
    pub depends_on: Option<i64>,
    /// the caller's lock policy, which the job's steps run under (the
    /// request may be recorded by the worker, whose settings are its own)
    pub lock: LockPolicy,
}

impl Request {
    fn relid(&self) -> pg_sys::Oid {
        pg_sys::Oid::from(self.relid)
    }
}

/// Record the migration (unless it exists: a resumed run) and (re)queue its
/// job. `worker_owned`: called by the worker itself, which then owns the job.
pub fn record(req: &Request, worker_owned: bool) {
    let table = crate::introspect::migratable_table(req.relid());
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.migrations (id, kind, relid, table_schema, table_name, old_column, owner_name, started_by, \
                                         not_null_check, object_name, object_def, ref_relid, expr_search_path) \
             VALUES ($1, $2, $3::oid::regclass, $4, $5, $6, \
                     (SELECT r.rolname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $3), \
                     $7, CASE WHEN $2 = 'not_null' THEN $8 END, $8, $9, $10::oid::regclass, $11) \
             ON CONFLICT (id) DO UPDATE SET phase = CASE WHEN zdm.migrations.phase = 'aborted' THEN 'expanded' ELSE zdm.migrations.phase END, \
                     last_error = NULL, last_errcode = NULL, violations = NULL, updated_at = clock_timestamp()",
            &[
                req.id.into(),
                req.kind.as_str().into(),
                req.relid().into(),
                table.schema.as_str().into(),
                table.name.as_str().into(),
                req.column.as_deref().into(),
                req.started_by.as_str().into(),
                req.constraint_name.as_str().into(),
                req.definition.as_str().into(),
                req.ref_relid.map(pg_sys::Oid::from).into(),
                req.search_path.as_str().into(),
            ],
        );
        spi::exec_args(
            "INSERT INTO zdm.jobs (migration_id, database, depends_on, created_xid, lock_timeout_ms, lock_retries, \
                                   worker_pid, worker_started_at) \
             VALUES ($1, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()), $2, \
                     pg_catalog.pg_current_xact_id(), $3, $4, \
                     CASE WHEN $5 THEN pg_catalog.pg_backend_pid() END, \
                     CASE WHEN $5 THEN (SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()) END) \
             ON CONFLICT (migration_id) DO UPDATE SET state = 'queued', depends_on = excluded.depends_on, \
                     created_xid = excluded.created_xid, lock_timeout_ms = excluded.lock_timeout_ms, lock_retries = excluded.lock_retries, \
                     worker_pid = excluded.worker_pid, worker_started_at = excluded.worker_started_at, queued_at = clock_timestamp(), \
                     finished_at = NULL, last_error = NULL, throttle_reason = NULL \
               WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a \
                                  WHERE a.pid = zdm.jobs.worker_pid AND a.backend_start = zdm.jobs.worker_started_at)",
            &[
                req.id.into(),
                req.depends_on.into(),
                req.lock.timeout_ms.into(),
                req.lock.retries.into(),
                worker_owned.into(),
            ],
        );
    });
}

struct Failure {
    code: PgSqlErrorCode,
    message: String,
    /// already written to the catalog
    recorded: bool,
}

/// Everything a step needs, read fresh from the catalog.
struct Plan {
    id: i64,
    kind: String,
    relid: pg_sys::Oid,
    table: String,
    column: Option<String>,
    constraint: String,
    definition: String,
    reference: Option<(pg_sys::Oid, String)>,
    phase: Phase,
    /// the migration's owner, resolved by name: every step runs as this role
    owner: pg_sys::Oid,
    search_path: Option<String>,
}

impl Plan {
    /// A foreign key on a partitioned table before 18: leaf by leaf.
    fn by_leaves(&self) -> bool {
        steps::by_leaves(self.relid, self.kind == "foreign_key")
    }
}

fn load_plan(id: i64) -> Option<Plan> {
    let m = catalog::load(id, true)?;
    let (constraint, definition, reference, search_path) = as_catalog_owner(|| {
        spi::first_row(
            "SELECT m.object_name::text, m.object_def, m.ref_relid::oid, \
                    (SELECT format('%I.%I', n.nspname, r.relname) FROM pg_catalog.pg_class r \
                       JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace WHERE r.oid = m.ref_relid), \
                    m.expr_search_path FROM zdm.migrations m WHERE m.id = $1",
            &[id.into()],
            |r| {
                let reference = match (r.get::<pg_sys::Oid>(3)?, r.get::<String>(4)?) {
                    (Some(o), Some(s)) => Some((o, s)),
                    _ => None,
                };
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    reference,
                    r.get::<String>(5)?,
                ))
            },
        )
    })?;
    let owner = security::resolve_owner(&m.owner_name, id);
    Some(Plan {
        id,
        kind: m.kind.clone(),
        relid: m.relid,
        table: m.table_sql(),
        column: m.old_column.clone(),
        constraint,
        definition,
        reference,
        phase: m.phase,
        owner,
        search_path,
    })
}

/// What a step returns; the lock it waited for, if any, goes to the event log.
trait StepResult {
    fn lock(&self) -> Option<&LockStats> {
        None
    }
}
impl StepResult for Option<LockStats> {
    fn lock(&self) -> Option<&LockStats> {
        self.as_ref()
    }
}
impl StepResult for (i64, String, String, Option<String>, String) {}

/// Run one step in its own transaction, as the migration's role; an error
/// rolls the step back and comes back with its SQLSTATE. A deadlock (which
/// a worker loses on purpose: `locking::lose_deadlocks`) or a serialization
/// failure rolls back the whole step: it is run again, up to the job's
/// attempts, after the usual backoff.
fn step<R: StepResult>(id: i64, name: &str, f: impl Fn(&Plan) -> R) -> Result<Option<R>, Failure> {
    let mut attempt = 1;
    loop {
        match step_once(id, name, &f) {
            Err(e) if matches!(
                e.code,
                PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
            ) && attempt < LockPolicy::current().attempts =>
            {
                set_activity(&format!("zdm constraint {id}: {name}: attempt {attempt} failed ({}); trying again", e.message));
                locking::interruptible_sleep(locking::retry_pause(attempt));
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn step_once<R: StepResult>(id: i64, name: &str, f: &impl Fn(&Plan) -> R) -> Result<Option<R>, Failure> {
    let started = Instant::now();
    // (caught: a deadlock outside the step's body — taking the migration's
    // row, logging the step — keeps its SQLSTATE and is retried too)
    let outcome = caught_transaction(|| {
        let Some(plan) = load_plan(id) else { return Ok(None) };
        set_activity(&format!("zdm constraint {id}: {name} on {}", plan.table));
        let r = subxact::attempt(|| security::as_owner(plan.owner, || f(&plan)));
        match r {
            Ok(v) => {
                let lock = v.lock();
                catalog::log_step(Step {
                    migration: id,
                    step: name,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    lock_wait_ms: lock.map(|l| l.wait_ms),
                    lock_attempts: lock.map(|l| l.attempts),
                    detail: Some(plan.constraint.clone()),
                });
                Ok(Some(v))
            }
            Err(e) => Err(Failure { code: code_of(&e), message: message_of(&e), recorded: false }),
        }
    });
    match outcome {
        Ok(r) => r,
        Err(e) if locking::retryable(code_of(&e)) => Err(Failure { code: code_of(&e), message: message_of(&e), recorded: false }),
        Err(e) => Err(Failure { code: PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message: message_of(&e), recorded: false }),
    }
}

/// A step was not run because the job was cancelled: stop quietly, keeping
/// the step reached (calling again resumes, zdm.abort removes it).
fn cancelled() -> Failure {
    Failure { code: PgSqlErrorCode::ERRCODE_QUERY_CANCELED, message: "cancelled".into(), recorded: true }
}

pub struct Constraint;

/// The kind a rename's contract uses to hand over a foreign key that now
/// references the new column (`ops::column`).
pub const FOREIGN_KEY: &str = "foreign_key";

impl Operation for Constraint {
    fn kinds(&self) -> &'static [&'static str] {
        &["not_null", "check", FOREIGN_KEY]
    }
    fn worker_type(&self) -> &'static str {
        "zdm constraint"
    }
    fn validate(&self, migration: i64) -> bool {
        run_steps(migration)
    }
    /// The last step completes the job in its own transaction.
    fn job_done(&self, _migration: i64) {}
    fn abort(&self, m: &Migration) {
        abort(m)
    }
    fn record_handoff(&self, payload: &[u8]) -> Result<(), String> {
        let request: Request = serde_json::from_slice(payload).map_err(|e| format!("unreadable request: {e}"))?;
        record(&request, true);
        Ok(())
    }
}

/// Drive the migration to its end from wherever it stands, in a worker;
/// pause and cancel take effect between steps. True when it finished.
fn run_steps(id: i64) -> bool {
    let result = (|| -> Result<(), Failure> {
        if !gate::open(id) {
            return Err(cancelled());
        }
        // 1. ADD CONSTRAINT … NOT VALID (skipped if it is there already).
        //    If it fails nothing was added: the migration is over.
        //    A foreign key on a partitioned table before 18: on each leaf.
        step(id, "add constraint NOT VALID", |p| {
            (steps::constraint_validated(p.relid, &p.constraint).is_none() && p.phase == Phase::Expanded).then(|| {
                let reference = p.reference.as_ref().map(|(o, s)| (*o, s.as_str()));
                p.use_callers_search_path();
                if p.by_leaves() {
                    return steps::add_not_valid_by_leaves(p.relid, &p.constraint, &p.definition, reference);
                }
                Some(steps::add_not_valid(p.relid, &p.table, &p.constraint, &p.definition, reference))
            })
            .flatten()
        })
        .map_err(|f| {
            let _ = transaction(|| fail(id, &f, true));
            Failure { recorded: true, ..f }
        })?;
        if !gate::open(id) {
            return Err(cancelled());
        }
        // 2. VALIDATE: scan under SHARE UPDATE EXCLUSIVE. A partitioned
        //    table's CHECK leaf by leaf first, each in its own transaction: a
        //    crash resumes at the next leaf, and the parent's VALIDATE skips
        //    the leaves already valid.
        let leaves = transaction(|| load_plan(id).map(|p| steps::unvalidated_partitions(p.relid, &p.constraint)).unwrap_or_default()).unwrap_or_default();
        for (leaf, leaf_sql) in leaves {
            if !gate::open(id) {
                return Err(cancelled());
            }
            step(id, "validate constraint on partition", |p| {
                set_activity(&format!("zdm constraint {id}: validate on partition {leaf_sql}"));
                Some(steps::validate(leaf, &leaf_sql, &p.constraint, None))
            })
            .map_err(|f| validate_failed(id, f))?;
        }
        let validated = step(id, "validate constraint", |p| {
            let lock = (steps::constraint_validated(p.relid, &p.constraint) == Some(false)).then(|| {
                let reference = p.reference.as_ref().map(|(o, s)| (*o, s.as_str()));
                steps::validate(p.relid, &p.table, &p.constraint, reference)
            });
            catalog::set_phase(p.id, Phase::Backfilled);
            lock
        });
        validated.map_err(|f| validate_failed(id, f))?;
        if !gate::open(id) {
            return Err(cancelled());
        }
        // 3. not_null: the validated clause becomes the column's NOT NULL
        //    (steps::finish_not_null); a foreign key by leaves: the key on
        //    the partitioned table, attaching the leaves' (no scan).
        step(id, "finish", |p| {
            let lock = match (p.kind.as_str(), &p.column) {
                ("not_null", Some(col)) => Some(steps::finish_not_null(p.relid, &p.table, col, &p.constraint)),
                _ if p.by_leaves() && steps::constraint_validated(p.relid, &p.constraint).is_none() => {
                    let reference = p.reference.as_ref().map(|(o, s)| (*o, s.as_str()));
                    p.use_callers_search_path();
                    Some(steps::attach_by_leaves(p.relid, &p.table, &p.constraint, &p.definition, reference))
                }
                _ => None,
            };
            catalog::set_phase(p.id, Phase::Contracted);
            jobs::finish_for_migration(p.id, "completed");
            lock
        })?;
        Ok(())
    })();
    if let Err(f) = &result {
        if !f.recorded {
            let _ = transaction(|| fail(id, f, false));
        }
    }
    result.is_ok()
}

/// VALIDATE failed: rows that violate it, or an error of the data or the
/// expression (division by zero, a user function raising), end the
/// migration and remove the NOT VALID constraint (it would fail again); an
/// interruption keeps the step reached.
fn validate_failed(id: i64, f: Failure) -> Failure {
    if matches!(
        f.code,
        PgSqlErrorCode::ERRCODE_CHECK_VIOLATION | PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION | PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION
    ) {
        return reject_violations(id, f);
    }
    if !is_interruption(f.code) {
        return reject_error(id, f);
    }
    f
}

/// Errors after which calling again may well succeed: the step reached is kept.
fn is_interruption(code: PgSqlErrorCode) -> bool {
    matches!(
        code,
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
            | PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN
            | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
            | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
            | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
            | PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            | PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES
    )
}

/// VALIDATE failed with an error of the data or the expression: remove the
/// constraint and fail with that error's SQLSTATE.
fn reject_error(id: i64, f: Failure) -> Failure {
    let removed = step(id, "remove constraint after error", |p| {
        steps::drop_constraint(p.relid, &p.table, &p.constraint);
        if p.by_leaves() {
            steps::drop_by_leaves(p.relid, &p.constraint);
        }
        None::<LockStats>
    });
    let failure = Failure {
        recorded: true,
        message: if removed.is_ok() { format!("{}; the constraint was not added", f.message) } else { f.message.clone() },
        ..f
    };
    let _ = transaction(|| fail(id, &failure, removed.is_ok()));
    failure
}

/// VALIDATE found violating rows: count them, remove the constraint, and fail
/// with the SQLSTATE that fits the kind.
fn reject_violations(id: i64, f: Failure) -> Failure {
    let counted = step(id, "remove constraint after violations", |p| {
        let count = count_violations(p);
        steps::drop_constraint(p.relid, &p.table, &p.constraint);
        if p.by_leaves() {
            steps::drop_by_leaves(p.relid, &p.constraint);
        }
        (count, p.kind.clone(), p.table.clone(), p.column.clone(), p.constraint.clone())
    });
    let failure = match counted {
        Ok(Some((n, kind, table, column, constraint))) => match kind.as_str() {
            "not_null" => Failure {
                recorded: true,
                code: PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                message: format!(
                    "column {} of table {table} contains {n} NULL value(s); it was left nullable",
                    ident(column.as_deref().unwrap_or_default())
                ),
            },
            "check" => Failure {
                recorded: true,
                code: PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
                message: format!("{n} row(s) of table {table} violate check constraint {}; it was not added", ident(&constraint)),
            },
            _ => Failure {
                recorded: true,
                code: PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
                message: format!(
                    "{n} row(s) of table {table} have no matching row for foreign key {}; it was not added",
                    ident(&constraint)
                ),
            },
        },
        _ => Failure { recorded: true, ..f },
    };
    let _ = transaction(|| fail(id, &failure, true));
    failure
}

impl Plan {
    /// A CHECK expression's names resolve as they did for the caller (inside
    /// `as_owner`'s nest level: rolled back after the step).
    fn use_callers_search_path(&self) {
        if let Some(path) = self.search_path.as_deref().filter(|_| self.kind == "check") {
            spi::exec_args("SELECT pg_catalog.set_config('search_path', $1, true)", &[path.into()]);
        }
    }
}

fn count_violations(p: &Plan) -> i64 {
    p.use_callers_search_path();
    let sql = match p.kind.as_str() {
        "not_null" => format!("SELECT count(*) FROM {} WHERE {} IS NULL", p.table, ident(p.column.as_deref().unwrap_or_default())),
        "check" => format!("SELECT count(*) FROM {} WHERE NOT {}", p.table, p.definition.trim_start_matches("CHECK ")),
        _ => {
            // The key on the table, or (by leaves, before the attach) a leaf's.
            let key = format!(
                "(SELECT o.oid FROM pg_catalog.pg_constraint o WHERE o.conname = $2 AND o.contype = 'f' \
                    AND o.conrelid IN (SELECT t.relid FROM {} t) ORDER BY o.conrelid = $1 DESC LIMIT 1)",
                crate::tree::partition_tree_sql(1)
            );
            let cols = spi::one::<Vec<String>>(
                &format!(
                    "SELECT array_agg(format('x.%I = r.%I', a.attname, b.attname) ORDER BY k.ord) \
                       FROM pg_catalog.pg_constraint c, unnest(c.conkey, c.confkey) WITH ORDINALITY k(ck, fk, ord), \
                            pg_catalog.pg_attribute a, pg_catalog.pg_attribute b \
                      WHERE c.oid = {key} AND a.attrelid = c.conrelid AND a.attnum = k.ck \
                        AND b.attrelid = c.confrelid AND b.attnum = k.fk"
                ),
                &[p.relid.into(), p.constraint.as_str().into()],
            )
            .unwrap_or_default();
            let not_null = spi::one::<String>(
                &format!(
                    "SELECT string_agg(format('x.%I IS NOT NULL', a.attname), ' AND ') \
                       FROM pg_catalog.pg_constraint c, unnest(c.conkey) k(ck), pg_catalog.pg_attribute a \
                      WHERE c.oid = {key} AND a.attrelid = c.conrelid AND a.attnum = k.ck"
                ),
                &[p.relid.into(), p.constraint.as_str().into()],
            )
            .unwrap_or_else(|| "true".into());
            let reference = p.reference.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
            format!(
                "SELECT count(*) FROM {} x WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {reference} r WHERE {})",
                p.table,
                cols.join(" AND ")
            )
        }
    };
    spi::one::<i64>(&sql, &[]).unwrap_or(0)
}

/// Record a failure. `aborted`: the constraint was removed, the migration is
/// over; otherwise it stays where it stands and can be resumed.
fn fail(id: i64, f: &Failure, aborted: bool) {
    catalog::fail_migration(id, f.code, &f.message, aborted);
}

/// Raise the stored failure of a migration, if it failed.
pub fn raise_if_failed(id: i64) {
    let row = as_catalog_owner(|| {
        spi::first_row(
            "SELECT m.last_error, m.last_errcode, j.state FROM zdm.migrations m LEFT JOIN zdm.jobs j ON j.migration_id = m.id WHERE m.id = $1",
            &[id.into()],
            |r| Ok((r.get::<String>(1)?, r.get::<i32>(2)?, r.get::<String>(3)?)),
        )
    });
    if let Some((Some(message), code, Some(state))) = row {
        if state == "failed" {
            let code = code.map(PgSqlErrorCode::from).unwrap_or(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE);
            let hint = match code {
                Code::ERRCODE_NOT_NULL_VIOLATION => "Backfill the NULLs first (e.g. UPDATE … SET col = … WHERE col IS NULL in batches), then call zdm.validate_not_null again.".to_string(),
                Code::ERRCODE_CHECK_VIOLATION | Code::ERRCODE_FOREIGN_KEY_VIOLATION => "Fix or delete the violating rows, then call it again.".to_string(),
                _ => format!("Call it again to resume from the step it reached, or zdm.abort({id}) to remove what it added."),
            };
            let message = catalog::error_text_for_caller(id).unwrap_or(message);
            raise_with_detail(code, message, format!("zdm migration {id}"), hint);
        }
    }
}

/// Abort a constraint migration: remove the constraint zdm added (if still
/// NOT VALID or a not_null helper check) and close the migration.
fn abort(m: &Migration) {
    let started = Instant::now();
    jobs::finish_for_migration(m.id, "cancelled");
    let name = as_catalog_owner(|| {
        spi::one::<String>("SELECT object_name::text FROM zdm.migrations WHERE id = $1", &[m.id.into()])
    });
    if let Some(name) = name {
        let validated = steps::constraint_validated(m.relid, &name);
        // A not_null helper check always goes; a finished CHECK / FK stays.
        if validated == Some(false) || (m.kind == "not_null" && validated.is_some()) {
            steps::drop_constraint(m.relid, &m.table_sql(), &name);
        }
        if validated.is_none() && steps::by_leaves(m.relid, m.kind == "foreign_key") {
            steps::drop_by_leaves(m.relid, &name);
        }
    }
    catalog::set_phase(m.id, Phase::Aborted);
    catalog::log_abort(m.id, started, None, "removed the constraint zdm had added, if any".into());
}
