//! The DDL steps of zero-downtime constraint changes, shared by a rename's
//! contract and by validate_not_null / add_check / add_foreign_key. Each step
//! takes its lock through `locking::lock_table` (short lock_timeout, jittered
//! retries) and never holds ACCESS EXCLUSIVE during a scan:
//!
//! * `add_not_valid`   ADD CONSTRAINT … NOT VALID   brief lock, no scan
//! * `validate`        VALIDATE CONSTRAINT          scan under SHARE UPDATE EXCLUSIVE: reads and writes go on
//! * `set_not_null`    SET NOT NULL + drop the check  brief ACCESS EXCLUSIVE; the validated
//!                     CHECK (col IS NOT NULL) lets PostgreSQL skip the scan
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

/// SET NOT NULL using a validated `CHECK (column IS NOT NULL)` (no scan),
/// then drop that check. Takes ACCESS EXCLUSIVE briefly.
pub fn set_not_null(relid: pg_sys::Oid, table: &str, column: &str, check: &str) -> LockStats {
    let stats = locking::lock_table(relid, table, "ACCESS EXCLUSIVE");
    spi::exec(&format!("ALTER TABLE {table} ALTER COLUMN {} SET NOT NULL", ident(column)));
    spi::exec(&format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {}", ident(check)));
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
