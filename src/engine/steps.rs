//! The DDL steps of zero-downtime constraint changes, shared by a rename's
//! contract and by validate_not_null / add_check / add_foreign_key. Each step
//! takes its lock through `locking::lock_table` (short lock_timeout, jittered
//! retries) and never holds ACCESS EXCLUSIVE during a scan:
//!
//! * `add_not_valid`   ADD CONSTRAINT … NOT VALID   brief lock, no scan
//! * `validate`        VALIDATE CONSTRAINT          scan under SHARE UPDATE EXCLUSIVE: reads and writes go on
//! * `finish_not_null` brief ACCESS EXCLUSIVE, no scan: the validated
//!                     NOT VALID clause becomes the column's NOT NULL
//!
//! NOT NULL is the one step that differs by major (`not_null_clause`,
//! `finish_not_null`): on 15 the clause is `CHECK (col IS NOT NULL)`, whose
//! validation lets SET NOT NULL skip its scan, and the check is dropped
//! afterwards; on 18 NOT NULL is itself a constraint that can be added
//! `NOT VALID` and validated, so it is the clause, and finishing only gives
//! it the name PostgreSQL would have chosen.
//!
//! Callers decide the transaction boundaries: contract runs them in the
//! caller's transaction; constraint migrations run each in its own.

use super::locking::{self, LockStats};
use crate::spi::{self, ident};
use pgrx::prelude::*;

/// The lock ADD CONSTRAINT takes: CHECK needs ACCESS EXCLUSIVE, FOREIGN KEY
/// SHARE ROW EXCLUSIVE (on both tables).
pub fn add_not_valid(relid: pg_sys::Oid, table: &str, name: &str, definition: &str, ref_table: Option<(pg_sys::Oid, &str)>) -> LockStats {
    let mode = if ref_table.is_some() { "SHARE ROW EXCLUSIVE" } else { "ACCESS EXCLUSIVE" };
    let stats = locking::lock_table(relid, table, mode);
    if let Some((ref_relid, ref_sql)) = ref_table {
        if ref_relid != relid {
            locking::lock_table(ref_relid, ref_sql, "SHARE ROW EXCLUSIVE");
        }
    }
    spi::exec(&format!("ALTER TABLE {table} ADD CONSTRAINT {} {definition} NOT VALID", ident(name)));
    stats
}

/// VALIDATE CONSTRAINT under SHARE UPDATE EXCLUSIVE (and ROW SHARE on a
/// referenced table): a full scan that reads and writes do not wait for.
pub fn validate(relid: pg_sys::Oid, table: &str, name: &str, ref_table: Option<(pg_sys::Oid, &str)>) -> LockStats {
    let stats = locking::lock_table(relid, table, "SHARE UPDATE EXCLUSIVE");
    if let Some((ref_relid, ref_sql)) = ref_table {
        if ref_relid != relid {
            locking::lock_table(ref_relid, ref_sql, "ROW SHARE");
        }
    }
    spi::exec(&format!("ALTER TABLE {table} VALIDATE CONSTRAINT {}", ident(name)));
    stats
}

/// The leaf partitions of a partitioned table whose CHECK (or, on 18, NOT
/// NULL) constraint `name`
/// is not validated yet, each with its name: validated one by one (each in
/// its own transaction, by the caller) before the parent, whose VALIDATE then
/// skips them. Empty for a plain table.
pub fn unvalidated_partitions(relid: pg_sys::Oid, name: &str) -> Vec<(pg_sys::Oid, String)> {
    spi::rows(
        &format!(
            "SELECT c.conrelid, pg_catalog.format('%I.%I', n.nspname, r.relname) FROM pg_catalog.pg_constraint c \
               JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
              WHERE c.conname = $2 AND c.contype IN ('c', 'n') AND NOT c.convalidated AND c.conrelid <> $1 \
                AND c.conrelid IN (SELECT t.relid FROM {} t WHERE t.isleaf) ORDER BY 2",
            crate::tree::partition_tree_sql(1)
        ),
        &[relid.into(), name.into()],
        |r| Ok((r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid), r.get::<String>(2)?.unwrap_or_default())),
    )
}

/// What `ADD CONSTRAINT name … NOT VALID` adds to make `column` NOT NULL
/// once validated (see the module comment).
pub fn not_null_clause(column: &str) -> String {
    #[cfg(not(feature = "pg18"))]
    {
        format!("CHECK ({} IS NOT NULL)", ident(column))
    }
    #[cfg(feature = "pg18")]
    {
        format!("NOT NULL {}", ident(column))
    }
}

/// After `constraint` (a `not_null_clause`) was validated: `column` is NOT
/// NULL, without a scan, under a brief ACCESS EXCLUSIVE lock. 15: SET NOT
/// NULL (the validated check proves it), then drop the check. 18: the
/// constraint is the column's NOT NULL; it takes the name PostgreSQL gives
/// one, `<table>_<column>_not_null`, when that is free.
pub fn finish_not_null(relid: pg_sys::Oid, table: &str, column: &str, constraint: &str) -> LockStats {
    let stats = locking::lock_table(relid, table, "ACCESS EXCLUSIVE");
    #[cfg(not(feature = "pg18"))]
    {
        spi::exec(&format!("ALTER TABLE {table} ALTER COLUMN {} SET NOT NULL", ident(column)));
        spi::exec(&format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {}", ident(constraint)));
    }
    #[cfg(feature = "pg18")]
    {
        let name = spi::one::<String>(
            "SELECT pg_catalog.format('%s_%s_not_null', c.relname, $2::text)::name::text FROM pg_catalog.pg_class c WHERE c.oid = $1",
            &[relid.into(), column.into()],
        )
        .unwrap_or_default();
        let taken = constraint_validated(relid, &name).is_some();
        if !taken && !name.is_empty() && name != constraint {
            spi::exec(&format!("ALTER TABLE {table} RENAME CONSTRAINT {} TO {}", ident(constraint), ident(&name)));
        }
    }
    stats
}

/// Drop a constraint zdm added, if it is there (cleanup after a failure, abort).
pub fn drop_constraint(relid: pg_sys::Oid, table: &str, name: &str) -> LockStats {
    let stats = locking::lock_table(relid, table, "ACCESS EXCLUSIVE");
    spi::exec(&format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {}", ident(name)));
    stats
}

/// None if the constraint does not exist, else whether it is validated.
pub fn constraint_validated(relid: pg_sys::Oid, name: &str) -> Option<bool> {
    spi::one::<bool>(
        "SELECT convalidated FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
        &[relid.into(), name.into()],
    )
}
