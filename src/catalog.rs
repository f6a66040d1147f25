//! zdm's own state: the `zdm.migrations`, `zdm.events`, `zdm.jobs` and
//! `zdm.batches` tables (created by sql/catalog.sql).
//!
//! The backfill cursor lives in `zdm.migrations.next_block` and is written by
//! `save_progress` in the same transaction as the batch it describes; a
//! parallel backfill splits what it had left into `zdm.backfill_ranges`, one
//! cursor per range, written by `save_range_progress` the same way.
//!
//! Users cannot write these tables. Catalog reads and writes run as the
//! extension owner (`as_catalog_owner`), while the DDL and UPDATEs a migration
//! performs run as the migration's owner (`security::as_owner`).

use crate::errors::{raise, Code};
use crate::{security, spi};
use pgrx::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Expanded,
    Backfilling,
    Backfilled,
    Contracted,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expanded => "expanded",
            Phase::Backfilling => "backfilling",
            Phase::Backfilled => "backfilled",
            Phase::Contracted => "contracted",
            Phase::Aborted => "aborted",
        }
    }
    fn parse(s: &str) -> Phase {
        match s {
            "expanded" => Phase::Expanded,
            "backfilling" => Phase::Backfilling,
            "backfilled" => Phase::Backfilled,
            "contracted" => Phase::Contracted,
            _ => Phase::Aborted,
        }
    }
    pub fn in_flight(self) -> bool {
        matches!(self, Phase::Expanded | Phase::Backfilling | Phase::Backfilled)
    }
}

#[derive(Clone, Debug)]
pub struct Migration {
    pub id: i64,
    pub kind: String,
    /// The table. Everything resolves it by this OID; the names below are
    /// what it was called at expand, for messages only.
    pub relid: pg_sys::Oid,
    pub table_schema: String,
    pub table_name: String,
    pub old_column: Option<String>,
    pub new_column: Option<String>,
    /// change_type: the conversion from the old column, deparsed (the
    /// assignment cast when none was given), already of the new type
    pub using_expr: Option<String>,
    pub phase: Phase,
    /// The role all of the migration's work runs as (the table owner at expand).
    pub owner_name: String,
    pub trigger_name: Option<String>,
    pub not_null_check: Option<String>,
    pub carried_checks: Vec<String>,
    /// The original names of `carried_checks`, index by index.
    pub carried_from: Vec<String>,
    pub next_block: i64,
    pub rows_per_block: f64,
    pub rows_done: i64,
    /// end of the backfill scan, in heap blocks
    pub rel_blocks: i64,
    /// the heap's relfilenode when `rel_blocks` was measured
    pub relfilenode: pg_sys::Oid,
}

impl Migration {
    /// The table's current qualified name, looked up by OID (a rename of the
    /// table cannot redirect zdm to another table). 42P01 if it was dropped.
    pub fn table_sql(&self) -> String {
        current_table_sql(self.relid).unwrap_or_else(|| {
            raise(
                Code::ERRCODE_UNDEFINED_TABLE,
                format!("the table of zdm migration {} ({}) no longer exists", self.id, self.display_table()),
                format!("Call zdm.abort({}) to close the migration.", self.id),
            )
        })
    }
    pub fn table_exists(&self) -> bool {
        current_table_sql(self.relid).is_some()
    }
    /// The name recorded at expand, for messages.
    pub fn display_table(&self) -> String {
        spi::qualified(&self.table_schema, &self.table_name)
    }
    pub fn old_col(&self) -> &str {
        self.old_column.as_deref().unwrap_or_default()
    }
    pub fn new_col(&self) -> &str {
        self.new_column.as_deref().unwrap_or_default()
    }
    /// The phase rules: what `action` (contract, abort, backfill) may do in
    /// the migration's phase; raises 55000 naming the way forward otherwise.
    pub fn require_phase(&self, action: &str) {
        let m = self;
        match m.phase {
            Phase::Contracted => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm migration {} on {} is already contracted", m.id, m.display_table()),
                "Nothing left to do; see zdm.status.",
            ),
            Phase::Aborted => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm migration {} on {} was aborted", m.id, m.display_table()),
                "Start a new migration with zdm.expand_rename().",
            ),
            Phase::Expanded | Phase::Backfilling if action == "contract" => raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "cannot contract zdm migration {} on {}: the backfill is not complete (phase {})",
                    m.id,
                    m.display_table(),
                    m.phase.as_str()
                ),
                format!(
                    "Finish the backfill first: call zdm.backfill_batch({0}) until it returns 0, or zdm.start_backfill({0}) and zdm.wait({0}).",
                    m.id
                ),
            ),
            _ => {}
        }
    }
    /// The role the migration's DDL runs as: its owner, or — when that role is
    /// gone — the caller, who `load_for` has checked to be a superuser.
    pub fn ddl_role(&self) -> pg_sys::Oid {
        let m = self;
        spi::one::<pg_sys::Oid>("SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1", &[m.owner_name.as_str().into()])
            .unwrap_or_else(current_user)
    }
}

/// `"schema"."table"` of a relation by OID, now (None if it is gone).
pub fn current_table_sql(relid: pg_sys::Oid) -> Option<String> {
    spi::one::<String>(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[relid.into()],
    )
}

/// The schema a relation lives in now (None if it is gone).
pub fn current_schema_of(relid: pg_sys::Oid) -> Option<String> {
    spi::one::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relid.into()],
    )
}

/// Run `f` as the extension owner, for catalog access only, with
/// `search_path = pg_catalog, pg_temp`: the caller's search_path must not
/// resolve any function or operator in zdm's catalog SQL while it runs with
/// the owner's rights (the same protection SECURITY DEFINER functions need).
/// An error inside `f` aborts the (sub)transaction, which restores both the
/// user id and the setting by itself.
pub fn as_catalog_owner<R>(f: impl FnOnce() -> R) -> R {
    security::pinned_search_path(|| security::as_role(extension_owner(true), f))
}

/// Like `as_catalog_owner`, without the version check: for the guard and the
/// convert trigger, which run in applications' sessions and must keep
/// working between installing a new library and `ALTER EXTENSION zdm
/// UPDATE`. They read only columns that every catalog version has.
pub fn as_catalog_owner_any_version<R>(f: impl FnOnce() -> R) -> R {
    security::pinned_search_path(|| security::as_role(extension_owner(false), f))
}

/// This library's version, and the installed extension versions whose
/// catalog it reads and writes. A release that leaves the catalog as it was
/// adds its version here (its upgrade script may then be empty).
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const CATALOG_VERSIONS: &[&str] = &["0.2.0"];

/// The version of the extension installed in this database, if any.
pub fn installed_version() -> Option<String> {
    spi::one::<String>(
        "SELECT extversion::pg_catalog.text FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'zdm'::pg_catalog.name",
        &[],
    )
}

pub fn catalog_matches(installed: &str) -> bool {
    CATALOG_VERSIONS.contains(&installed)
}

/// Every read or write of zdm's tables passes through here, so this is
/// where a library newer than the installed SQL stops: between installing a
/// new zdm.so and `ALTER EXTENSION zdm UPDATE`, the tables still have the old
/// shape, and a step must not fail halfway on a missing column.
fn extension_owner(check_version: bool) -> pg_sys::Oid {
    let row = spi::first_row(
        "SELECT extowner, extversion::pg_catalog.text FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'zdm'::pg_catalog.name",
        &[],
        |r| Ok((r.get::<pg_sys::Oid>(1)?, r.get::<String>(2)?.unwrap_or_default())),
    );
    match row {
        Some((owner, version)) if !check_version || catalog_matches(&version) => {
            owner.unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID))
        }
        Some((_, version)) => raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the zdm library is version {LIBRARY_VERSION}, but the zdm extension in this database is at version {version}"),
            "Run ALTER EXTENSION zdm UPDATE (as a superuser). Until then zdm's functions refuse and its workers wait; \
             sync triggers keep working.",
        ),
        None => pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
    }
}

pub fn current_user() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

const SELECT_MIGRATION: &str = "SELECT id, kind, relid::oid, table_schema::text, table_name::text, \
     old_column::text, new_column::text, phase, trigger_name::text, not_null_check::text, \
     carried_checks::text[], next_block, rows_per_block, rows_done, rel_blocks, relfilenode, \
     owner_name::text, carried_from::text[], using_expr FROM zdm.migrations WHERE id = $1";

/// Load a migration; `lock` takes a row lock so that concurrent batches,
/// contract and abort on the same migration serialize. Callers acting for a
/// user go through `load_for`, which checks rights before locking.
pub fn load(id: i64, lock: bool) -> Option<Migration> {
    let sql = if lock { format!("{SELECT_MIGRATION} FOR UPDATE") } else { SELECT_MIGRATION.to_string() };
    as_catalog_owner(|| spi::first_row(&sql, &[id.into()], row_to_migration))
}

fn row_to_migration(row: &pgrx::spi::SpiTupleTable) -> Result<Migration, pgrx::spi::Error> {
    let text = |n: usize| row.get::<String>(n);
    Ok(Migration {
        id: row.get::<i64>(1)?.unwrap_or_default(),
        kind: text(2)?.unwrap_or_default(),
        relid: row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
        table_schema: text(4)?.unwrap_or_default(),
        table_name: text(5)?.unwrap_or_default(),
        old_column: text(6)?,
        new_column: text(7)?,
        phase: Phase::parse(&text(8)?.unwrap_or_default()),
        trigger_name: text(9)?,
        not_null_check: text(10)?,
        carried_checks: row.get::<Vec<String>>(11)?.unwrap_or_default(),
        next_block: row.get::<i64>(12)?.unwrap_or_default(),
        rows_per_block: row.get::<f64>(13)?.unwrap_or_default(),
        rows_done: row.get::<i64>(14)?.unwrap_or_default(),
        rel_blocks: row.get::<i64>(15)?.unwrap_or_default(),
        relfilenode: row.get::<pg_sys::Oid>(16)?.unwrap_or(pg_sys::InvalidOid),
        owner_name: text(17)?.unwrap_or_default(),
        carried_from: row.get::<Vec<String>>(18)?.unwrap_or_default(),
        using_expr: text(19)?,
    })
}

/// Load or fail with 42704 naming the id.
pub fn load_or_raise(id: i64, lock: bool) -> Migration {
    load(id, lock).unwrap_or_else(|| {
        raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("zdm migration {id} does not exist"),
            "List migrations with: SELECT * FROM zdm.status;",
        )
    })
}

/// Load a migration for a caller who wants to `action` it: the caller must
/// be a member of the owning role — checked before the row lock, so no
/// other role can hold a migration's lock and stall its owner.
pub fn load_for(id: i64, action: &str, lock: bool) -> Migration {
    let m = load_or_raise(id, false);
    security::require_member(&m.owner_name, id, action);
    if lock { load_or_raise(id, true) } else { m }
}

/// A migration that adds a column: beside an existing one (rename,
/// change_type) or a new one (add_column, without `old_column`).
pub struct NewColumnMigration<'a> {
    pub kind: &'a str,
    pub relid: pg_sys::Oid,
    pub schema: &'a str,
    pub table: &'a str,
    pub old_column: Option<&'a str>,
    pub new_column: &'a str,
    pub rel_blocks: i64,
    pub rows_estimate: i64,
    pub rows_per_block: f64,
    /// the calling role (display only)
    pub started_by: pg_sys::Oid,
    /// change_type: the new type and the conversion as given
    pub new_type: Option<&'a str>,
    pub using_expr: Option<&'a str>,
    pub using_tree: Option<&'a str>,
}

/// Next migration id (taken first so object names can carry it).
pub fn next_id() -> i64 {
    as_catalog_owner(|| spi::one::<i64>("SELECT nextval('zdm.migrations_id_seq')", &[]))
        .unwrap_or_default()
}

pub fn insert_column_migration(id: i64, m: &NewColumnMigration) {
    let user = m.started_by;
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.migrations (id, kind, relid, table_schema, table_name, old_column, new_column, \
             owner_name, started_by, rel_blocks, rows_estimate, rows_per_block, relfilenode, new_type, using_expr, using_tree) \
             VALUES ($1, $11, $2::oid::regclass, $3, $4, $5, $6, \
                     (SELECT r.rolname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $2), \
                     (SELECT rolname FROM pg_catalog.pg_roles WHERE oid = $7), $8, $9, $10, \
                     pg_catalog.pg_relation_filenode($2::oid::regclass), $12, $13, $14)",
            &[
                id.into(),
                m.relid.into(),
                m.schema.into(),
                m.table.into(),
                m.old_column.into(),
                m.new_column.into(),
                user.into(),
                m.rel_blocks.into(),
                m.rows_estimate.into(),
                m.rows_per_block.into(),
                m.kind.into(),
                m.new_type.into(),
                m.using_expr.into(),
                m.using_tree.into(),
            ],
        )
    });
}

/// The objects expand created: trigger, NOT NULL helper check, and the
/// carried CHECK copies with their originals' names.
pub fn set_objects(id: i64, trigger: Option<&str>, not_null_check: Option<&str>, carried: &[(String, String)]) {
    let copies: Vec<String> = carried.iter().map(|(c, _)| c.clone()).collect();
    let originals: Vec<String> = carried.iter().map(|(_, o)| o.clone()).collect();
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET trigger_name = $2, not_null_check = $3, carried_checks = $4::text[]::name[], \
                    carried_from = $5::text[]::name[] WHERE id = $1",
            &[id.into(), trigger.into(), not_null_check.into(), copies.into(), originals.into()],
        )
    });
}

pub fn set_phase(id: i64, phase: Phase) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET phase = $2, updated_at = clock_timestamp(), \
               backfill_started_at = CASE WHEN $2 = 'backfilling' THEN coalesce(backfill_started_at, clock_timestamp()) ELSE backfill_started_at END, \
               backfilled_at = CASE WHEN $2 = 'backfilled' THEN clock_timestamp() ELSE backfilled_at END, \
               finished_at = CASE WHEN $2 IN ('contracted', 'aborted') THEN clock_timestamp() ELSE finished_at END \
             WHERE id = $1",
            &[id.into(), phase.as_str().into()],
        )
    });
}

/// Persist the backfill cursor and counters. Called in the batch's own
/// transaction, so a batch and its cursor commit or roll back together.
pub fn save_progress(id: i64, next_block: i64, rows: i64, visited: i64, rows_per_block: f64) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET next_block = $2, rows_done = rows_done + $3, rows_visited = rows_visited + $5, \
               rows_per_block = $4, batches_done = batches_done + 1, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), next_block.into(), rows.into(), rows_per_block.into(), visited.into()],
        )
    });
}

/// The table was rewritten (new relfilenode): rows may have moved anywhere,
/// so the scan restarts from block 0 up to the heap's size now.
pub fn restart_scan(id: i64, rel_blocks: i64, relfilenode: pg_sys::Oid) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET next_block = 0, rel_blocks = $2, relfilenode = $3, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), rel_blocks.into(), relfilenode.into()],
        )
    });
}

/// A range of a parallel backfill (`zdm.backfill_ranges`), locked by the
/// current transaction until it commits.
pub struct Range {
    /// the leaf partition whose heap it covers; InvalidOid: the migration's table
    pub relid: pg_sys::Oid,
    /// that leaf's heap when the range was planned
    pub relfilenode: pg_sys::Oid,
    pub start_block: i64,
    /// the range's cursor
    pub next_block: i64,
    pub end_block: i64,
    pub rows_per_block: f64,
}

/// An OID as a bigint argument: pgrx binds InvalidOid (0, a range on the
/// migration's own table) as NULL, which `relid = $n` would never match.
fn oid_arg(oid: pg_sys::Oid) -> i64 {
    oid.to_u32() as i64
}

/// How many ranges the migration has, and how many still have blocks to visit.
pub fn range_counts(id: i64) -> (i64, i64) {
    as_catalog_owner(|| {
        spi::first_row(
            "SELECT count(*), count(*) FILTER (WHERE next_block < end_block) FROM zdm.backfill_ranges WHERE migration_id = $1",
            &[id.into()],
            |r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0))),
        )
    })
    .unwrap_or((0, 0))
}

/// Split the blocks `[from, to)` the migration's cursor has left into `n`
/// disjoint ranges, and move its cursor to `to`: from now on the ranges'
/// cursors say what is left. In the caller's (batch) transaction.
pub fn split_into_ranges(id: i64, from: i64, to: i64, n: i64, rows_per_block: f64) {
    let n = n.clamp(1, (to - from).max(1));
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.backfill_ranges (migration_id, start_block, next_block, end_block, rows_per_block) \
             SELECT $1, s, s, CASE WHEN i = $4 - 1 THEN $3 ELSE $2 + (i + 1) * (($3 - $2) / $4) END, $5 \
               FROM (SELECT i, $2 + i * (($3 - $2) / $4) AS s FROM pg_catalog.generate_series(0::bigint, $4 - 1) i) g",
            &[id.into(), from.into(), to.into(), n.into(), rows_per_block.into()],
        );
        spi::exec_args(
            "UPDATE zdm.migrations SET next_block = $2, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), to.into()],
        );
    });
}

/// Lock a range with blocks left — the one this process worked on last if
/// it is free — and return it. `wait`: if every such range is locked by
/// another batch, wait for one (a caller's own loop) instead of returning
/// None (a worker, which has other things to do).
pub fn take_range(id: i64, prefer: Option<(pg_sys::Oid, i64)>, wait: bool) -> Option<Range> {
    let (prefer_relid, prefer) = (prefer.map(|p| oid_arg(p.0)), prefer.map(|p| p.1));
    let take = |lock: &str| {
        let sql = format!(
            "SELECT start_block, next_block, end_block, rows_per_block, relid, relfilenode FROM zdm.backfill_ranges \
              WHERE migration_id = $1 AND next_block < end_block \
              ORDER BY (relid, start_block) IS NOT DISTINCT FROM ($3::pg_catalog.oid, $2) DESC, relid, start_block LIMIT 1 {lock}"
        );
        as_catalog_owner(|| {
            spi::first_row(&sql, &[id.into(), prefer.into(), prefer_relid.into()], |r| {
                Ok(Range {
                    relid: r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                    relfilenode: r.get::<pg_sys::Oid>(6)?.unwrap_or(pg_sys::InvalidOid),
                    start_block: r.get::<i64>(1)?.unwrap_or(0),
                    next_block: r.get::<i64>(2)?.unwrap_or(0),
                    end_block: r.get::<i64>(3)?.unwrap_or(0),
                    rows_per_block: r.get::<f64>(4)?.unwrap_or(0.0),
                })
            })
        })
    };
    take("FOR UPDATE SKIP LOCKED").or_else(|| if wait { take("FOR UPDATE") } else { None })
}

/// Lock every range of the migration (waiting for the batches that hold
/// one): no batch can advance or split a range until this transaction ends.
pub fn lock_ranges(id: i64) {
    as_catalog_owner(|| {
        spi::exec_args("SELECT 1 FROM zdm.backfill_ranges WHERE migration_id = $1 FOR UPDATE", &[id.into()])
    });
}

/// Persist a range's cursor (and its end, when the batch split off the rest
/// as a new range) in the batch's own transaction, like `save_progress`.
pub fn save_range_progress(id: i64, r: &Range, rows: i64, visited: i64) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.backfill_ranges SET next_block = $3, end_block = $4, rows_per_block = $5, \
               rows_done = rows_done + $6, rows_visited = rows_visited + $8, batches_done = batches_done + 1 \
             WHERE migration_id = $1 AND relid = $7::pg_catalog.oid AND start_block = $2",
            &[id.into(), r.start_block.into(), r.next_block.into(), r.end_block.into(), r.rows_per_block.into(), rows.into(), oid_arg(r.relid).into(), visited.into()],
        )
    });
}

/// A new range, split off a locked one (`[start, end)` was that range's,
/// unvisited: no other range covers it).
pub fn add_range(id: i64, of: &Range, start: i64, end: i64) {
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.backfill_ranges (migration_id, relid, relfilenode, start_block, next_block, end_block, rows_per_block) \
             VALUES ($1, $5::pg_catalog.oid, $6, $2, $2, $3, $4)",
            &[id.into(), start.into(), end.into(), of.rows_per_block.into(), oid_arg(of.relid).into(), of.relfilenode.into()],
        )
    });
}

/// A partitioned table's backfill: one range per leaf with blocks (its heap
/// now, recorded with its relfilenode), and the migration's own cursor at
/// the end of the whole tree. In the caller's (batch) transaction.
pub fn plan_leaves(id: i64, leaves: &[crate::tree::Leaf], rows_per_block: f64) {
    let total: i64 = leaves.iter().map(|l| l.blocks).sum();
    as_catalog_owner(|| {
        for l in leaves.iter().filter(|l| l.blocks > 0) {
            spi::exec_args(
                "INSERT INTO zdm.backfill_ranges (migration_id, relid, relfilenode, start_block, next_block, end_block, rows_per_block) \
                 VALUES ($1, $2, pg_catalog.pg_relation_filenode($2::pg_catalog.regclass), 0, 0, $3, $4)",
                &[id.into(), l.relid.into(), l.blocks.into(), rows_per_block.into()],
            );
        }
        spi::exec_args(
            "UPDATE zdm.migrations SET next_block = $2, rel_blocks = $2, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), total.into()],
        );
    });
}

/// Leaves whose heap was rewritten (VACUUM FULL, CLUSTER, a rewriting
/// ALTER) since their ranges were planned, with their heap's size now.
pub fn rewritten_leaves(id: i64) -> Vec<crate::tree::Leaf> {
    as_catalog_owner(|| {
        spi::rows(
            "SELECT DISTINCT r.relid, pg_catalog.pg_relation_size(r.relid::pg_catalog.regclass) / pg_catalog.current_setting('block_size')::bigint \
               FROM zdm.backfill_ranges r \
              WHERE r.migration_id = $1 AND r.relid <> 0 \
                AND pg_catalog.pg_relation_filenode(r.relid::pg_catalog.regclass) IS DISTINCT FROM r.relfilenode \
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = r.relid)",
            &[id.into()],
            |r| {
                Ok(crate::tree::Leaf {
                    relid: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    blocks: r.get::<i64>(2)?.unwrap_or(0),
                })
            },
        )
    })
}

/// A rewritten leaf starts again: its ranges' counters folded into the
/// migration, the ranges replaced by one over its new heap. The caller holds
/// every range's lock.
pub fn restart_leaf(id: i64, leaf: &crate::tree::Leaf) {
    as_catalog_owner(|| {
        spi::exec_args(
            "WITH d AS (DELETE FROM zdm.backfill_ranges WHERE migration_id = $1 AND relid = $2 \
                        RETURNING rows_done, rows_visited, batches_done, end_block - next_block AS left) \
             UPDATE zdm.migrations SET rows_done = rows_done + (SELECT coalesce(sum(rows_done), 0) FROM d), \
               rows_visited = rows_visited + (SELECT coalesce(sum(rows_visited), 0) FROM d), \
               batches_done = batches_done + (SELECT coalesce(sum(batches_done), 0) FROM d), \
               next_block = next_block - (SELECT coalesce(sum(left), 0) FROM d) + $3, \
               rel_blocks = rel_blocks - (SELECT coalesce(sum(left), 0) FROM d) + $3, updated_at = clock_timestamp() \
             WHERE id = $1",
            &[id.into(), leaf.relid.into(), leaf.blocks.into()],
        );
        if leaf.blocks > 0 {
            spi::exec_args(
                "INSERT INTO zdm.backfill_ranges (migration_id, relid, relfilenode, start_block, next_block, end_block) \
                 VALUES ($1, $2, pg_catalog.pg_relation_filenode($2::pg_catalog.regclass), 0, 0, $3)",
                &[id.into(), leaf.relid.into(), leaf.blocks.into()],
            );
        }
    });
}

/// Every range is done (or the scan restarts, or the migration is aborted):
/// fold their counters into the migration and delete them (waiting for
/// batches that hold one). The caller holds the migration's row FOR UPDATE.
pub fn fold_ranges(id: i64) {
    as_catalog_owner(|| {
        spi::exec_args(
            "WITH d AS (DELETE FROM zdm.backfill_ranges WHERE migration_id = $1 RETURNING rows_done, rows_visited, batches_done) \
             UPDATE zdm.migrations SET rows_done = rows_done + (SELECT coalesce(sum(rows_done), 0) FROM d), \
               rows_visited = rows_visited + (SELECT coalesce(sum(rows_visited), 0) FROM d), \
               batches_done = batches_done + (SELECT coalesce(sum(batches_done), 0) FROM d), updated_at = clock_timestamp() \
             WHERE id = $1",
            &[id.into()],
        )
    });
}

/// An error text from user code or user data (a failed batch, build,
/// validation or conversion) may quote row values — a duplicate key, a
/// failing row, an unconvertible value. Every role reads zdm's catalog, so
/// the text itself goes to `zdm.error_texts`, which only zdm reads, and the
/// catalog gets this public form; `zdm.status` shows the text to members of
/// the migration's owning role only.
pub fn hide_values(id: i64, what: &str, text: &str, code: Option<i32>) -> String {
    let owner = as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.error_texts (migration_id, message) VALUES ($1, $2) \
             ON CONFLICT (migration_id) DO UPDATE SET message = excluded.message, at = pg_catalog.clock_timestamp()",
            &[id.into(), text.into()],
        );
        spi::one::<String>("SELECT owner_name::text FROM zdm.migrations WHERE id = $1", &[id.into()])
    })
    .unwrap_or_default();
    let code = code.map(|c| format!(" (SQLSTATE {})", crate::errors::unpack_sqlstate(c))).unwrap_or_default();
    format!("{what}{code}: its message may quote row values and is shown to members of role {} only (zdm.status.last_error)", spi::ident(&owner))
}

/// The full error text behind `hide_values`, when the calling role is a
/// member of the migration's owning role.
pub fn error_text_for_caller(id: i64) -> Option<String> {
    let member = spi::one::<bool>(
        "SELECT EXISTS (SELECT FROM zdm.migrations m, pg_catalog.pg_roles r WHERE m.id OPERATOR(pg_catalog.=) $1 \
            AND ((r.rolname OPERATOR(pg_catalog.=) m.owner_name AND pg_catalog.pg_has_role(r.oid, 'MEMBER')) \
                 OR (r.rolname OPERATOR(pg_catalog.=) CURRENT_USER AND r.rolsuper)))",
        &[id.into()],
    );
    if member != Some(true) {
        return None;
    }
    as_catalog_owner(|| spi::one::<String>("SELECT message FROM zdm.error_texts WHERE migration_id = $1", &[id.into()]))
}

pub fn set_last_error(id: i64, error: Option<&str>) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET last_error = $2, updated_at = clock_timestamp() WHERE id = $1",
            &[id.into(), error.into()],
        )
    });
}

/// An in-flight migration on this table that touches either column.
pub fn in_flight_on_columns(relid: pg_sys::Oid, columns: &[&str]) -> Option<(i64, String)> {
    let cols: Vec<String> = columns.iter().map(|s| s.to_string()).collect();
    as_catalog_owner(|| {
        spi::first_row(
            "SELECT id, phase FROM zdm.migrations WHERE relid = $1::oid::regclass \
              AND phase IN ('expanded', 'backfilling', 'backfilled') \
              AND (old_column::text = ANY($2) OR new_column::text = ANY($2) OR reads_columns::text[] && $2) ORDER BY id LIMIT 1",
            &[relid.into(), cols.into()],
            |r| Ok((r.get::<i64>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
        )
    })
}

/// An in-flight column migration of `kind` on `relid` from `old_column`,
/// with the same new column (rename) or new type and conversion
/// (change_type): what a repeated call finds instead of failing.
pub fn same_in_flight(relid: pg_sys::Oid, kind: &str, old_column: &str, new_column: Option<&str>, new_type: Option<&str>, using_expr: Option<&str>) -> Option<i64> {
    as_catalog_owner(|| {
        spi::one::<i64>(
            "SELECT id FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = $2 AND old_column::text = $3 \
                AND ($4::text IS NULL OR new_column::text = $4) AND ($5::text IS NULL OR new_type = $5) \
                AND ($6::text IS NULL OR using_expr = $6) \
                AND phase IN ('expanded', 'backfilling', 'backfilled') ORDER BY id DESC LIMIT 1",
            &[relid.into(), kind.into(), old_column.into(), new_column.into(), new_type.into(), using_expr.into()],
        )
    })
}

/// The migration that changes column `column` of `relid`: the one in flight
/// (by its old or new column), else the latest one. 42704 if there is none,
/// 42P08 if several are in flight (each named).
pub fn migration_on(relid: pg_sys::Oid, column: &str, kinds: Option<Vec<String>>) -> i64 {
    let (in_flight, latest) = as_catalog_owner(|| {
        let in_flight = spi::one::<Vec<i64>>(
            "SELECT array_agg(id ORDER BY id) FROM zdm.migrations WHERE relid = $1::oid::regclass \
                AND (old_column::text = $2 OR new_column::text = $2 OR object_name::text = $2 OR (kind = 'update' AND $2 = ANY (reads_columns::text[]))) \
                AND ($3::text[] IS NULL OR kind = ANY($3)) AND phase IN ('expanded', 'backfilling', 'backfilled')",
            &[relid.into(), column.into(), kinds.clone().into()],
        )
        .unwrap_or_default();
        let latest = spi::one::<i64>(
            "SELECT max(id) FROM zdm.migrations WHERE relid = $1::oid::regclass \
                AND (old_column::text = $2 OR new_column::text = $2 OR object_name::text = $2 OR (kind = 'update' AND $2 = ANY (reads_columns::text[]))) \
                AND ($3::text[] IS NULL OR kind = ANY($3))",
            &[relid.into(), column.into(), kinds.clone().into()],
        );
        (in_flight, latest)
    });
    let table = current_table_sql(relid).unwrap_or_default();
    match in_flight.as_slice() {
        [one] => *one,
        [] => latest.unwrap_or_else(|| {
            raise(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("no zdm migration changes column {} of {table}", spi::ident(column)),
                "List migrations with: SELECT * FROM zdm.status;",
            )
        }),
        many => raise(
            Code::ERRCODE_AMBIGUOUS_PARAMETER,
            format!(
                "{} zdm migrations are in flight on column {} of {table}: {}",
                many.len(),
                spi::ident(column),
                many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ),
            "Pass the kind (zdm.migration_id(tbl, col, kind => 'rename')) or the migration id.",
        ),
    }
}

/// The event of an abort: how long it took, the lock it waited for, what it undid.
pub fn log_abort(id: i64, started: std::time::Instant, lock: Option<(f64, i32)>, detail: String) {
    log_step(Step {
        migration: id,
        step: "abort",
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        lock_wait_ms: lock.map(|l| l.0),
        lock_attempts: lock.map(|l| l.1),
        detail: Some(detail),
    });
}

/// One step in the event log, with its duration and lock wait.
pub struct Step<'a> {
    pub migration: i64,
    pub step: &'a str,
    pub duration_ms: f64,
    pub lock_wait_ms: Option<f64>,
    pub lock_attempts: Option<i32>,
    pub detail: Option<String>,
}

thread_local! {
    /// Something a lower layer saw while a step ran (an anti-wraparound
    /// vacuum waited out), added to the next event this process logs.
    /// (with the start of the transaction it was seen in: a note from a
    /// step that failed and rolled back is not added to a later one)
    static NEXT_STEP_NOTE: std::cell::RefCell<Option<(i64, String)>> = const { std::cell::RefCell::new(None) };
}

fn transaction_started() -> i64 {
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

/// Add `text` to the detail of the next step logged in this transaction.
pub fn note_for_next_step(text: String) {
    let now = transaction_started();
    let first = NEXT_STEP_NOTE.with(|n| n.borrow_mut().replace((now, text)).is_none_or(|(at, _)| at != now));
    if first {
        // (a step that fails takes its note with it)
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || NEXT_STEP_NOTE.with(|n| *n.borrow_mut() = None));
    }
}

pub fn log_step(mut s: Step) {
    let note = NEXT_STEP_NOTE.with(|n| n.borrow_mut().take()).and_then(|(at, note)| (at == transaction_started()).then_some(note));
    if let Some(note) = note {
        s.detail = Some(match s.detail.take() {
            Some(d) => format!("{d}; {note}"),
            None => note,
        });
    }
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.events (migration_id, step, duration_ms, lock_wait_ms, lock_attempts, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                s.migration.into(),
                s.step.into(),
                s.duration_ms.into(),
                s.lock_wait_ms.into(),
                s.lock_attempts.into(),
                s.detail.into(),
            ],
        )
    });
}

/// Record a failed migration step: the error (with its SQLSTATE) on the
/// migration, the job failed; `aborted`: nothing was left behind, the
/// migration is over (otherwise it stays where it stands and can resume).
pub fn fail_migration(id: i64, code: pgrx::PgSqlErrorCode, message: &str, aborted: bool) {
    let shown = hide_values(id, "failed", message, Some(code as i32));
    let message = shown.as_str();
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET last_error = $2, last_errcode = $3, updated_at = clock_timestamp(), \
                    phase = CASE WHEN $4 THEN 'aborted' ELSE phase END, \
                    finished_at = CASE WHEN $4 THEN clock_timestamp() ELSE finished_at END WHERE id = $1",
            &[id.into(), message.into(), (code as i32).into(), aborted.into()],
        );
        spi::exec_args(
            "UPDATE zdm.jobs SET state = 'failed', last_error = $2, finished_at = clock_timestamp() WHERE migration_id = $1",
            &[id.into(), message.into()],
        );
    });
    log_step(Step { migration: id, step: "failed", duration_ms: 0.0, lock_wait_ms: None, lock_attempts: None, detail: Some(message.to_string()) });
}
