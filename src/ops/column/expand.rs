//! Expand: the new column beside the old one, what depends on the old one
//! carried over (checks and foreign keys NOT VALID, indexes to build,
//! attributes, statistics), the sync trigger and the catalog row — in the
//! caller's transaction, under one brief ACCESS EXCLUSIVE lock.

use super::{carry, NewColumn, FK_ACTIONS};
use crate::catalog::{self, Step};
use crate::engine::{locking, steps};
use crate::errors::{raise, raise_with_detail, Code};
use crate::introspect::{self, DependentKind, Table};
use crate::{security, tree};
use crate::spi::{self, ident, literal};
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::Instant;

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
        let (rows_estimate, rows_per_block) = introspect::row_estimates(&table, tree::blocks(relid));
        // With the tables its foreign keys reference, which copying them
        // locks: in one attempt, never one held while waiting for another.
        let referenced = introspect::referenced_through(relid, old_column);
        let lock = locking::lock_tables(&[(relid, t.as_str(), "ACCESS EXCLUSIVE")], &locking::in_mode(&referenced, "SHARE ROW EXCLUSIVE"));
        let (col, deps) = check_expandable(&table, old_column, new_column);
        let id = catalog::next_id();
        let new = ident(new_column);
        // The whole tree of a partitioned table; a plain table without
        // children that are not its own.
        let every = tree::scan_target(relid, &t);

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
        spi::exec(&format!("ALTER TABLE {every} ADD COLUMN {new} {type_sql}{collate} DEFAULT NULL"));
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
            spi::exec(&format!("ALTER TABLE {every} ALTER COLUMN {new} SET DEFAULT {default}"));
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
                spi::exec(&format!("ALTER TABLE {every} ALTER COLUMN {} SET DEFAULT {default}", ident(old_column)));
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
                let added = crate::subxact::attempt(|| spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} CHECK ({expr}) NOT VALID", ident(&copy))));
                match added {
                    Ok(()) => carried.push((copy, name.clone())),
                    // A type change: the check's expression may not apply
                    // to the new type (length() of an integer).
                    Err(e) if spec.new_type.is_some() && !crate::engine::locking::retryable(crate::errors::code_of(&e)) => {
                        raise_with_detail(
                            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                            format!("check constraint {} on column {} of {t} does not apply to type {type_sql}", ident(name), ident(old_column)),
                            format!("CHECK ({expr}) on the new column: {}", crate::errors::message_with_detail(&e)),
                            format!(
                                "Drop it for the migration (ALTER TABLE {t} DROP CONSTRAINT {}) and add one written for {type_sql} after contract (zdm.add_check), or rewrite it so that it applies to both types.",
                                ident(name)
                            ),
                        )
                    }
                    Err(e) => e.rethrow(),
                }
            }
        }
        // Foreign keys from the old column to other tables: copied NOT VALID
        // onto the new column, then validated and renamed at contract like
        // the carried checks. The referenced tables were locked with this
        // one; a key added while expand waited for the lock gets one bounded
        // wait for its table, no retry (`locking::one_attempt`).
        locking::one_attempt(|| {
            for dep in &deps {
                if let DependentKind::ForeignKey { oid, name } = &dep.kind {
                    let definition = foreign_key_definition(*oid, col.attnum, new_attnum, relid);
                    let copy = spi::with_suffix(name, &format!("_zdm{id}"));
                    if super::keys_by_leaves(relid) {
                        // Each leaf gets its own, validated leaf by leaf,
                        // attached under the parent's at contract.
                        for (_, leaf) in steps::leaves_without(relid, &copy) {
                            spi::exec(&format!("ALTER TABLE {leaf} ADD CONSTRAINT {} {definition} NOT VALID", ident(&copy)));
                        }
                    } else {
                        spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} {definition} NOT VALID", ident(&copy)));
                    }
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
            // Unique within the migration even when long names are cut.
            let mut new_index = spi::with_suffix(&old_index, &format!("_zdm{id}"));
            for n in 2.. {
                if !indexes.iter().any(|c: &carry::Carried| c.new_index == new_index) {
                    break;
                }
                new_index = spi::with_suffix(&old_index, &format!("_zdm{id}_{n}"));
            }
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
        if let Some((oid, typmod)) = spec.new_type {
            let using_tree = conversion.as_ref().map(|c| c.0.as_str());
            if let Err(default) = super::conversion::converted_default(relid, col.attnum, oid, typmod, using_tree) {
                refuse_unconverting_default(&t, old_column, &default, &type_sql);
            }
        }
        install_trigger(&t, &trigger, function, &sync.args);

        let rel_blocks = tree::blocks(relid);
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
                old_column: Some(old_column),
                new_column,
                rel_blocks,
                rows_estimate,
                rows_per_block,
                started_by: caller,
            },
        );
        catalog::set_objects(id, Some(&trigger), not_null_check.as_deref(), &carried);
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
    // PostgreSQL cannot drop a partition key column, so contract could not
    // drop or swap it.
    if let Some(key) = introspect::partition_key_using(relid, old_column) {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("column {} of table {t} is in the partition key ({key})", ident(old_column)),
            "PostgreSQL cannot drop or rename-swap a partition key column. Create a new partitioned table with the new key and move the rows into it (for example with pg_partman's partition_data_proc), or rename it with plain ALTER TABLE … RENAME COLUMN (catalog-only, brief lock).",
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
    refuse_deferred_triggers(relid, &t);
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
    if tree::is_partitioned(relid) {
        refuse_partitioned_dependents(&t, old_column, &deps);
        let own = introspect::partition_own_dependents(relid, old_column);
        if !own.is_empty() {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("column {} of partitioned table {t} has objects of its partitions' own: {}", ident(old_column), own.join(", ")),
                "zdm carries what the partitioned table has (its indexes, keys and checks reach every partition); an object made on one partition alone would be lost with the old column. Drop it for the migration and recreate it on the new column after contract, or create it on the partitioned table instead.",
            );
        }
    }
    introspect::refuse_blocking_dependents(
        &deps,
        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        &t,
        old_column,
        "zdm carries indexes, keys, foreign keys, single-column checks and statistics on plain columns, and lets views, rules, policies, triggers and generated columns wait for contract; exclusion constraints, deferrable keys, multi-column checks and expression statistics are not carried yet: drop them and recreate them on the new column after contract, or rename with plain DDL.",
    );
    (col, deps)
}

/// A type change whose old column's default does not convert to the new type
/// (`conversion::converted_default`: contract's SET DEFAULT would fail after
/// the whole backfill): refused now, naming the default.
fn refuse_unconverting_default(t: &str, column: &str, default: &str, type_sql: &str) {
    raise_with_detail(
        Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("the default of column {} of {t}, {default}, does not convert to type {type_sql}", ident(column)),
        "Contract gives the column its default converted through the assignment cast, as ALTER COLUMN … TYPE does; there is none from this default's type.",
        format!(
            "Drop it for the migration (ALTER TABLE {t} ALTER COLUMN {c} DROP DEFAULT) and set one of type {type_sql} after contract, or set it now to an expression of type {type_sql} (stored converted to the column's current type, it converts back): for text → integer, SET DEFAULT 0.",
            c = ident(column)
        ),
    );
}

/// What zdm does not carry on a partitioned table: before PostgreSQL 18,
/// foreign keys (it cannot add them NOT VALID there); a primary key or
/// unique constraint that other tables' foreign keys reference (the key is
/// attached at contract, after they would have to be re-pointed at it).
/// Indexes and keys are carried, built leaf by leaf.
fn refuse_partitioned_dependents(t: &str, column: &str, deps: &[introspect::Dependent]) {
    let keyed = deps.iter().any(|d| matches!(d.kind, DependentKind::Key { .. }));
    let hit = deps.iter().find(|d| matches!(d.kind, DependentKind::Referencing) && keyed);
    if let Some(d) = hit {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("column {} of partitioned table {t} has {}, which zdm does not carry on a partitioned table", ident(column), d.description),
            "Drop it for the migration and recreate it on the new column after contract, or change the column with plain DDL. (A key of a partitioned table is attached at contract, too late to re-point foreign keys that reference it.)",
        );
    }
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
        crate::parse::retarget(node, Some(from), to);
        let dpcontext = pg_sys::deparse_context_for(relname.as_ptr(), table.relid);
        let text = pg_sys::deparse_expression(node, dpcontext, false, false);
        std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// A migration's trigger on table `t`: BEFORE INSERT OR UPDATE FOR EACH
/// ROW, running `function(args)`, enabled ALWAYS — it fires under
/// session_replication_role = replica too, so writes applied by a logical
/// replication subscription stay in sync.
pub fn install_trigger(t: &str, name: &str, function: &str, args: &[String]) {
    let args: Vec<String> = args.iter().map(|a| literal(a)).collect();
    spi::exec(&format!(
        "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {function}({})",
        ident(name),
        args.join(", ")
    ));
    spi::exec(&format!("ALTER TABLE {t} ENABLE ALWAYS TRIGGER {}", ident(name)));
}

/// PostgreSQL refuses to fire deferred triggers queued inside a
/// security-restricted operation (so they cannot run as someone else at
/// commit): every batch would fail. Said up front.
pub fn refuse_deferred_triggers(relid: pg_sys::Oid, t: &str) {
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
}
