//! The rename's validate step: the checks and foreign keys carried onto the
//! new column, and its NOT NULL check, were added NOT VALID at expand; after
//! the backfill the worker validates each in its own transaction (a scan
//! under SHARE UPDATE EXCLUSIVE on the table, ROW SHARE on a referenced
//! one: writes go on), so contract finds them valid and does no scan for
//! them. Contract validates whatever is left (a backfill run by hand).
//!
//! A copy whose original was itself NOT VALID stays NOT VALID, as the
//! original was.

use crate::catalog::{self, Migration, Step};
use crate::errors::message_of;
use crate::subxact;
use crate::engine::process::{set_activity, transaction};
use crate::engine::{gate, jobs, steps};
use crate::security;
use crate::spi::{self, ident};
use pgrx::prelude::*;
use std::time::Instant;

/// A carried constraint still to validate, with the table it references.
pub struct Pending {
    pub name: String,
    pub reference: Option<(pg_sys::Oid, String)>,
    /// a leaf partition's own copy (a foreign key of a partitioned table,
    /// carried leaf by leaf: `keys_by_leaves`), validated on that leaf;
    /// None: the migration's table
    pub leaf: Option<(pg_sys::Oid, String)>,
}

impl Pending {
    /// VALIDATE it, on its leaf or the migration's table `t`.
    pub fn validate(&self, m: &Migration, t: &str) -> crate::engine::locking::LockStats {
        let reference = self.reference.as_ref().map(|(o, s)| (*o, s.as_str()));
        match &self.leaf {
            Some((leaf, leaf_sql)) => steps::validate(*leaf, leaf_sql, &self.name, reference),
            None => steps::validate(m.relid, t, &self.name, reference),
        }
    }
}

/// The migration's carried constraints that are NOT VALID and should not be.
pub fn pending(m: &Migration) -> Vec<Pending> {
    let originals = m.carried_from.iter().map(Some).chain(std::iter::repeat(None));
    let copies = m.carried_checks.iter().chain(m.not_null_check.iter());
    let mut out = Vec::new();
    for (copy, original) in copies.zip(originals) {
        let row = spi::first_row(
            "SELECT convalidated, nullif(confrelid, 0) FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
            &[m.relid.into(), copy.as_str().into()],
            |r| Ok((r.get::<bool>(1)?.unwrap_or(true), r.get::<pg_sys::Oid>(2)?)),
        );
        let leaves = if row.is_none() && super::keys_by_leaves(m.relid) { steps::unvalidated_partitions(m.relid, copy) } else { Vec::new() };
        let (referenced, leaves) = match row {
            Some((false, referenced)) => (referenced, vec![None]),
            None if !leaves.is_empty() => {
                let referenced = spi::one::<pg_sys::Oid>(
                    "SELECT confrelid FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
                    &[leaves[0].0.into(), copy.as_str().into()],
                );
                (referenced, leaves.into_iter().map(Some).collect())
            }
            _ => continue,
        };
        let original_valid = original.and_then(|o| {
            spi::one::<bool>(
                "SELECT convalidated FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
                &[m.relid.into(), o.as_str().into()],
            )
        });
        if original_valid == Some(false) {
            continue;
        }
        let reference = referenced.map(|r| (r, catalog::current_table_sql(r).unwrap_or_default()));
        for leaf in leaves {
            out.push(Pending { name: copy.clone(), reference: reference.clone(), leaf });
        }
    }
    out
}

/// The worker's validate step. False when the job stopped: cancelled, or a
/// validation failed (recorded in the job; the constraint stays NOT VALID
/// and contract refuses until it validates).
pub fn run(migration: i64) -> bool {
    let names = match transaction(|| catalog::load(migration, false).map(|m| pending(&m)).unwrap_or_default()) {
        Ok(p) => p.into_iter().map(|p| (p.name, p.leaf.map(|l| l.0))).collect::<Vec<_>>(),
        Err(e) => {
            let _ = transaction(|| jobs::fail(migration, "validate failed", &e));
            return false;
        }
    };
    for (name, leaf) in names {
        if !gate::open(migration) {
            return false;
        }
        set_activity(&format!("zdm backfill {migration}: validating {name}"));
        let started = Instant::now();
        let outcome = transaction(|| {
            let m = catalog::load_or_raise(migration, false);
            let Some(p) = pending(&m).into_iter().find(|p| p.name == name && p.leaf.as_ref().map(|l| l.0) == leaf) else { return Ok(None) };
            let owner = security::resolve_owner(&m.owner_name, migration);
            let t = m.table_sql();
            let validated = subxact::attempt(|| {
                security::as_owner(owner, || p.validate(&m, &t))
            });
            match validated {
                Ok(lock) => Ok(Some(lock)),
                Err(e) => Err(format!("validating {} on {t} failed: {}", ident(&p.name), message_of(&e))),
            }
        });
        match outcome.and_then(|r| r) {
            // Logged once the table's lock is gone: the event's foreign key
            // locks the migration's row, which contract locks before the table.
            Ok(Some(lock)) => {
                let _ = transaction(|| {
                    catalog::log_step(Step {
                        migration,
                        step: "validate carried constraint",
                        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                        lock_wait_ms: Some(lock.wait_ms),
                        lock_attempts: Some(lock.attempts),
                        detail: Some(ident(&name)),
                    })
                });
            }
            Ok(None) => {}
            Err(message) => {
                let _ = transaction(|| jobs::fail(migration, "validate failed", &message));
                return false;
            }
        }
    }
    true
}
