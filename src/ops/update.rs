//! A batched data migration: `zdm.update_in_batches` runs `UPDATE tbl SET
//! <set> WHERE <where>` as a job over the table's heap blocks, on the same
//! throttled, resumable, parallel batches as a backfill (`column::backfill`),
//! as the table's owner, security-restricted, with the caller's search_path
//! recorded at the start. Each batch updates the rows of its block range
//! that match when it visits them, and counts the rows it visited.
//!
//! A row the application moves (an UPDATE writes its new version elsewhere)
//! into a block the job has not visited yet is visited again there: the SET
//! must be idempotent, or the WHERE must exclude rows already done. Rows
//! inserted after the job started are beyond its last block and not visited.
//!
//! The user's text goes into the batch's UPDATE between fixed delimiters
//! (`backfill::statement`); it is checked at the start to parse as exactly
//! one SET list and one boolean expression in that very statement, so a
//! `;`, a second statement or a comment cannot reach past them.

use super::column::backfill;
use crate::catalog::{self, Migration, Phase};
use crate::engine::{jobs, Batch, Operation, Share};
use crate::errors::{raise, Code};
use crate::spi::{self, literal};
use crate::{introspect, security, tree};
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::Instant;

pub static UPDATE: Update = Update;

pub struct Update;

impl Operation for Update {
    fn kinds(&self) -> &'static [&'static str] {
        &["update"]
    }
    fn worker_type(&self) -> &'static str {
        "zdm backfill"
    }
    fn has_backfill(&self) -> bool {
        true
    }
    fn backfill_batch(&self, migration: i64, batch_size: i32, share: Share) -> Batch {
        backfill::step(migration, batch_size, share, update_rows)
    }
    /// Every block visited: the job is complete (there is no contract).
    fn job_done(&self, migration: i64) {
        catalog::set_phase(migration, Phase::Contracted);
        jobs::finish_for_migration(migration, "completed");
    }
    /// Stops the job. Rows already updated stay updated: each batch committed.
    fn abort(&self, m: &Migration) {
        let started = Instant::now();
        jobs::finish_for_migration(m.id, "cancelled");
        catalog::fold_ranges(m.id);
        catalog::set_phase(m.id, Phase::Aborted);
        catalog::log_abort(m.id, started, None, "stopped; the rows its batches updated stay updated".into());
    }
}

/// The job's SET and WHERE, and the search_path they resolve names with.
fn update_rows(m: &Migration) -> backfill::Rows {
    let (set, path) = catalog::as_catalog_owner(|| {
        spi::first_row(
            "SELECT object_def, expr_search_path FROM zdm.migrations WHERE id = $1",
            &[m.id.into()],
            |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?)),
        )
    })
    .unwrap_or_default();
    backfill::Rows {
        todo: m.using_expr.clone().unwrap_or_else(|| "true".into()),
        set,
        synced: false,
        search_path: path,
        count_visited: true,
        without_trigger: None,
    }
}

/// Start the job, in the caller's transaction. Returns the migration id and
/// whether this call created it (false: the same job is in flight).
pub fn start(relid: pg_sys::Oid, set: &str, condition: Option<&str>, caller_path: &str) -> (i64, bool) {
    let table = introspect::owned_table(relid);
    let t = table.sql();
    let condition_sql = condition.unwrap_or("true");
    let targets = check_text(set, condition_sql);
    let owner = introspect::table_owner(relid);
    let caller = catalog::current_user();
    super::analyse::with_search_path(caller_path, || refuse_open_schemas(owner, &t));
    security::as_owner(owner, || {
        introspect::migratable_table(relid);
        super::column::refuse_deferred_triggers(relid, &t);
        // Analysed and planned, not run: unknown columns, type errors and
        // missing tables are the caller's error now, with their SQLSTATE.
        let path = CString::new(caller_path).unwrap_or_default();
        security::with_guc_nest_level(&[(c"search_path", path.as_c_str())], || {
            spi::exec(&format!("EXPLAIN (COSTS OFF) {}", backfill::statement(&format!("ONLY {t}"), set, condition_sql, "false")))
        });
        if let Some(id) = same_in_flight(relid, set, condition) {
            pgrx::notice!("zdm migration {id} is already running this update on {t}; returning its id");
            return (id, false);
        }
        // The columns it writes: no other migration may rename or drop them
        // meanwhile (they are protected while the job is in flight).
        let written: Vec<&str> = targets.iter().map(String::as_str).collect();
        if let Some((id, phase)) = catalog::in_flight_on_columns(relid, &written) {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("a column this update of {t} writes is under zdm migration {id} (phase {phase})"),
                format!("Finish it with zdm.contract({id}) or undo it with zdm.abort({id}) first."),
            );
        }
        let (rows_estimate, rows_per_block) = introspect::row_estimates(&table, tree::blocks(relid));
        let id = catalog::next_id();
        catalog::as_catalog_owner(|| {
            spi::exec_args(
                "INSERT INTO zdm.migrations (id, kind, relid, table_schema, table_name, owner_name, started_by, rel_blocks, \
                   rows_estimate, rows_per_block, relfilenode, object_def, using_expr, expr_search_path, reads_columns) \
                 VALUES ($1, 'update', $2::oid::regclass, $3, $4, \
                   (SELECT r.rolname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $2), \
                   (SELECT rolname FROM pg_catalog.pg_roles WHERE oid = $5), $6, $7, $8, \
                   pg_catalog.pg_relation_filenode($2::oid::regclass), $9, $10, $11, $12::text[]::name[])",
                &[
                    id.into(),
                    relid.into(),
                    table.schema.as_str().into(),
                    table.name.as_str().into(),
                    caller.into(),
                    tree::blocks(relid).into(),
                    rows_estimate.into(),
                    rows_per_block.into(),
                    set.into(),
                    condition.into(),
                    caller_path.into(),
                    targets.clone().into(),
                ],
            )
        });
        catalog::log_step(catalog::Step {
            migration: id,
            step: "update: started",
            duration_ms: 0.0,
            lock_wait_ms: None,
            lock_attempts: None,
            detail: Some(format!("UPDATE {t} SET {set} WHERE {condition_sql}")),
        });
        (id, true)
    })
}

/// The job's text resolves names with the caller's search_path in every
/// batch, as the owner: a schema on it where a role other than the owner,
/// a role it is a member of, or a superuser may create objects would let that role put a function or
/// operator in the job's way (42501). pg_catalog is searched first anyway;
/// pg_temp is never searched for functions.
fn refuse_open_schemas(owner: pg_sys::Oid, t: &str) {
    let open = spi::one::<String>(
        "WITH s AS (SELECT n.oid, n.nspname, n.nspowner AS owner \
                      FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY (pg_catalog.current_schemas(false)) AND n.nspname <> 'pg_catalog'), \
              creators AS (SELECT s.nspname, s.owner AS who FROM s \
                           UNION ALL SELECT s.nspname, a.grantee FROM s, pg_catalog.aclexplode((SELECT nspacl FROM pg_catalog.pg_namespace WHERE oid = s.oid)) a \
                            WHERE a.privilege_type = 'CREATE'), \
              trusted AS (WITH RECURSIVE m(r) AS (SELECT $1::pg_catalog.oid UNION \
                            SELECT a.roleid FROM pg_catalog.pg_auth_members a JOIN m ON a.member = m.r) SELECT r FROM m) \
         SELECT pg_catalog.string_agg(DISTINCT pg_catalog.quote_ident(nspname::text), ', ') \
           FROM (SELECT nspname, CASE WHEN who = 'pg_database_owner'::pg_catalog.regrole \
                        THEN (SELECT datdba FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) ELSE who END AS who \
                   FROM creators) c \
          WHERE who = 0 OR NOT (who IN (SELECT r FROM trusted) \
                                OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = who AND r.rolsuper))",
        &[owner.into()],
    );
    if let Some(schemas) = open {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("the search_path of this update of {t} includes schema(s) {schemas}, where roles other than the table's owner may create objects"),
            "The job resolves the names in its SET and WHERE in every batch, as the owner: SET search_path to schemas only the owner (or a superuser) can write to, or schema-qualify the names and SET search_path = pg_catalog.",
        );
    }
}

/// The same update (table, SET and WHERE) in flight.
fn same_in_flight(relid: pg_sys::Oid, set: &str, condition: Option<&str>) -> Option<i64> {
    catalog::as_catalog_owner(|| {
        spi::one::<i64>(
            "SELECT id FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = 'update' AND object_def = $2 \
                AND using_expr IS NOT DISTINCT FROM $3 AND phase IN ('expanded', 'backfilling', 'backfilled') ORDER BY id DESC LIMIT 1",
            &[relid.into(), set.into(), condition.into()],
        )
    })
}

/// 42601 unless `set` and `condition` parse, in the batch's own statement,
/// as exactly one SET list and one condition: one statement, an UPDATE
/// with no FROM, RETURNING or WITH, whose WHERE is `(condition) AND <the
/// range>` — nothing of the text reaches past its delimiters.
/// Returns the columns the SET list writes.
fn check_text(set: &str, condition: &str) -> Vec<String> {
    // Parsed as the batch runs it, and again without the line breaks that
    // close the text: a trailing `--` comment would swallow the rest there.
    check_parsed(set, condition, " ");
    check_parsed(set, condition, "\n")
}

fn check_parsed(set: &str, condition: &str, end: &str) -> Vec<String> {
    let sentinel = "zdm_block_range";
    let sql = backfill::statement_with("zdm_table", set, condition, sentinel, end);
    let refuse = |why: &str| -> ! {
        raise(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("update_in_batches takes one SET list and one WHERE condition: {why}"),
            format!("set: {}, where: {}. No ';', second statement, FROM, RETURNING or comment that swallows the rest.", literal(set), literal(condition)),
        )
    };
    let text = CString::new(sql).unwrap_or_else(|_| refuse("the text contains a NUL byte"));
    let parsed = crate::subxact::attempt(|| unsafe {
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() || (*list).length != 1 {
            return Err("more than one statement");
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt as *mut pg_sys::UpdateStmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_UpdateStmt {
            return Err("not an UPDATE");
        }
        let u = &*stmt;
        if !u.fromClause.is_null() || crate::compat::update_returns(u) || !u.withClause.is_null() || u.targetList.is_null() {
            return Err("a FROM, RETURNING or WITH clause");
        }
        let w = u.whereClause as *mut pg_sys::BoolExpr;
        if w.is_null() || (*w).xpr.type_ != pg_sys::NodeTag::T_BoolExpr || (*w).boolop != pg_sys::BoolExprType::AND_EXPR {
            return Err("the condition does not stand on its own");
        }
        let args = (*w).args;
        let last = *(*args).elements.add((*args).length as usize - 1);
        let last = last.ptr_value as *mut pg_sys::ColumnRef;
        let is_sentinel = !last.is_null()
            && (*last).type_ == pg_sys::NodeTag::T_ColumnRef
            && (*(*last).fields).length == 1
            && {
                let f = (*(*(*last).fields).elements).ptr_value as *mut pg_sys::Node;
                (*f).type_ == pg_sys::NodeTag::T_String
                    && std::ffi::CStr::from_ptr((*(f as *mut pg_sys::String)).sval).to_bytes() == sentinel.as_bytes()
            };
        if !is_sentinel {
            return Err("the condition does not stand on its own");
        }
        let targets = (*u.targetList).length as usize;
        Ok((0..targets)
            .filter_map(|i| {
                let target = (*(*u.targetList).elements.add(i)).ptr_value as *mut pg_sys::ResTarget;
                (!(*target).name.is_null()).then(|| std::ffi::CStr::from_ptr((*target).name).to_string_lossy().into_owned())
            })
            .collect())
    });
    match parsed {
        Ok(Ok(targets)) => targets,
        Ok(Err(why)) => refuse(why),
        Err(e) => refuse(&crate::errors::message_of(&e)),
    }
}
