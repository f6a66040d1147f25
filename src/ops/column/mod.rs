//! The steps shared by a rename and a type change: expand (a new column
//! beside the old one, what depends on the old one carried over, a sync
//! trigger), backfill, index builds and validation (the worker), contract
//! (drop the old column; a type change's shadow takes its name) and abort
//! (drop the new column). Expand, contract and abort run in the caller's
//! transaction, so a migration tool's transaction commits or rolls back all
//! of it. Locks are taken through `locking::lock_table`.

pub mod backfill;
pub mod carry;
pub mod validate;

use crate::catalog::{self, Migration, Phase, Step};
use crate::engine::{jobs, locking, steps, Batch, BuildState, IndexTask, Operation, Share};
use crate::errors::{raise, raise_with_detail, Code};
use crate::introspect::{self, DependentKind, Table};
use crate::ops::constraint;
use crate::spi::{self, ident, literal};
use crate::{guard, security};
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::Instant;

/// The steps a rename and a type change share: a new column beside the old
/// one, kept in sync by a trigger, backfilled, its carried indexes built and
/// its carried constraints validated, then swapped in at contract.
pub struct ColumnSteps {
    pub kinds: &'static [&'static str],
    /// At contract the new column takes the old one's name (a type change's
    /// shadow column); a rename keeps the new name.
    pub takes_old_name: bool,
}

impl Operation for ColumnSteps {
    fn kinds(&self) -> &'static [&'static str] {
        self.kinds
    }
    fn worker_type(&self) -> &'static str {
        "zdm backfill"
    }
    fn has_backfill(&self) -> bool {
        true
    }
    fn backfill_batch(&self, migration: i64, batch_size: i32, share: Share) -> Batch {
        backfill::step(migration, batch_size, share)
    }
    fn builds(&self, migration: i64) -> Vec<IndexTask> {
        carry::pending_builds(migration)
    }
    fn build_state(&self, migration: i64, task: &IndexTask, state: BuildState) {
        match state {
            BuildState::Building => carry::set_state(migration, &task.key, "building", None),
            BuildState::Valid => carry::set_state(migration, &task.key, "valid", None),
            BuildState::Failed { code, message } => {
                let shown = crate::catalog::hide_values(migration, "index build failed", message, Some(code as i32));
                carry::set_state(migration, &task.key, "failed", Some(&shown));
                jobs::fail(migration, "index build failed", message);
            }
        }
    }
    fn validate(&self, migration: i64) -> bool {
        validate::run(migration)
    }
    fn has_contract(&self) -> bool {
        true
    }
    fn contract(&self, m: &Migration) {
        contract_steps(m, &m.table_sql(), Instant::now(), self.takes_old_name)
    }
    fn abort(&self, m: &Migration) {
        abort_steps(m)
    }
}

/// What expand adds beside the old column, and how the two are kept in sync.
pub struct NewColumn<'a> {
    /// `rename` or `change_type`
    pub kind: &'static str,
    pub name: &'a str,
    /// The new column's type and typmod; None: the old column's type and
    /// collation.
    pub new_type: Option<(pg_sys::Oid, i32)>,
    /// The sync trigger for the old column as it is under expand's lock.
    pub trigger: &'a dyn Fn(&introspect::Column) -> SyncTrigger,
    /// The new column's default marks the INSERTs that leave it out
    /// (`trigger::written`): a rename's sync trigger decides from them.
    pub marks_unwritten: bool,
}

/// The trigger that keeps the new column in sync, and for a type change the
/// conversion it runs (recorded in the catalog, where the trigger reads it:
/// nothing a trigger's arguments say is executed).
pub struct SyncTrigger {
    /// `<prefix><id>` names it (the guard protects both prefixes)
    pub name_prefix: &'static str,
    pub function: &'static str,
    pub args: Vec<String>,
    /// (node tree, deparsed SQL) of a type change's conversion
    pub conversion: Option<(String, String)>,
}

/// Expand: add the new column beside `old_column`, carry what depends on the
/// old one (checks and foreign keys NOT VALID, indexes to build, attributes,
/// statistics), install the sync trigger and record the migration — all in
/// the caller's transaction, under one brief ACCESS EXCLUSIVE lock.
pub fn expand(relid: pg_sys::Oid, old_column: &str, spec: &NewColumn) -> i64 {
    let new_column = spec.name;
    let started = Instant::now();
    // Rights first, before any lock: only the owner's members get further.
    let table = introspect::owned_table(relid);
    let t = table.sql();
    if old_column == new_column {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("old and new column names are both {}", ident(old_column)),
            "Pass a new column name that differs from the old one.",
        );
    }
    if new_column.is_empty() || new_column.len() > 63 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid new column name {}", literal(new_column)),
            "Column names are 1 to 63 bytes long.",
        );
    }
    let owner = introspect::table_owner(relid);
    let caller = catalog::current_user();
    security::as_owner(owner, || {
        // Cheap checks without a lock (a typo must not take ACCESS EXCLUSIVE),
        // then again under the lock: a concurrent expand that committed while
        // we waited is seen now.
        check_expandable(&table, old_column, new_column);
        // The row estimate may sample ~128 blocks: not under the lock.
        let (rows_estimate, rows_per_block) = introspect::row_estimates(&table, introspect::relation_blocks(relid));
        let lock = locking::lock_table(relid, &t, "ACCESS EXCLUSIVE");
        let (col, deps) = check_expandable(&table, old_column, new_column);
        let id = catalog::next_id();
        let new = ident(new_column);

        // format_type under the pinned search_path: qualified where needed.
        let (type_sql, collatable) = match spec.new_type {
            Some((oid, typmod)) => (
                spi::one::<String>("SELECT pg_catalog.format_type($1, $2)", &[oid.into(), typmod.into()]).unwrap_or_default(),
                spi::one::<bool>("SELECT typcollation <> 0 FROM pg_catalog.pg_type WHERE oid = $1", &[oid.into()]).unwrap_or(false),
            ),
            None => (col.type_sql.clone(), true),
        };
        let collate = col.collation_sql.as_deref().filter(|_| collatable).map(|c| format!(" COLLATE {c}")).unwrap_or_default();
        // DEFAULT NULL: a domain's default must not fill the existing rows
        // (they would look backfilled) nor, for a rename, new ones.
        spi::exec(&format!("ALTER TABLE ONLY {t} ADD COLUMN {new} {type_sql}{collate} DEFAULT NULL"));
        if spec.marks_unwritten {
            // The mark that tells the sync trigger an INSERT left the new
            // column out (trigger/written.rs); its value is the old column's
            // default, for `SET new = DEFAULT` and carried ON … SET DEFAULT.
            let value = introspect::stable_default(relid, col.attnum);
            // The value's cast leaves out the type modifier: the column's own
            // assignment coercion applies it (a too-long default still fails
            // as before, rather than being cut by an explicit cast).
            let mark_type = spi::one::<String>(
                "SELECT pg_catalog.format_type(atttypid, NULL) FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                &[relid.into(), col.attnum.into()],
            )
            .unwrap_or_else(|| type_sql.clone());
            let default = crate::trigger::written::default_sql(id, value.as_deref(), &mark_type);
            spi::exec(&format!("ALTER TABLE ONLY {t} ALTER COLUMN {new} SET DEFAULT {default}"));
            // The old column's default carries a mark too, so that an INSERT
            // naming both columns (a copy of whole rows) is told from one
            // naming the new column only. Not on an identity, nor where a
            // domain's default applies (a column default would stop
            // following ALTER DOMAIN).
            let own = introspect::column_default(relid, col.attnum);
            let domain_default = spi::one::<bool>(
                "SELECT ty.typdefaultbin IS NOT NULL FROM pg_catalog.pg_attribute a \
                   JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid WHERE a.attrelid = $1 AND a.attnum = $2",
                &[relid.into(), col.attnum.into()],
            )
            .unwrap_or(false);
            if !col.identity && (own.is_some() || !domain_default) {
                let default = crate::trigger::written::default_sql(-id, own.as_deref(), &mark_type);
                spi::exec(&format!("ALTER TABLE ONLY {t} ALTER COLUMN {} SET DEFAULT {default}", ident(old_column)));
            }
        }
        if let Some(comment) = &col.comment {
            spi::exec(&format!("COMMENT ON COLUMN {t}.{new} IS {}", literal(comment)));
        }
        let new_attnum = introspect::column(relid, new_column).map(|c| c.attnum).unwrap_or_default();
        let attributes = carry_column_attributes(&t, col.attnum, new_attnum, relid, &new);

        // CHECK constraints on the old column alone, copied NOT VALID onto the
        // new one. The copy's name keeps room for its suffix within 63 bytes.
        let mut carried = Vec::new();
        for dep in &deps {
            if let DependentKind::SingleColumnCheck { oid, name } = &dep.kind {
                let expr = check_expression_for(&table, *oid, col.attnum, new_attnum);
                let copy = spi::with_suffix(name, &format!("_zdm{id}"));
                spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} CHECK ({expr}) NOT VALID", ident(&copy)));
                carried.push((copy, name.clone()));
            }
        }
        // Foreign keys from the old column to other tables: copied NOT VALID
        // onto the new column, then validated and renamed at contract like
        // the carried checks. ADD CONSTRAINT locks the referenced table SHARE
        // ROW EXCLUSIVE while this table's ACCESS EXCLUSIVE is held: one
        // bounded wait, no retry (`locking::one_attempt`).
        locking::one_attempt(|| {
            for dep in &deps {
                if let DependentKind::ForeignKey { oid, name } = &dep.kind {
                    let definition = foreign_key_definition(*oid, col.attnum, new_attnum, relid);
                    let copy = spi::with_suffix(name, &format!("_zdm{id}"));
                    spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} {definition} NOT VALID", ident(&copy)));
                    carried.push((copy, name.clone()));
                }
            }
        });
        // Extended statistics on plain columns: copied onto the new column.
        let mut statistics: Vec<(String, String)> = Vec::new();
        for dep in &deps {
            if let DependentKind::Statistics { oid } = &dep.kind {
                statistics.push(copy_statistics(*oid, col.attnum, new_attnum, &t, id));
            }
        }
        // Indexes and keys on the old column: definitions for the new column,
        // built concurrently after the backfill (see carry.rs).
        let mut indexes = Vec::new();
        for dep in &deps {
            let (oid, constraint) = match &dep.kind {
                DependentKind::Index { oid } => (*oid, None),
                DependentKind::Key { index, name, primary } => (*index, Some((name.clone(), *primary))),
                _ => continue,
            };
            let old_index = spi::one::<String>("SELECT relname::text FROM pg_catalog.pg_class WHERE oid = $1", &[oid.into()]).unwrap_or_default();
            let new_index = spi::with_suffix(&old_index, &format!("_zdm{id}"));
            let (definition, replica_identity, clustered) = carry::definition(&table, oid, col.attnum, new_attnum, &new_index);
            indexes.push(carry::Carried { old_index, new_index, definition, constraint, replica_identity, clustered });
        }
        // NOT NULL travels as a NOT VALID check until contract validates it.
        let not_null_check = col.not_null.then(|| {
            let name = spi::with_suffix(&format!("zdm_{id}_{new_column}"), "_not_null");
            spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} {} NOT VALID", ident(&name), steps::not_null_clause(new_column)));
            name
        });

        let sync = (spec.trigger)(&col);
        let trigger = format!("{}{id}", sync.name_prefix);
        let (function, conversion) = (sync.function, sync.conversion);
        let args: Vec<String> = sync.args.iter().map(|a| literal(a)).collect();
        spi::exec(&format!(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {function}({})",
            ident(&trigger),
            args.join(", ")
        ));
        // ALWAYS: it fires under session_replication_role = replica too, so
        // writes applied by a logical replication subscription stay in sync.
        spi::exec(&format!("ALTER TABLE {t} ENABLE ALWAYS TRIGGER {}", ident(&trigger)));

        let rel_blocks = introspect::relation_blocks(relid);
        catalog::insert_column_migration(
            id,
            &catalog::NewColumnMigration {
                kind: spec.kind,
                new_type: spec.new_type.map(|_| type_sql.as_str()),
                using_expr: conversion.as_ref().map(|c| c.1.as_str()),
                using_tree: conversion.as_ref().map(|c| c.0.as_str()),
                relid,
                schema: &table.schema,
                table: &table.name,
                old_column,
                new_column,
                rel_blocks,
                rows_estimate,
                rows_per_block,
                started_by: caller,
            },
        );
        catalog::set_objects(id, &trigger, not_null_check.as_deref(), &carried);
        for c in &indexes {
            carry::record(id, c);
        }
        if !statistics.is_empty() {
            let copies: Vec<String> = statistics.iter().map(|(c, _)| c.clone()).collect();
            let originals: Vec<String> = statistics.iter().map(|(_, o)| o.clone()).collect();
            catalog::as_catalog_owner(|| {
                spi::exec_args(
                    "UPDATE zdm.migrations SET carried_statistics = $2, carried_statistics_from = $3::text[]::name[] WHERE id = $1",
                    &[id.into(), copies.into(), originals.into()],
                )
            });
        }
        catalog::log_step(Step {
            migration: id,
            step: "expand",
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            lock_wait_ms: Some(lock.wait_ms),
            lock_attempts: Some(lock.attempts),
            detail: Some(format!(
                "added column {new} {}{}; trigger {}; {} check(s) carried; {} index(es) to build after the backfill{}{}",
                type_sql,
                if attributes.is_empty() { String::new() } else { format!(" ({})", attributes.join(", ")) },
                ident(&trigger),
                carried.len(),
                indexes.len(),
                if not_null_check.is_some() { "; NOT NULL pending as NOT VALID check" } else { "" },
                if col.identity { "; the identity moves to it at contract" } else { "" }
            )),
        });
        id
    })
}

/// Copy what PostgreSQL keeps per column onto the new one: statistics
/// target, attribute options (n_distinct …), storage, compression and
/// column privileges (`GRANT SELECT (col)`), so that readers of the new
/// column and the planner see the same thing. Returns what was carried.
fn carry_column_attributes(t: &str, old_attnum: i16, new_attnum: i16, relid: pg_sys::Oid, new: &str) -> Vec<String> {
    let row = spi::first_row(
        "SELECT a.attstattarget::int, a.attoptions::text[], a.attstorage::text, ty.typstorage::text, a.attcompression::text \
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.=) $2",
        &[relid.into(), old_attnum.into()],
        |r| {
            Ok((
                r.get::<i32>(1)?.unwrap_or(-1),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?.unwrap_or_default(),
            ))
        },
    );
    let Some((stattarget, options, storage, _, compression)) = row else { return Vec::new() };
    // Storage and compression only where the new column's type can take
    // them (a type change may go to a fixed-size type).
    let type_storage = spi::one::<String>(
        "SELECT ty.typstorage::text FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.=) $2",
        &[relid.into(), new_attnum.into()],
    )
    .unwrap_or_default();
    let varlena = type_storage != "p";
    let mut carried = Vec::new();
    if stattarget >= 0 {
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} SET STATISTICS {stattarget}"));
        carried.push(format!("statistics {stattarget}"));
    }
    // Only the options a user can set per column; a server build may keep
    // internal entries there too (this one adds `pg_attver=…`).
    let options: Vec<(&str, &str)> = options
        .iter()
        .filter_map(|o| o.split_once('='))
        .filter(|(k, _)| matches!(*k, "n_distinct" | "n_distinct_inherited"))
        .collect();
    if !options.is_empty() {
        let list: Vec<String> = options.iter().map(|(k, v)| format!("{} = {}", ident(k), literal(v))).collect();
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} SET ({})", list.join(", ")));
        carried.push(format!("options {}", list.join(", ")));
    }
    // PLAIN waits for contract: while both columns hold the value, a row
    // that fitted with one uncompressed, inline copy may not fit with two
    // (54000 "row is too big" for writes that worked before expand).
    if varlena && storage == "p" {
        carried.push("storage PLAIN at contract".into());
    } else if varlena && storage != type_storage {
        let mode = match storage.as_str() {
            "p" => "PLAIN",
            "e" => "EXTERNAL",
            "m" => "MAIN",
            _ => "EXTENDED",
        };
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} SET STORAGE {mode}"));
        carried.push(format!("storage {mode}"));
    }
    let method = match compression.as_str() {
        "p" => Some("pglz"),
        "l" => Some("lz4"),
        _ => None,
    };
    if let Some(method) = method.filter(|_| varlena) {
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} SET COMPRESSION {method}"));
        carried.push(format!("compression {method}"));
    }
    // Column privileges: one GRANT per grantee and privilege (grantee 0 = PUBLIC).
    let grants = Spi::connect_mut(|c| {
        let rows = c.update(
            "SELECT CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname::text) END, \
                    x.privilege_type, x.is_grantable \
               FROM pg_catalog.pg_attribute a, pg_catalog.aclexplode(a.attacl) x \
               LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) x.grantee \
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.=) $2",
            None,
            &[relid.into(), old_attnum.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    for (grantee, privilege, grantable) in &grants {
        if !matches!(privilege.as_str(), "SELECT" | "INSERT" | "UPDATE" | "REFERENCES") {
            continue;
        }
        spi::exec(&format!(
            "GRANT {privilege} ({new}) ON {t} TO {grantee}{}",
            if *grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    if !grants.is_empty() {
        carried.push(format!("{} column privilege(s)", grants.len()));
    }
    carried
}

/// `CREATE STATISTICS` for the new column, a copy of statistics object
/// `oid` (kinds, columns with `from` replaced by `to`, statistics target).
/// Returns the copy (qualified) and the original's name.
fn copy_statistics(oid: pg_sys::Oid, from: i16, to: i16, t: &str, id: i64) -> (String, String) {
    let row = spi::first_row(
        "SELECT n.nspname::text, s.stxname::text, \
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::text), ', ' ORDER BY k.ord) \
                   FROM pg_catalog.unnest(s.stxkeys::int2[]) WITH ORDINALITY k(att, ord) \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = s.stxrelid AND a.attnum = CASE WHEN k.att = $2 THEN $3 ELSE k.att END), \
                (SELECT pg_catalog.string_agg(CASE k WHEN 'd' THEN 'ndistinct' WHEN 'f' THEN 'dependencies' ELSE 'mcv' END, ', ') \
                   FROM pg_catalog.unnest(s.stxkind) k WHERE k IN ('d', 'f', 'm')), \
                s.stxstattarget::int \
           FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace WHERE s.oid = $1",
        &[oid.into(), from.into(), to.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<i32>(5)?.unwrap_or(-1),
            ))
        },
    )
    .unwrap_or_default();
    let (schema, name, columns, kinds, target) = row;
    let copy = spi::qualified(&schema, &spi::with_suffix(&name, &format!("_zdm{id}")));
    spi::exec(&format!("CREATE STATISTICS {copy} ({kinds}) ON {columns} FROM {t}"));
    if target >= 0 {
        spi::exec(&format!("ALTER STATISTICS {copy} SET STATISTICS {target}"));
    }
    (copy, name)
}

/// SQL over a pg_constraint row `c`: a foreign key's MATCH, ON UPDATE and
/// ON DELETE clauses as written in its definition ("" for the defaults).
const FK_ACTIONS: &str = "CASE c.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END \
    || CASE c.confupdtype WHEN 'r' THEN ' ON UPDATE RESTRICT' WHEN 'c' THEN ' ON UPDATE CASCADE' \
         WHEN 'n' THEN ' ON UPDATE SET NULL' WHEN 'd' THEN ' ON UPDATE SET DEFAULT' ELSE '' END \
    || CASE c.confdeltype WHEN 'r' THEN ' ON DELETE RESTRICT' WHEN 'c' THEN ' ON DELETE CASCADE' \
         WHEN 'n' THEN ' ON DELETE SET NULL' WHEN 'd' THEN ' ON DELETE SET DEFAULT' ELSE '' END";

/// `FOREIGN KEY (…) REFERENCES …` of constraint `oid` with attribute `from`
/// replaced by `to`, from pg_constraint's columns and actions. Always
/// immediate: deferred checks cannot fire inside the security-restricted
/// batches; contract gives the key back its deferrability.
fn foreign_key_definition(oid: pg_sys::Oid, from: i16, to: i16, relid: pg_sys::Oid) -> String {
    spi::one::<String>(
        &format!("SELECT pg_catalog.format('FOREIGN KEY (%s) REFERENCES %s (%s)%s', \
                  (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::text), ', ' ORDER BY k.ord) \
                     FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(att, ord) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = $4 AND a.attnum = CASE WHEN k.att = $2 THEN $3 ELSE k.att END), \
                  (SELECT pg_catalog.format('%I.%I', n.nspname, r.relname) FROM pg_catalog.pg_class r \
                     JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace WHERE r.oid = c.confrelid), \
                  (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::text), ', ' ORDER BY k.ord) \
                     FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY k(att, ord) \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.att), \
                  {FK_ACTIONS}) \
           FROM pg_catalog.pg_constraint c WHERE c.oid = $1"),
        &[oid.into(), from.into(), to.into(), relid.into()],
    )
    .unwrap_or_default()
}

/// Everything that must hold for `old_column` → `new_column` on `table`;
/// returns the old column and its dependents.
fn check_expandable(table: &Table, old_column: &str, new_column: &str) -> (introspect::Column, Vec<introspect::Dependent>) {
    let relid = table.relid;
    let t = table.sql();
    introspect::migratable_table(relid);
    let col = introspect::user_column(table, old_column);
    if col.generated {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("column {} of table {t} is a generated column", ident(old_column)),
            "Generated columns are computed, not written; rename them with plain ALTER TABLE ... RENAME COLUMN.",
        );
    }
    if introspect::column(relid, new_column).is_some() {
        raise(
            Code::ERRCODE_DUPLICATE_COLUMN,
            format!("column {} of table {t} already exists", ident(new_column)),
            "Pick a new column name that is not in use, or drop the existing column first.",
        );
    }
    if let Some((id, phase)) = catalog::in_flight_on_columns(relid, &[old_column, new_column]) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column {} of table {t} is already under zdm migration {id} (phase {phase})", ident(old_column)),
            format!("Finish it with zdm.contract({id}) or undo it with zdm.abort({id}) first."),
        );
    }
    // PostgreSQL refuses to fire deferred triggers queued inside a
    // security-restricted operation (so they cannot run as someone else at
    // commit): every batch would fail. Say so now.
    let deferred = spi::one::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(t.tgname::text), ', ') FROM pg_catalog.pg_trigger t \
           JOIN pg_catalog.pg_constraint c ON c.oid OPERATOR(pg_catalog.=) t.tgconstraint \
          WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND c.contype OPERATOR(pg_catalog.=) 't' AND c.condeferred",
        &[relid.into()],
    );
    if let Some(names) = deferred {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("table {t} has INITIALLY DEFERRED constraint triggers ({names}); zdm's backfill cannot fire them"),
            "zdm runs batches as the table owner in a security-restricted operation, where PostgreSQL refuses deferred triggers. Make them INITIALLY IMMEDIATE for the migration (ALTER TABLE ... ALTER CONSTRAINT), or rename with plain DDL.",
        );
    }
    // Foreign keys from other tables referencing the column are re-pointed at
    // contract; supported when they reference this column alone, from a
    // table the owner may alter.
    let referenced = spi::one::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('%I on %s', conname, conrelid::pg_catalog.regclass), ', ') \
           FROM pg_catalog.pg_constraint WHERE contype = 'f' AND confrelid = $1 AND $2 = ANY (confkey) \
            AND (confkey <> ARRAY[$2]::int2[] OR conrelid = $1 \
                 OR NOT pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = conrelid), 'USAGE'))",
        &[relid.into(), col.attnum.into()],
    );
    if let Some(fks) = referenced {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("column {} of table {t} is referenced by foreign key(s) zdm cannot re-point: {fks}", ident(old_column)),
            "zdm re-points single-column foreign keys from other tables that the table owner may alter; multi-column and self-referencing keys are not supported yet. Rename with plain DDL, or drop and re-add those foreign keys around the migration.",
        );
    }
    let deps = introspect::column_dependents(relid, col.attnum);
    introspect::refuse_blocking_dependents(
        &deps,
        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        &t,
        old_column,
        "zdm carries indexes, keys, foreign keys, single-column checks and statistics on plain columns, and lets views, rules, policies, triggers and generated columns wait for contract; exclusion constraints, multi-column checks and expression statistics are not carried yet: drop them and recreate them on the new column after contract, or rename with plain DDL.",
    );
    (col, deps)
}

/// The text of CHECK constraint `oid` with references to attnum `from`
/// pointed at attnum `to`, deparsed against the table (quotes as needed).
fn check_expression_for(table: &Table, oid: pg_sys::Oid, from: i16, to: i16) -> String {
    let bin = spi::one::<String>(
        "SELECT conbin::text FROM pg_catalog.pg_constraint WHERE oid = $1",
        &[oid.into()],
    )
    .unwrap_or_default();
    let bin = CString::new(bin).unwrap_or_default();
    let relname = CString::new(table.name.as_str()).unwrap_or_default();
    unsafe {
        let node = pg_sys::stringToNode(bin.as_ptr()) as *mut pg_sys::Node;
        carry::retarget(node, from, to);
        let dpcontext = pg_sys::deparse_context_for(relname.as_ptr(), table.relid);
        let text = pg_sys::deparse_expression(node, dpcontext, false, false);
        std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

fn contract_steps(m: &Migration, t: &str, started: Instant, takes_old_name: bool) {
    let id = m.id;
    let old_col = introspect::column(m.relid, m.old_col());
    let Some(old_col) = old_col else {
        raise(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("column {} of table {t} no longer exists", ident(m.old_col())),
            format!("It was dropped outside zdm; call zdm.abort({id}) and start again."),
        )
    };
    let old_attnum = old_col.attnum;
    let blocking_hint = "Drop or move these objects to the new column first (zdm never drops them with CASCADE), then call zdm.contract again.";
    let refuse_dependents = || {
        let deps = introspect::column_dependents(m.relid, old_attnum);
        refuse_not_carried(m, t, &deps, blocking_hint);
        deps
    };
    refuse_dependents();
    carry::require_built(m);
    // The sync trigger must still be there (under its name): without it the
    // columns drift apart, and a renamed copy would outlive the old column.
    if let Some(fault) = crate::trigger::sync_trigger_fault(m.relid, m.trigger_name.as_deref().unwrap_or_default()) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot contract zdm migration {id}: its sync trigger {} on {t} {fault}", ident(m.trigger_name.as_deref().unwrap_or_default())),
            format!("Writes were not kept in sync; call zdm.abort({id}) and start again."),
        );
    }

    refuse_later_triggers(m, t);
    // 1. Carried checks and keys the worker has not validated (a backfill
    //    run by hand): a scan under SHARE UPDATE EXCLUSIVE, writers keep writing.
    let validate_started = Instant::now();
    let checks: Vec<String> = validate::pending(m).into_iter().map(|p| p.name).collect();
    let mut validate_lock = None;
    for p in validate::pending(m) {
        let reference = p.reference.as_ref().map(|(o, s)| (*o, s.as_str()));
        validate_lock.get_or_insert(steps::validate(m.relid, t, &p.name, reference));
    }
    // 2. Verify before destroying: every row's new column equals its old one.
    //    Under SHARE UPDATE EXCLUSIVE writers go on; every write goes through
    //    the sync trigger, so a row in sync now stays in sync until the drop.
    let scan_lock = validate_lock.unwrap_or_else(|| locking::lock_table(m.relid, t, "SHARE UPDATE EXCLUSIVE"));
    // Inheritance is refused at expand and guarded after; a child attached
    // with the guard bypassed has no trigger and no backfill, and the drop
    // below would recurse into it. Checked under the lock that keeps new
    // children out until commit.
    if let Some(what) = introspect::inheritance(m.relid) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot contract zdm migration {id}: {t} has become {what}"),
            format!("Nothing was dropped. Its rows were not kept in sync; detach it (ALTER TABLE … NO INHERIT) and call zdm.contract({id}) again, or undo with zdm.abort({id})."),
        );
    }
    let out_of_sync = count_out_of_sync(m, t);
    catalog::log_step(Step {
        migration: id,
        step: "contract: verify",
        duration_ms: validate_started.elapsed().as_secs_f64() * 1000.0,
        lock_wait_ms: Some(scan_lock.wait_ms),
        lock_attempts: Some(scan_lock.attempts),
        detail: Some(format!(
            "{out_of_sync} row(s) out of sync{}",
            if checks.is_empty() { String::new() } else { format!("; validated {}", checks.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")) }
        )),
    });
    if out_of_sync > 0 {
        raise_with_detail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "cannot contract zdm migration {id}: {out_of_sync} row(s) of {t} have {} different from {}",
                ident(m.new_col()),
                ident(m.old_col())
            ),
            "Nothing was dropped; the old column still holds every value. Rows get out of sync only when writes bypass the sync trigger (it was disabled, or a later BEFORE trigger changed a column after it).",
            match &m.using_expr {
                // A type change: a write to the old column recomputes the shadow.
                Some(expected) => format!(
                    "Rewrite them: UPDATE {t} SET {old} = {old} WHERE NOT pg_catalog.record_image_eq(ROW({expected}), ROW({new})); then call zdm.contract({id}) again. Or undo with zdm.abort({id}).",
                    new = ident(m.new_col()),
                    old = ident(m.old_col())
                ),
                None => format!(
                    "Copy them over: UPDATE {t} SET {new} = {old} WHERE NOT pg_catalog.record_image_eq(ROW({old}), ROW({new})); then call zdm.contract({id}) again. Or undo with zdm.abort({id}).",
                    new = ident(m.new_col()),
                    old = ident(m.old_col())
                ),
            },
        );
    }

    // 3. Catalog-only steps under ACCESS EXCLUSIVE. Tables whose foreign
    //    keys reference the old column are locked first, in the order their
    //    writers take locks (the child, then the parent for the key check):
    //    the other order deadlocks with a writer inserting a child row.
    let final_started = Instant::now();
    let children = spi::one::<Vec<pg_sys::Oid>>(
        "SELECT array_agg(DISTINCT conrelid) FROM pg_catalog.pg_constraint \
          WHERE contype = 'f' AND confrelid = $1 AND $2 = ANY (confkey) AND conrelid <> $1",
        &[m.relid.into(), old_attnum.into()],
    )
    .unwrap_or_default();
    for child in children {
        let child_sql = catalog::current_table_sql(child).unwrap_or_default();
        locking::lock_table(child, &child_sql, "ACCESS EXCLUSIVE");
    }
    let lock = locking::lock_table(m.relid, t, "ACCESS EXCLUSIVE");
    let deps = refuse_dependents();
    refuse_later_triggers(m, t);
    let (old, new) = (ident(m.old_col()), ident(m.new_col()));
    // zdm's own DDL from here on: it passes the guard.
    guard::allow_zdm_ddl(|| contract_catalog_steps(m, t, old_attnum, &deps, takes_old_name));
    catalog::set_phase(id, Phase::Contracted);
    jobs::finish_for_migration(id, "completed");
    catalog::log_step(Step {
        migration: id,
        step: "contract",
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        lock_wait_ms: Some(lock.wait_ms),
        lock_attempts: Some(lock.attempts),
        detail: Some(format!(
            "dropped {old}; {new} {} default, NOT NULL, keys and checks; ACCESS EXCLUSIVE held {:.1} ms",
            if takes_old_name { "took its name," } else { "now carries" },
            final_started.elapsed().as_secs_f64() * 1000.0 - lock.wait_ms
        )),
    });
}

/// Contract's catalog-only steps, under ACCESS EXCLUSIVE: sequence
/// ownership, default, NOT NULL, the trigger, the old column, check names.
fn contract_catalog_steps(m: &Migration, t: &str, old_attnum: i16, deps: &[introspect::Dependent], takes_old_name: bool) {
    let (old, new) = (ident(m.old_col()), ident(m.new_col()));
    let new_type = spi::one::<pg_sys::Oid>(
        "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2",
        &[m.relid.into(), m.new_col().into()],
    );
    for dep in deps {
        if let DependentKind::OwnedSequence { oid } = dep.kind {
            let seq = crate::catalog::current_table_sql(oid).unwrap_or_default();
            spi::exec(&format!("ALTER SEQUENCE {seq} OWNED BY {t}.{new}"));
            // A serial widened to bigint: its sequence goes on past 2^31.
            let integer = [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID];
            if let Some(ty) = new_type.filter(|ty| takes_old_name && integer.contains(ty)) {
                spi::exec(&format!("ALTER SEQUENCE {seq} AS {}", spi::one::<String>("SELECT pg_catalog.format_type($1, NULL)", &[ty.into()]).unwrap_or_default()));
            }
        }
    }
    // The old column's own default (under a rename's mark, if it has one).
    let old_default = crate::trigger::written::unmarked_default(m.relid, old_attnum)
        .unwrap_or_else(|| introspect::column_default(m.relid, old_attnum));
    if let Some(default) = old_default {
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} SET DEFAULT {default}"));
    } else {
        // A rename's mark (or a domain's explicit NULL) goes with the migration.
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} DROP DEFAULT"));
    }
    // PLAIN storage, kept off the new column while both columns held values.
    let plain = spi::one::<bool>(
        "SELECT o.attstorage = 'p' AND n.attstorage <> 'p' FROM pg_catalog.pg_attribute o, pg_catalog.pg_attribute n \
          WHERE o.attrelid = $1 AND o.attnum = $2 AND n.attrelid = $1 AND n.attname = $3",
        &[m.relid.into(), old_attnum.into(), m.new_col().into()],
    );
    if plain == Some(true) {
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {new} SET STORAGE PLAIN"));
    }
    // Deferrability of carried foreign keys, read before the originals go.
    let deferrable: Vec<(String, String)> = m
        .carried_from
        .iter()
        .filter_map(|original| {
            spi::one::<String>(
                "SELECT CASE WHEN condeferred THEN 'DEFERRABLE INITIALLY DEFERRED' ELSE 'DEFERRABLE INITIALLY IMMEDIATE' END \
                   FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2 AND contype = 'f' AND condeferrable",
                &[m.relid.into(), original.as_str().into()],
            )
            .map(|clause| (original.clone(), clause))
        })
        .collect();
    // Foreign keys from other tables: re-pointed NOT VALID at the new
    // column's unique index, the old ones dropped; validated after commit.
    let repointed = repoint_referencing_keys(m, t, old_attnum);
    if let Some(trigger) = &m.trigger_name {
        spi::exec(&format!("DROP TRIGGER {} ON {t}", ident(trigger)));
    }
    let identity = identity_of(m.relid, old_attnum, new_type);
    spi::exec(&format!("ALTER TABLE {t} DROP COLUMN {old} RESTRICT"));
    if takes_old_name {
        // A type change: the shadow column becomes the column.
        spi::exec(&format!("ALTER TABLE {t} RENAME COLUMN {new} TO {old}"));
    }
    if let Some(nn) = &m.not_null_check {
        // Validated after the backfill: NOT NULL without a scan (before an
        // identity is added below, which needs it).
        steps::finish_not_null(m.relid, t, if takes_old_name { m.old_col() } else { m.new_col() }, nn);
    }
    if let Some(identity) = identity {
        // The identity sequence went with the old column: the column gets
        // one of the same name and options that goes on where it stopped.
        let column = if takes_old_name { &old } else { &new };
        spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {column} ADD {identity}"));
    }
    // The old indexes and keys went with the old column: the new ones take
    // their names, keys are attached USING INDEX.
    let schema = catalog::current_schema_of(m.relid).unwrap_or_default();
    carry::attach(m, t, &schema);
    // The originals went with the old column: the copies take their names.
    for (copy, original) in m.carried_checks.iter().zip(&m.carried_from) {
        let taken = spi::one::<bool>(
            "SELECT true FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
            &[m.relid.into(), original.as_str().into()],
        );
        if taken.is_none() {
            spi::exec(&format!("ALTER TABLE {t} RENAME CONSTRAINT {} TO {}", ident(copy), ident(original)));
        }
    }
    for (name, clause) in deferrable {
        spi::exec(&format!("ALTER TABLE {t} ALTER CONSTRAINT {} {clause}", ident(&name)));
    }
    // The original statistics went with the old column: the copies take their names.
    let statistics = catalog::as_catalog_owner(|| {
        spi::first_row(
            "SELECT carried_statistics, carried_statistics_from::text[] FROM zdm.migrations WHERE id = $1",
            &[m.id.into()],
            |r| Ok((r.get::<Vec<String>>(1)?.unwrap_or_default(), r.get::<Vec<String>>(2)?.unwrap_or_default())),
        )
    })
    .unwrap_or_default();
    for (copy, original) in statistics.0.iter().zip(&statistics.1) {
        spi::exec(&format!("ALTER STATISTICS {copy} RENAME TO {}", ident(original)));
    }
    finish_repointed_keys(m, repointed, if takes_old_name { m.old_col() } else { m.new_col() });
}

struct Repointed {
    child: pg_sys::Oid,
    child_sql: String,
    name: String,
    temporary: String,
    definition: String,
    deferrable: Option<String>,
}

/// Under contract's lock: every foreign key referencing the old column gets
/// a NOT VALID twin referencing the new column (its unique index is built),
/// and the original is dropped, so the old column can go.
fn repoint_referencing_keys(m: &Migration, t: &str, old_attnum: i16) -> Vec<Repointed> {
    let rows = Spi::connect_mut(|c| {
        let rows = c.update(
            &format!("SELECT c.conrelid, pg_catalog.format('%I.%I', n.nspname, r.relname), c.conname::text, \
                    (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::text), ', ' ORDER BY k.ord) \
                       FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(att, ord) \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att), \
                    {FK_ACTIONS}, \
                    CASE WHEN c.condeferrable THEN CASE WHEN c.condeferred THEN 'DEFERRABLE INITIALLY DEFERRED' \
                                                        ELSE 'DEFERRABLE INITIALLY IMMEDIATE' END END \
               FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
              WHERE c.contype = 'f' AND c.confrelid = $1 AND c.confkey = ARRAY[$2]::int2[] ORDER BY c.conname"),
            None,
            &[m.relid.into(), old_attnum.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?.unwrap_or_default(),
                r.get::<String>(6)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    let mut done = Vec::new();
    for (child, child_sql, name, columns, actions, deferrable) in rows {
        locking::lock_table(child, &child_sql, "ACCESS EXCLUSIVE");
        let temporary = spi::with_suffix(&name, &format!("_zdm{}", m.id));
        let definition = format!("FOREIGN KEY ({columns}) REFERENCES {t} ({}){actions}", ident(m.new_col()));
        spi::exec(&format!("ALTER TABLE {child_sql} ADD CONSTRAINT {} {definition} NOT VALID", ident(&temporary)));
        spi::exec(&format!("ALTER TABLE {child_sql} DROP CONSTRAINT {}", ident(&name)));
        done.push(Repointed { child, child_sql, name, temporary, definition, deferrable });
    }
    done
}

/// After the old column is gone: the re-pointed keys take their names and
/// deferrability back, and each is validated by a constraint migration
/// that a worker runs after this transaction commits (a scan under SHARE
/// UPDATE EXCLUSIVE: writes go on).
fn finish_repointed_keys(m: &Migration, keys: Vec<Repointed>, column: &str) {
    for k in keys {
        spi::exec(&format!("ALTER TABLE {} RENAME CONSTRAINT {} TO {}", k.child_sql, ident(&k.temporary), ident(&k.name)));
        if let Some(clause) = &k.deferrable {
            spi::exec(&format!("ALTER TABLE {} ALTER CONSTRAINT {} {clause}", k.child_sql, ident(&k.name)));
        }
        // As it stands now (the referenced column may have been renamed since).
        let definition = spi::one::<String>(
            "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
            &[k.child.into(), k.name.as_str().into()],
        )
        .map(|d| d.trim_end_matches(" NOT VALID").to_string())
        .unwrap_or_else(|| k.definition.clone());
        let id = catalog::next_id();
        let started_by = spi::one::<String>("SELECT session_user::text", &[]).unwrap_or_default();
        constraint::record(
            &constraint::Request {
                id,
                kind: constraint::FOREIGN_KEY.into(),
                relid: k.child.to_u32(),
                column: None,
                constraint_name: k.name.clone(),
                definition,
                ref_relid: Some(m.relid.to_u32()),
                started_by,
                search_path: "pg_catalog, pg_temp".into(),
                depends_on: None,
                lock: locking::LockPolicy::current(),
            },
            false,
        );
        jobs::launch_after_commit(id);
        pgrx::notice!(
            "zdm migration {}: foreign key {} on {} now references {}; zdm migration {id} validates it after commit",
            m.id,
            ident(&k.name),
            k.child_sql,
            ident(column)
        );
    }
}

/// `GENERATED … AS IDENTITY (…)` recreating the identity of column
/// `attnum` — same kind, sequence name and options, starting at the value
/// the old sequence would hand out next — or None if it is not an identity
/// column. A maximum that was the old type's default is left to the new
/// type's (an int identity widened to bigint goes on past 2^31).
fn identity_of(relid: pg_sys::Oid, attnum: i16, new_type: Option<pg_sys::Oid>) -> Option<String> {
    let row = spi::first_row(
        "SELECT a.attidentity::text, s.seqrelid, pg_catalog.format('%I.%I', n.nspname, c.relname), \
                s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle, s.seqtypid \
           FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = a.attrelid \
                                      AND d.refobjsubid = a.attnum AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype = 'i' \
           JOIN pg_catalog.pg_sequence s ON s.seqrelid = d.objid \
           JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE a.attrelid = $1 AND a.attnum = $2 AND a.attidentity <> ''",
        &[relid.into(), attnum.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<i64>(4)?.unwrap_or(1),
                r.get::<i64>(5)?.unwrap_or(1),
                r.get::<i64>(6)?.unwrap_or(i64::MAX),
                r.get::<i64>(7)?.unwrap_or(1),
                r.get::<bool>(8)?.unwrap_or(false),
                r.get::<pg_sys::Oid>(9)?.unwrap_or(pg_sys::INT8OID),
            ))
        },
    )?;
    let (kind, _, seq_sql, increment, min, max, cache, cycle, seq_type) = row;
    let (last, called) = spi::first_row(&format!("SELECT last_value, is_called FROM {seq_sql}"), &[], |r| {
        Ok((r.get::<i64>(1)?.unwrap_or(min), r.get::<bool>(2)?.unwrap_or(false)))
    })
    .unwrap_or((min, false));
    let start = if called { last.saturating_add(increment) } else { last };
    let type_max = |t: pg_sys::Oid| match t {
        pg_sys::INT2OID => i16::MAX as i64,
        pg_sys::INT4OID => i32::MAX as i64,
        _ => i64::MAX,
    };
    let widened = new_type.is_some_and(|t| t != seq_type);
    let max_clause = if widened && max == type_max(seq_type) { String::new() } else { format!(" MAXVALUE {max}") };
    Some(format!(
        "GENERATED {} AS IDENTITY (SEQUENCE NAME {seq_sql} INCREMENT BY {increment} MINVALUE {min}{max_clause} START WITH {start} CACHE {cache}{})",
        if kind == "a" { "ALWAYS" } else { "BY DEFAULT" },
        if cycle { " CYCLE" } else { " NO CYCLE" }
    ))
}

/// Rows whose new column is not a binary-identical copy of the old one
/// (record image equality, the `*=` operator's function: no user-defined
/// operator is involved, NULLs compare equal to NULLs, TOAST is looked
/// through). Called as a function: `ROW(a) op ROW(b)` would compare
/// column by column with the type's own operator.
fn count_out_of_sync(m: &Migration, t: &str) -> i64 {
    // A type change compares with the conversion of the old value, under
    // the settings the convert trigger pins for it.
    let expected = m.using_expr.clone().unwrap_or_else(|| ident(m.old_col()));
    let source = spi::one::<pg_sys::Oid>(
        "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2",
        &[m.relid.into(), m.old_col().into()],
    );
    let pinned = m.using_expr.is_some() && source.is_some_and(crate::trigger::convert::pins_settings);
    let count = || {
        spi::one::<i64>(
            &format!(
                "SELECT pg_catalog.count(*) FROM ONLY {t} WHERE NOT pg_catalog.record_image_eq(ROW({expected}), ROW({}))",
                ident(m.new_col())
            ),
            &[],
        )
        .unwrap_or(0)
    };
    if pinned { crate::security::with_guc_nest_level(&crate::trigger::convert::PINNED_SETTINGS, count) } else { count() }
}

/// A user's BEFORE ROW trigger that fires after zdm's (triggers fire in
/// name order) could change a column after zdm synced it: rows written
/// between the verify scan and the final lock would then be lost with the
/// old column. Refused with 55000, naming them (zdm's own triggers of other
/// migrations touch other columns only).
fn refuse_later_triggers(m: &Migration, t: &str) {
    let Some(ours) = m.trigger_name.as_deref() else { return };
    let later = spi::one::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(tg.tgname::text), ', ' ORDER BY tg.tgname) \
           FROM pg_catalog.pg_trigger tg \
          WHERE tg.tgrelid = $1 AND NOT tg.tgisinternal AND tg.tgenabled <> 'D' \
            AND (tg.tgtype::int & 3) = 3 AND (tg.tgtype::int & 20) <> 0 \
            AND tg.tgname::text COLLATE \"C\" > $2::text COLLATE \"C\" \
            AND NOT EXISTS (SELECT 1 FROM zdm.migrations z WHERE z.relid = tg.tgrelid AND z.trigger_name = tg.tgname)",
        &[m.relid.into(), ours.into()],
    );
    if let Some(names) = later {
        raise_with_detail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot contract zdm migration {}: BEFORE ROW trigger(s) {names} on {t} fire after zdm's sync trigger {}", m.id, ident(ours)),
            format!("Triggers fire in name order; a later one could change {} after zdm synced it, and that change would be lost with the old column.", ident(m.old_col())),
            format!("Rename them to sort before {} (ALTER TRIGGER … RENAME TO …), or disable them, then call zdm.contract({}) again.", ident(ours), m.id),
        );
    }
}

/// Everything that depends on the old column and would be lost with it:
/// objects zdm does not carry (views, rules, policies …) and constraints or
/// indexes put on the old column after expand. NOT NULL added to the old
/// column counts too, unless the new column is NOT NULL already. Refused
/// with 2BP01 and one list; nothing is ever dropped with CASCADE.
fn refuse_not_carried(m: &Migration, t: &str, deps: &[introspect::Dependent], hint: &str) {
    let mut late: Vec<String> = deps
        .iter()
        .filter_map(|d| match &d.kind {
            DependentKind::SingleColumnCheck { name, .. } if !m.carried_from.contains(name) => Some(format!("check constraint {}", ident(name))),
            DependentKind::Blocking | DependentKind::NotCarried => Some(d.description.clone()),
            _ => None,
        })
        .collect();
    let carried_statistics = catalog::as_catalog_owner(|| {
        spi::one::<Vec<String>>("SELECT carried_statistics_from::text[] FROM zdm.migrations WHERE id = $1", &[m.id.into()])
    })
    .unwrap_or_default();
    for d in deps {
        if let DependentKind::Statistics { oid } = &d.kind {
            let name = spi::one::<String>("SELECT stxname::text FROM pg_catalog.pg_statistic_ext WHERE oid = $1", &[(*oid).into()])
                .unwrap_or_default();
            if !carried_statistics.contains(&name) {
                late.push(d.description.clone());
            }
        }
    }
    let carried: Vec<String> = carry::list(m.id).into_iter().map(|(c, _)| c.old_index).collect();
    for d in deps {
        let index = match &d.kind {
            DependentKind::Index { oid } | DependentKind::Key { index: oid, .. } => *oid,
            _ => continue,
        };
        let name = spi::one::<String>("SELECT relname::text FROM pg_catalog.pg_class WHERE oid = $1", &[index.into()]).unwrap_or_default();
        if !carried.contains(&name) {
            late.push(d.description.clone());
        }
    }
    let old_nn = introspect::column(m.relid, m.old_col()).is_some_and(|c| c.not_null);
    let new_nn = introspect::column(m.relid, m.new_col()).is_some_and(|c| c.not_null);
    if old_nn && !new_nn && m.not_null_check.is_none() {
        late.push(format!("NOT NULL on {}", ident(m.old_col())));
    }
    late.dedup(); // a generated column shows up twice (its expression and itself)
    if !late.is_empty() {
        raise_with_detail(
            Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!(
                "cannot contract zdm migration {}: objects depending on column {} of {t} would be lost: {}",
                m.id,
                ident(m.old_col()),
                late.join(", ")
            ),
            format!("Dependent objects: {}.", late.join("; ")),
            format!(
                "{hint} Constraints and indexes: put them on {} (zdm.add_check / zdm.validate_not_null / zdm.create_index) and drop them from {}.",
                ident(m.new_col()),
                ident(m.old_col()),
            ),
        );
    }
}


fn abort_steps(m: &Migration) {
    let (id, started) = (m.id, Instant::now());
    // No `migratable_table` here: undoing must work even if the table has
    // since become something zdm would not start on (e.g. FORCE RLS on).
    let t = m.table_sql();
    jobs::finish_for_migration(id, "cancelled");
    catalog::fold_ranges(id);
    let lock = locking::lock_table(m.relid, &t, "ACCESS EXCLUSIVE");
    guard::allow_zdm_ddl(|| {
        if let Some(trigger) = &m.trigger_name {
            spi::exec(&format!("DROP TRIGGER IF EXISTS {} ON {t}", ident(trigger)));
        }
        // The old column's default as it was before the mark.
        if let Some(old) = introspect::column(m.relid, m.old_col()) {
            match crate::trigger::written::unmarked_default(m.relid, old.attnum) {
                Some(Some(default)) => spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {} SET DEFAULT {default}", ident(m.old_col()))),
                Some(None) => spi::exec(&format!("ALTER TABLE {t} ALTER COLUMN {} DROP DEFAULT", ident(m.old_col()))),
                None => {}
            }
        }
        if introspect::column(m.relid, m.new_col()).is_some() {
            // RESTRICT: objects a user built on the new column are never dropped silently.
            spi::exec(&format!("ALTER TABLE {t} DROP COLUMN {} RESTRICT", ident(m.new_col())));
        }
    });
    catalog::set_phase(id, Phase::Aborted);
    catalog::log_abort(id, started, Some((lock.wait_ms, lock.attempts)), format!("dropped trigger and column {}", ident(m.new_col())));
}

