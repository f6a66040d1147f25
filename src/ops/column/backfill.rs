//! Batch planning and execution for a rename backfill.
//!
//! The table is walked by heap block ranges (`ctid >= '(a,0)' AND ctid <
//! '(b,0)'`, a TID range scan): no index is needed, it works without a primary
//! key, and no batch rescans what an earlier one covered, so the total work is
//! O(rows). A row needs work only if `new IS NULL AND old IS NOT NULL`: every
//! row written since expand went through the sync trigger and is already in
//! sync — which is also why the scan ends at the heap size measured under
//! expand's lock (`zdm.migrations.rel_blocks`): blocks added later hold only
//! tuples the trigger wrote. A rewrite of the table (new relfilenode) moves
//! tuples anywhere, so it restarts the scan. Under READ COMMITTED a row updated concurrently is re-checked against
//! that condition on its newest version, so the backfill never overwrites a
//! value the trigger has set.

use crate::catalog::{self, Migration, Phase, Step};
use crate::errors::{raise, Code};
use crate::engine::Batch;
use crate::errors::raise_with_detail;
use crate::introspect;
use crate::spi::{self, ident};
use crate::trigger;
use pgrx::pg_sys;
use std::time::Instant;


/// Run one batch of about `batch_size` updated rows and persist the cursor in
/// the same transaction. The caller holds the migration's row lock.
pub fn run_batch(m: &Migration, batch_size: i32) -> Batch {
    let (mut cursor, mut nblocks) = (m.cursor_block, m.rel_blocks);
    let filenode = spi::one::<pg_sys::Oid>("SELECT pg_catalog.pg_relation_filenode($1)", &[m.relid.into()])
        .unwrap_or(pg_sys::InvalidOid);
    if filenode != m.relfilenode {
        // VACUUM FULL, CLUSTER, a rewriting ALTER: tuples moved, scan again.
        nblocks = introspect::relation_blocks(m.relid);
        cursor = 0;
        catalog::restart_scan(m.id, nblocks, filenode);
        catalog::log_step(Step {
            migration: m.id,
            step: "backfill: table rewritten, scan restarts",
            duration_ms: 0.0,
            lock_wait_ms: None,
            lock_attempts: None,
            detail: Some(format!("new heap of {nblocks} blocks")),
        });
    }
    if cursor >= nblocks {
        return Batch { rows: 0, blocks: 0, done: true };
    }
    let per_block = if m.rows_per_block > 0.0 { m.rows_per_block } else { 1.0 };
    let blocks = ((batch_size as f64 / per_block).ceil() as i64).clamp(1, nblocks - cursor);
    let end = cursor + blocks;
    let (old, new) = (ident(m.old_col()), ident(m.new_col()));
    // ONLY: inheritance is refused up front, and a child added later must not
    // be half-filled by the parent's block range. Operators are qualified:
    // nothing on a search_path may stand in for them.
    // A rename copies the old value; a type change's trigger computes the
    // new column from the old one on any UPDATE (it may map NULL to a value).
    let (set, todo) = if m.using_expr.is_some() {
        (format!("{new} = NULL"), format!("{new} IS NULL"))
    } else {
        (format!("{new} = {old}"), format!("{new} IS NULL AND {old} IS NOT NULL"))
    };
    let sql = format!(
        "UPDATE ONLY {table} SET {set} WHERE ctid OPERATOR(pg_catalog.>=) '({cursor},0)'::pg_catalog.tid \
         AND ctid OPERATOR(pg_catalog.<) '({end},0)'::pg_catalog.tid AND {todo}",
        table = m.table_sql()
    );
    // The sync trigger fires for these UPDATEs like for any other write (it
    // sees new = old and leaves the row alone), and so do every other
    // migration's and user's triggers: nothing a batch causes — including
    // writes a user trigger makes to other rows — escapes syncing.
    let tgoid = trigger::trigger_oid(m.relid, m.trigger_name.as_deref().unwrap_or_default());
    if tgoid == pg_sys::InvalidOid {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the sync trigger of zdm migration {} on {} is missing", m.id, m.table_sql()),
            format!("Writes are no longer kept in sync; call zdm.abort({}) and start again.", m.id),
        );
    }
    let rows = spi::exec_count(&sql);
    catalog::save_progress(m.id, end, rows, next_density(per_block, rows, blocks, batch_size));
    Batch { rows, blocks, done: false }
}

/// One step of a rename backfill in the current transaction: lock the
/// migration row (serializing concurrent callers and workers), check the
/// phase, run one block range, and record completion when the cursor reached
/// the end. Shared by `zdm.backfill_batch` and the background worker, which
/// have checked the caller's rights and run this as the migration's owner
/// (`security::as_owner`).
pub fn step(migration: i64, batch_size: i32) -> Batch {
    let started = Instant::now();
    let m = catalog::load_or_raise(migration, true);
    if m.phase == Phase::Contracted && matches!(m.kind.as_str(), "rename" | "change_type") {
        // A scheduled job or a re-run after contract: nothing left, not an error.
        return Batch { rows: 0, blocks: 0, done: true };
    }
    require_backfillable(&m);
    m.table_sql(); // 42P01 if the table was dropped
    if m.phase == Phase::Backfilled {
        return Batch { rows: 0, blocks: 0, done: true };
    }
    if m.phase == Phase::Expanded {
        catalog::set_phase(m.id, Phase::Backfilling);
    }
    let out = run_batch(&m, batch_size);
    if out.done {
        // Fresh statistics on the new column, so that plans are good the
        // moment contract makes it the only one.
        spi::exec(&format!("ANALYZE {} ({})", m.table_sql(), ident(m.new_col())));
        catalog::set_phase(m.id, Phase::Backfilled);
        catalog::log_step(Step {
            migration: m.id,
            step: "backfill complete",
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            lock_wait_ms: None,
            lock_attempts: None,
            detail: Some(format!("{} rows backfilled in total", m.rows_done)),
        });
    }
    out
}

/// Steps until a range updated rows or the backfill is complete; returns the
/// rows updated, 0 meaning complete. A range with nothing left to do (rows
/// the application already rewrote) does not end the call.
pub fn batch_until_rows(migration: i64, batch_size: i32) -> i64 {
    loop {
        let out = step(migration, batch_size);
        if out.done {
            return 0;
        }
        if out.rows > 0 {
            return out.rows;
        }
    }
}

/// Rows-needing-work per block, learned from the last batch: batch_size counts
/// rows updated (the expensive part), so a sparse range earns a wider next
/// range, at most doubling per batch.
fn next_density(current: f64, rows: i64, blocks: i64, batch_size: i32) -> f64 {
    let observed = rows as f64 / blocks.max(1) as f64;
    let next = if (rows as f64) >= batch_size as f64 * 0.5 { observed } else { observed.max(current * 0.5) };
    next.max(0.5)
}

#[cfg(test)]
mod tests {
    use super::next_density;

    #[test]
    fn density_follows_dense_batches_and_halves_on_sparse_ones() {
        assert_eq!(next_density(50.0, 5000, 100, 5000), 50.0);
        assert_eq!(next_density(50.0, 0, 100, 5000), 25.0);
        assert_eq!(next_density(0.6, 0, 100, 5000), 0.5);
    }
}

/// Validation of a migration's phase and object for `backfill_batch`.
pub fn require_backfillable(m: &Migration) {
    if !m.phase.in_flight() {
        m.require_phase("backfill");
    }
    if !matches!(m.kind.as_str(), "rename" | "change_type") {
        raise_with_detail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("zdm migration {} is a {} migration and has no backfill", m.id, m.kind),
            "Only rename and change_type migrations copy data.",
            "Use zdm.status to see what it is waiting for.",
        );
    }
}
