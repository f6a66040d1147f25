//! Add a column filled from the row: `zdm.add_column`. Expand adds it
//! nullable and without a default that rewrites anything, and — when rows
//! need a value computed per row (a `fill`, or a volatile default) — the
//! fill trigger (`trigger::fill`), which keeps it right while old and new
//! application code run side by side; the backfill fills the existing rows
//! on the shared block-range batches (`column::backfill`); contract sets the
//! default and makes the column NOT NULL through a validated constraint (no
//! scan under ACCESS EXCLUSIVE) and drops the trigger; abort drops the
//! column. Without a fill a non-volatile default is PostgreSQL's own
//! catalog-only fast default: no trigger, no backfill.
//!
//! The fill is analysed like a type change's conversion (`analyse`): one
//! immutable expression over the row's own columns, coerced to the type.

use super::analyse::{self, format_type, resolve_type, with_search_path, Reads};
use super::column::{self, backfill};
use crate::catalog::{self, Migration, Phase, Step};
use crate::engine::{jobs, locking, steps, Batch, Operation, Share};
use crate::errors::{raise, Code};
use crate::spi::{self, ident, literal};
use crate::{guard, introspect, security, tree};
use pgrx::prelude::*;
use std::time::Instant;

pub static ADD_COLUMN: AddColumn = AddColumn;

pub struct AddColumn;

impl Operation for AddColumn {
    fn kinds(&self) -> &'static [&'static str] {
        &["add_column"]
    }
    fn worker_type(&self) -> &'static str {
        "zdm backfill"
    }
    fn has_backfill(&self) -> bool {
        true
    }
    fn backfill_batch(&self, migration: i64, batch_size: i32, share: Share) -> Batch {
        backfill::step(migration, batch_size, share, fill_rows)
    }
    /// The NOT NULL constraint added NOT VALID at expand, validated after the backfill.
    fn validate(&self, migration: i64) -> bool {
        column::validate::run(migration)
    }
    fn has_contract(&self) -> bool {
        true
    }
    fn contract(&self, m: &Migration) {
        contract(m)
    }
    fn abort(&self, m: &Migration) {
        abort(m)
    }
}

/// The backfill's rows: those whose column is still NULL. The batch sets it
/// to NULL and the fill trigger computes it (naming the row if it fails).
fn fill_rows(m: &Migration) -> backfill::Rows {
    let c = ident(m.new_col());
    backfill::Rows { todo: format!("{c} IS NULL"), set: format!("{c} = NULL"), synced: true, search_path: None, count_visited: false, without_trigger: None }
}

/// What the caller asked for.
pub struct Request<'a> {
    pub relid: pg_sys::Oid,
    pub column: &'a str,
    pub type_text: &'a str,
    pub fill: Option<&'a str>,
    pub not_null: bool,
    pub default_expr: Option<&'a str>,
    /// names in the type, the fill and the default resolve with it
    pub caller_path: &'a str,
}

/// Expand, in the caller's transaction. Returns the migration id, whether
/// this call created it (false: a repeated call found it in flight), and
/// whether it has rows to backfill.
pub fn expand(r: &Request) -> (i64, bool) {
    let started = Instant::now();
    let table = introspect::owned_table(r.relid);
    let t = table.sql();
    let col = r.column;
    if col.is_empty() || col.len() > 63 {
        raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid column name {}", literal(col)), "Column names are 1 to 63 bytes long.");
    }
    let (type_oid, typmod) = with_search_path(r.caller_path, || resolve_type(r.type_text, "type"));
    let type_sql = format_type(type_oid, typmod);
    if r.not_null && r.fill.is_none() && r.default_expr.is_none() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("column {} of {t} cannot be NOT NULL with neither a fill nor a default", ident(col)),
            "Existing rows need a value: pass fill => '<expression of the row>' or default_expr => '<default>'.",
        );
    }
    let owner = introspect::table_owner(r.relid);
    let caller = catalog::current_user();
    security::as_owner(owner, || {
        // The expressions analysed as the owner, before any lock.
        let analysed = || {
            let fill = r.fill.map(|f| analyse::expression(r.relid, &table.name, "fill", f, Reads::Row, type_oid, typmod, true, r.caller_path));
            let default = r
                .default_expr
                .map(|d| analyse::expression(r.relid, &table.name, "default_expr", d, Reads::Nothing, type_oid, typmod, false, r.caller_path));
            (fill, default)
        };
        // 42703, 42P17, 42846 … before anything else.
        let (fill, default) = analysed();
        if let Some(id) = same_in_flight(r.relid, col, &type_sql) {
            // A migration tool re-running its step: the same request, or 55000.
            let filler = fill.as_ref().or(default.as_ref().filter(|d| d.volatile)).map(|f| f.sql.clone());
            let asked = (filler, default.as_ref().map(|d| d.sql.clone()), r.not_null);
            if recorded_request(id) != asked {
                raise(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("zdm migration {id} is already adding column {} to {t}, with another fill, default or NOT NULL", ident(col)),
                    format!("Finish it with zdm.contract({id}), or undo it with zdm.abort({id}) and call zdm.add_column again."),
                );
            }
            pgrx::notice!("zdm migration {id} is already adding column {} to {t}; returning its id", ident(col));
            return (id, false);
        }
        refuse_constrained_domain(type_oid, &type_sql);
        let reads: Vec<String> = fill.as_ref().map(|f| column_names(r.relid, &f.reads)).unwrap_or_default();
        let check = || {
            introspect::migratable_table(r.relid);
            refuse_existing(r.relid, &t, col);
            // The column and what its fill reads: no other migration may
            // drop, rename or fill them meanwhile (nor this one theirs).
            let mut touched: Vec<&str> = reads.iter().map(String::as_str).collect();
            touched.push(col);
            if let Some((id, phase)) = catalog::in_flight_on_columns(r.relid, &touched) {
                raise(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("column {} of table {t}, or a column its fill reads, is already under zdm migration {id} (phase {phase})", ident(col)),
                    format!("Finish it with zdm.contract({id}) or undo it with zdm.abort({id}) first."),
                );
            }
            column::refuse_deferred_triggers(r.relid, &t);
        };
        check();
        let (rows_estimate, rows_per_block) = introspect::row_estimates(&table, tree::blocks(r.relid));
        let lock = locking::lock_table(r.relid, &t, "ACCESS EXCLUSIVE");
        check();
        let (fill, default) = analysed();
        let id = catalog::next_id();
        if fill.is_some() {
            // A user's BEFORE trigger firing after the fill (name order)
            // could change what it read after it computed the column.
            column::refuse_later_triggers(r.relid, &t, &format!("zdm_fill_{id}"), "zdm.add_column", "what the fill reads after zdm filled the column");
        }
        let every = tree::scan_target(r.relid, &t);
        let c = ident(col);
        // What fills the rows: the fill, else a volatile default (evaluated
        // per row by the trigger and the backfill instead of a rewrite).
        let filler = fill.as_ref().or(default.as_ref().filter(|d| d.volatile));
        let trigger = filler.map(|_| format!("zdm_fill_{id}"));
        match (&fill, &default) {
            // A catalog-only fast default (or none): the rows have it already.
            (None, Some(d)) if !d.volatile => spi::exec(&format!("ALTER TABLE {every} ADD COLUMN {c} {type_sql} DEFAULT {}", d.sql)),
            (None, None) => spi::exec(&format!("ALTER TABLE {every} ADD COLUMN {c} {type_sql} DEFAULT NULL")),
            _ => {
                // DEFAULT NULL: no rewrite, and a domain's default must not
                // fill the existing rows (they would look filled).
                spi::exec(&format!("ALTER TABLE {every} ADD COLUMN {c} {type_sql} DEFAULT NULL"));
                if let (None, Some(d)) = (&fill, &default) {
                    // A volatile default without a fill: new rows get it as
                    // their default from now on.
                    spi::exec(&format!("ALTER TABLE {every} ALTER COLUMN {c} SET DEFAULT {}", d.sql));
                }
            }
        }
        if let Some(trigger) = &trigger {
            column::install_trigger(&t, trigger, "zdm.fill_trigger", &[]);
        }
        // NOT NULL travels as a NOT VALID constraint: it holds for every write
        // from now on, and is validated after the backfill without a long lock.
        let not_null_check = r.not_null.then(|| {
            let name = spi::with_suffix(&format!("zdm_{id}_{col}"), "_not_null");
            spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} {} NOT VALID", ident(&name), steps::not_null_clause(col)));
            name
        });
        catalog::insert_column_migration(
            id,
            &catalog::NewColumnMigration {
                kind: "add_column",
                relid: r.relid,
                schema: &table.schema,
                table: &table.name,
                old_column: None,
                new_column: col,
                rel_blocks: if filler.is_some() { tree::blocks(r.relid) } else { 0 },
                rows_estimate,
                rows_per_block,
                started_by: caller,
                new_type: Some(&type_sql),
                using_expr: filler.map(|f| f.sql.as_str()),
                using_tree: filler.map(|f| f.tree.as_str()),
            },
        );
        catalog::set_objects(id, trigger.as_deref(), not_null_check.as_deref(), &[]);
        catalog::as_catalog_owner(|| {
            spi::exec_args(
                "UPDATE zdm.migrations SET object_def = $2, reads_columns = $3::text[]::name[] WHERE id = $1",
                &[id.into(), default.as_ref().map(|d| d.sql.as_str()).into(), reads.clone().into()],
            )
        });
        if filler.is_none() {
            catalog::set_phase(id, Phase::Backfilled); // nothing to fill
        }
        catalog::log_step(Step {
            migration: id,
            step: "expand",
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            lock_wait_ms: Some(lock.wait_ms),
            lock_attempts: Some(lock.attempts),
            detail: Some(format!(
                "added column {c} {type_sql}{}{}{}",
                match (&fill, &default) {
                    (Some(f), _) => format!("; trigger {} fills it with {}", ident(trigger.as_deref().unwrap_or_default()), f.sql),
                    (None, Some(d)) if d.volatile => format!("; volatile default {}: the backfill fills existing rows", d.sql),
                    (None, Some(d)) => format!("; default {} (catalog only, no backfill)", d.sql),
                    (None, None) => String::new(),
                },
                if fill.is_some() { default.as_ref().map(|d| format!("; default {} at contract", d.sql)).unwrap_or_default() } else { String::new() },
                if not_null_check.is_some() { "; NOT NULL pending as a NOT VALID constraint" } else { "" },
            )),
        });
        (id, true)
    })
}

/// 42701: the column exists (or is a system column's name).
fn refuse_existing(relid: pg_sys::Oid, t: &str, col: &str) {
    let exists = spi::one::<bool>(
        "SELECT true FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
        &[relid.into(), col.into()],
    );
    if exists == Some(true) {
        raise(
            Code::ERRCODE_DUPLICATE_COLUMN,
            format!("column {} of table {t} already exists", ident(col)),
            "Pick another name, or drop the existing column first.",
        );
    }
}

/// What a migration was asked for: (what fills the rows, the default, NOT NULL).
fn recorded_request(id: i64) -> (Option<String>, Option<String>, bool) {
    catalog::as_catalog_owner(|| {
        spi::first_row(
            "SELECT using_expr, object_def, not_null_check IS NOT NULL FROM zdm.migrations WHERE id = $1",
            &[id.into()],
            |r| Ok((r.get::<String>(1)?, r.get::<String>(2)?, r.get::<bool>(3)?.unwrap_or(false))),
        )
    })
    .unwrap_or((None, None, false))
}

/// The names of `relid`'s columns `attnums`.
fn column_names(relid: pg_sys::Oid, attnums: &[i16]) -> Vec<String> {
    let attnums: Vec<i16> = attnums.to_vec();
    spi::one::<Vec<String>>(
        "SELECT pg_catalog.array_agg(attname::text ORDER BY attnum) FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = ANY ($2)",
        &[relid.into(), attnums.into()],
    )
    .unwrap_or_default()
}

/// A domain with constraints: PostgreSQL checks them on every existing row
/// when the column is added (a rewrite under ACCESS EXCLUSIVE): refused.
fn refuse_constrained_domain(type_oid: pg_sys::Oid, type_sql: &str) {
    let constrained = spi::one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.contypid IN            (WITH RECURSIVE d(oid) AS (SELECT $1::pg_catalog.oid UNION ALL SELECT t.typbasetype FROM pg_catalog.pg_type t JOIN d ON t.oid = d.oid WHERE t.typtype = 'd') SELECT oid FROM d))             OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = $1 AND t.typtype = 'd' AND t.typnotnull)",
        &[type_oid.into()],
    )
    .unwrap_or(false);
    if constrained {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("type {type_sql} is a domain with constraints: adding a column of it rewrites the table under ACCESS EXCLUSIVE"),
            "Add the column with the domain's base type (and zdm.add_check for its constraint), or add it with plain ALTER TABLE in a maintenance window.",
        );
    }
}

/// A repeated call: an add_column of this column and type in flight.
fn same_in_flight(relid: pg_sys::Oid, col: &str, type_sql: &str) -> Option<i64> {
    catalog::as_catalog_owner(|| {
        spi::one::<i64>(
            "SELECT id FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = 'add_column' AND new_column::text = $2 \
                AND new_type = $3 AND phase IN ('expanded', 'backfilling', 'backfilled') ORDER BY id DESC LIMIT 1",
            &[relid.into(), col.into(), type_sql.into()],
        )
    })
}

/// The default recorded at expand (deparsed), if any.
fn recorded_default(id: i64) -> Option<String> {
    catalog::as_catalog_owner(|| spi::one::<String>("SELECT object_def FROM zdm.migrations WHERE id = $1", &[id.into()]))
}

/// Contract, in the caller's transaction: the NOT NULL constraint
/// validated if the worker has not (a scan under SHARE UPDATE EXCLUSIVE),
/// then under one brief ACCESS EXCLUSIVE lock the trigger dropped, the
/// default set and the column made NOT NULL (no scan).
fn contract(m: &Migration) {
    let (id, started) = (m.id, Instant::now());
    let t = m.table_sql();
    let c = ident(m.new_col());
    if introspect::column(m.relid, m.new_col()).is_none() {
        raise(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("column {c} of table {t} no longer exists"),
            format!("It was dropped outside zdm; call zdm.abort({id})."),
        );
    }
    if let Some(trigger) = m.trigger_name.as_deref() {
        if let Some(fault) = crate::trigger::sync_trigger_fault(m.relid, trigger) {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("cannot contract zdm migration {id}: its fill trigger {} on {t} {fault}", ident(trigger)),
                format!("Rows written meanwhile may not be filled; call zdm.abort({id}) and start again."),
            );
        }
    }
    if let Some(trigger) = m.trigger_name.as_deref() {
        column::refuse_later_triggers(m.relid, &t, trigger, &format!("cannot contract zdm migration {id}"), "what the fill reads after zdm filled the column");
    }
    let mut validated = Vec::new();
    for p in column::validate::pending(m) {
        steps::validate(m.relid, &t, &p.name, None);
        validated.push(ident(&p.name));
    }
    let final_started = Instant::now();
    let lock = locking::lock_table(m.relid, &t, "ACCESS EXCLUSIVE");
    let default = recorded_default(id);
    guard::allow_zdm_ddl(|| {
        if let Some(trigger) = &m.trigger_name {
            spi::exec(&format!("DROP TRIGGER IF EXISTS {} ON {t}", ident(trigger)));
        }
        if let Some(d) = &default {
            // Recorded under deparse_pinned: its constants read back the same.
            security::deparse_pinned(|| spi::exec(&format!("ALTER TABLE {} ALTER COLUMN {c} SET DEFAULT {d}", tree::scan_target(m.relid, &t))));
        }
        if let Some(check) = &m.not_null_check {
            steps::finish_not_null(m.relid, &t, m.new_col(), check);
        }
    });
    catalog::set_phase(id, Phase::Contracted);
    jobs::finish_for_migration(id, "completed");
    catalog::log_step(Step {
        migration: id,
        step: "contract",
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        lock_wait_ms: Some(lock.wait_ms),
        lock_attempts: Some(lock.attempts),
        detail: Some(format!(
            "{c}: {}{}{}ACCESS EXCLUSIVE held {:.1} ms",
            if validated.is_empty() { String::new() } else { format!("validated {}; ", validated.join(", ")) },
            default.as_deref().map(|d| format!("default {d}; ")).unwrap_or_default(),
            if m.not_null_check.is_some() { "NOT NULL; " } else { "" },
            final_started.elapsed().as_secs_f64() * 1000.0 - lock.wait_ms
        )),
    });
}

/// Abort: the trigger and the column dropped (RESTRICT: objects a user built
/// on it are never dropped silently).
fn abort(m: &Migration) {
    let (id, started) = (m.id, Instant::now());
    let t = m.table_sql();
    jobs::finish_for_migration(id, "cancelled");
    catalog::fold_ranges(id);
    let lock = locking::lock_table(m.relid, &t, "ACCESS EXCLUSIVE");
    guard::allow_zdm_ddl(|| {
        if let Some(trigger) = &m.trigger_name {
            spi::exec(&format!("DROP TRIGGER IF EXISTS {} ON {t}", ident(trigger)));
        }
        if introspect::column(m.relid, m.new_col()).is_some() {
            spi::exec(&format!("ALTER TABLE {t} DROP COLUMN {} RESTRICT", ident(m.new_col())));
        }
    });
    catalog::set_phase(id, Phase::Aborted);
    catalog::log_abort(id, started, Some((lock.wait_ms, lock.attempts)), format!("dropped column {}", ident(m.new_col())));
}
