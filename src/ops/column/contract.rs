//! Contract (verify every row, then drop the old column under one brief
//! ACCESS EXCLUSIVE lock; a type change's shadow takes its name) and abort
//! (drop the new column). Both run in the caller's transaction.

use super::{carry, repoint, validate};
use crate::catalog::{self, Migration, Phase, Step};
use crate::engine::{jobs, locking, steps};
use crate::errors::{raise, raise_with_detail, Code};
use crate::guard;
use crate::introspect::{self, DependentKind};
use crate::spi::{self, ident};
use pgrx::prelude::*;
use std::time::Instant;

pub(super) fn contract_steps(m: &Migration, t: &str, started: Instant, takes_old_name: bool) {
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
    // A type change: a default set since expand that does not convert is
    // refused now, before anything (decided at expand otherwise).
    converted_default(m, t, old_attnum);
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

    refuse_later_triggers_of(m, t);
    // 1. Carried checks and keys the worker has not validated (a backfill
    //    run by hand): a scan under SHARE UPDATE EXCLUSIVE, writers keep writing.
    let validate_started = Instant::now();
    let checks: Vec<String> = validate::pending(m).into_iter().map(|p| p.name).collect();
    let mut validate_lock = None;
    for p in validate::pending(m) {
        let lock = p.validate(m, t);
        // (a leaf's validation locks that leaf, not the table)
        if p.leaf.is_none() {
            validate_lock.get_or_insert(lock);
        }
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
    //    the other order deadlocks with a writer inserting a child row. All
    //    in one attempt: a cascading DELETE locks the parent first.
    let final_started = Instant::now();
    let children = spi::one::<Vec<pg_sys::Oid>>(
        "SELECT array_agg(DISTINCT conrelid) FROM pg_catalog.pg_constraint \
          WHERE contype = 'f' AND confrelid = $1 AND $2 = ANY (confkey) AND conrelid <> $1",
        &[m.relid.into(), old_attnum.into()],
    )
    .unwrap_or_default();
    let children: Vec<(pg_sys::Oid, String)> =
        children.into_iter().map(|child| (child, catalog::current_table_sql(child).unwrap_or_default())).collect();
    let mut tables = locking::in_mode(&children, "ACCESS EXCLUSIVE");
    tables.push((m.relid, t, "ACCESS EXCLUSIVE"));
    // (and those the old column's own keys reference: dropping it drops them)
    let referenced = introspect::referenced_through(m.relid, m.old_col());
    let lock = locking::lock_tables(&tables, &locking::in_mode(&referenced, "ACCESS EXCLUSIVE"));
    let deps = refuse_dependents();
    refuse_later_triggers_of(m, t);
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

/// A type change's default for the new column (`conversion::converted_default`):
/// None for a rename (the old default, as it is); raises if it does not
/// convert (set since expand: expand refuses one).
fn converted_default(m: &Migration, t: &str, old_attnum: i16) -> Option<Option<String>> {
    let id = m.id;
    let new_type = spi::first_row(
        "SELECT n.atttypid, n.atttypmod FROM pg_catalog.pg_attribute n, pg_catalog.pg_attribute o \
          WHERE n.attrelid = $1 AND n.attname = $2 AND o.attrelid = $1 AND o.attnum = $3 \
            AND (n.atttypid, n.atttypmod) IS DISTINCT FROM (o.atttypid, o.atttypmod)",
        &[m.relid.into(), m.new_col().into(), old_attnum.into()],
        |r| Ok((r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid), r.get::<i32>(2)?.unwrap_or(-1))),
    )?;
    let tree = catalog::as_catalog_owner(|| spi::one::<String>("SELECT using_tree FROM zdm.migrations WHERE id = $1", &[id.into()]));
    Some(super::conversion::converted_default(m.relid, old_attnum, new_type.0, new_type.1, tree.as_deref()).unwrap_or_else(|default| {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot contract zdm migration {id}: the default of {} on {t}, {default}, does not convert to the new type", ident(m.old_col())),
            format!("Nothing was dropped. Set a default that converts (or none) on {} and call zdm.contract({id}) again.", ident(m.old_col())),
        )
    }))
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
    let old_default = converted_default(m, t, old_attnum).unwrap_or_else(|| {
        crate::trigger::written::unmarked_default(m.relid, old_attnum).unwrap_or_else(|| introspect::column_default(m.relid, old_attnum))
    });
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
    let repointed = repoint::referencing_keys(m, t, old_attnum);
    if let Some(trigger) = &m.trigger_name {
        spi::exec(&format!("DROP TRIGGER {} ON {t}", ident(trigger)));
    }
    let identity = identity_of(m.relid, old_attnum, new_type);
    let keys = carry::partitioned_key_clauses(m, old_attnum, if takes_old_name { m.old_col() } else { m.new_col() });
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
    carry::attach(m, t, &schema, &keys);
    // Foreign keys carried leaf by leaf (`keys_by_leaves`): each leaf's copy
    // takes the original's name, then the key on the partitioned table
    // attaches them (validated: no scan).
    if super::keys_by_leaves(m.relid) {
        for (copy, original) in m.carried_checks.iter().zip(&m.carried_from) {
            attach_leaf_keys(m, t, copy, original);
        }
    }
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
    repoint::finish(m, repointed, if takes_old_name { m.old_col() } else { m.new_col() });
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
                "SELECT pg_catalog.count(*) FROM {} WHERE NOT pg_catalog.record_image_eq(ROW({expected}), ROW({}))",
                crate::tree::scan_target(m.relid, t),
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
/// A foreign key carried on each leaf as `copy` (`steps::by_leaves`), the
/// original gone with the old column: every leaf's copy renamed `original`,
/// then the key added on the partitioned table, attaching them.
fn attach_leaf_keys(m: &Migration, t: &str, copy: &str, original: &str) {
    let leaves = spi::rows(
        &format!(
            "SELECT c.conrelid, pg_catalog.format('%I.%I', n.nspname, r.relname), pg_catalog.pg_get_constraintdef(c.oid), c.confrelid \
               FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
              WHERE c.conname = $2 AND c.contype = 'f' AND c.conparentid = 0 AND c.conrelid IN (SELECT t.relid FROM {} t WHERE t.isleaf) ORDER BY 2",
            crate::tree::partition_tree_sql(1)
        ),
        &[m.relid.into(), copy.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
            ))
        },
    );
    let Some((_, _, definition, referenced)) = leaves.first().cloned() else { return };
    for (_, leaf, _, _) in &leaves {
        spi::exec(&format!("ALTER TABLE {leaf} RENAME CONSTRAINT {} TO {}", ident(copy), ident(original)));
    }
    let definition = definition.trim_end_matches(" NOT VALID").to_string();
    let ref_sql = catalog::current_table_sql(referenced).unwrap_or_default();
    steps::attach_by_leaves(m.relid, t, original, &definition, Some((referenced, &ref_sql)));
}

fn refuse_later_triggers_of(m: &Migration, t: &str) {
    let Some(ours) = m.trigger_name.as_deref() else { return };
    refuse_later_triggers(
        m.relid,
        t,
        ours,
        &format!("cannot contract zdm migration {}", m.id),
        &format!("{} after zdm synced it, and that change would be lost with the old column", ident(m.old_col())),
    );
}

/// 55000 if a user's BEFORE ROW INSERT/UPDATE trigger on the table (or a
/// partition) sorts after zdm's trigger `ours`: triggers fire in name
/// order, and a later one could change `what` (`action` says what is refused).
pub fn refuse_later_triggers(relid: pg_sys::Oid, t: &str, ours: &str, action: &str, what: &str) {
    // Every relation of a partitioned table's tree: a partition's own
    // triggers fire after the clone of zdm's too.
    let later = spi::one::<String>(
        &format!("SELECT pg_catalog.string_agg(DISTINCT pg_catalog.quote_ident(tg.tgname::text), ', ') \
           FROM pg_catalog.pg_trigger tg \
          WHERE tg.tgrelid IN {tree} AND NOT tg.tgisinternal AND tg.tgenabled <> 'D' \
            AND (tg.tgtype::int & 3) = 3 AND (tg.tgtype::int & 20) <> 0 \
            AND tg.tgname::text COLLATE \"C\" > $2::text COLLATE \"C\" \
            AND NOT EXISTS (SELECT 1 FROM zdm.migrations z WHERE z.relid = $1 AND z.trigger_name = tg.tgname)",
            tree = crate::tree::self_and_descendants_sql(1)
        ),
        &[relid.into(), ours.into()],
    );
    if let Some(names) = later {
        raise_with_detail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{action}: BEFORE ROW trigger(s) {names} on {t} fire after zdm's trigger {}", ident(ours)),
            format!("Triggers fire in name order; a later one could change {what}."),
            format!("Rename them to sort before {} (ALTER TRIGGER … RENAME TO …), or disable them, then try again.", ident(ours)),
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
    // A partition's own objects on its copy of the column (made since expand).
    late.extend(introspect::partition_own_dependents(m.relid, m.old_col()));
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

pub(super) fn abort_steps(m: &Migration) {
    let (id, started) = (m.id, Instant::now());
    // No `migratable_table` here: undoing must work even if the table has
    // since become something zdm would not start on (e.g. FORCE RLS on).
    let t = m.table_sql();
    jobs::finish_for_migration(id, "cancelled");
    catalog::fold_ranges(id);
    // With the tables the new column's keys reference: dropping it drops them.
    let referenced = introspect::referenced_through(m.relid, m.new_col());
    let lock = locking::lock_tables(&[(m.relid, &t, "ACCESS EXCLUSIVE")], &locking::in_mode(&referenced, "ACCESS EXCLUSIVE"));
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
