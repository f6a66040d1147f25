//! Batch planning and execution for a rename or type-change backfill.
//!
//! The table is walked by heap block ranges (`ctid >= '(a,0)' AND ctid <
//! '(b,0)'`, a TID range scan): no index is needed, it works without a primary
//! key, and no batch rescans what an earlier one covered, so the total work is
//! O(rows). A row needs work only if `new IS NULL AND old IS NOT NULL`: every
//! row written since expand went through the sync trigger and is already in
//! sync — which is also why the scan ends at the heap size measured under
//! expand's lock (`zdm.migrations.rel_blocks`): blocks added later hold only
//! tuples the trigger wrote. A rewrite of the table (new relfilenode) moves
//! tuples anywhere, so it restarts the scan. Under READ COMMITTED a row
//! updated concurrently is re-checked against that condition on its newest
//! version, so the backfill never overwrites a value the trigger has set.
//!
//! With one worker the scan has one cursor. With `workers => N` the blocks
//! left are split into N disjoint ranges (`zdm.backfill_ranges`), each with
//! its own cursor, advanced exactly once per batch under the range's row
//! lock; a worker left without a range gets the unvisited half of another.

use crate::catalog::{self, Migration, Phase, Step};
use crate::errors::{raise, Code};
use crate::engine::{Batch, Share};
use crate::introspect;
use crate::spi::{self, ident};
use crate::{trigger, tree};
use pgrx::pg_sys;
use std::cell::Cell;
use std::time::Instant;


/// Below this many blocks left, a backfill is not split into ranges.
const MIN_SPLIT_BLOCKS: i64 = 16;

thread_local! {
    /// The range this process worked on last (leaf, first block): it keeps
    /// to it while it is free.
    static LAST_RANGE: Cell<Option<(pg_sys::Oid, i64)>> = const { Cell::new(None) };
}

/// What a backfill's UPDATE does to the rows of a block range, as the
/// operation describes it: the batches below are the same for a rename, a
/// type change, an added column and an update job.
pub struct Rows {
    /// SQL condition: the rows that still need it
    pub todo: String,
    /// the SET list that does it
    pub set: String,
    /// a sync trigger keeps rows written since expand right: it must be
    /// intact before each batch, and a backfill that updated nothing while
    /// rows still wait is suspect
    pub synced: bool,
    /// the search_path the operation's own SQL resolves names with (None:
    /// zdm's pinned one)
    pub search_path: Option<String>,
    /// count the rows each batch visits as well as those it updates
    pub count_visited: bool,
    /// the trigger (name, function) the batch's UPDATE runs without, when
    /// its SET leaves every row as that trigger would (`trigger::bypass`)
    pub without_trigger: Option<(String, &'static str)>,
}

/// How an operation describes its rows for a migration (read in the batch's
/// transaction, under the table's lock).
pub type Work = fn(&Migration) -> Rows;

/// One step of a backfill in the current transaction:
/// check the phase, run one block range, persist its cursor, and record
/// completion when no blocks are left. Shared by `zdm.backfill_batch` and the
/// background workers, which have checked the caller's rights and run this
/// as the migration's owner (`security::as_owner`).
///
/// Locks: a single cursor (`zdm.migrations.next_block`) is advanced under
/// the migration's row lock FOR UPDATE, so such batches serialize, and so do
/// splitting and restarting the scan. A parallel range is advanced under its
/// own row's lock only; what must not run beside such batches waits for
/// them through locks that queue fairly: abort and a table rewrite through
/// the table's lock (a batch reads the migration again once it holds the
/// table's ROW EXCLUSIVE lock), finishing and restarting by locking every
/// range row. Contract needs the phase a finished backfill sets.
pub fn step(migration: i64, batch_size: i32, par: Share, work: Work) -> Batch {
    let started = Instant::now();
    // A first look without locks, to choose the path; each path checks
    // again under its lock.
    let peek = catalog::load_or_raise(migration, false);
    if peek.phase == Phase::Contracted {
        // A scheduled job or a re-run after contract: nothing left, not an error.
        return Batch::done();
    }
    require_backfillable(&peek);
    peek.table_sql(); // 42P01 if the table was dropped
    if peek.phase == Phase::Backfilled {
        return Batch::done();
    }
    let (ranges, open) = catalog::range_counts(migration);
    let partitioned = tree::is_partitioned(peek.relid);
    let rewritten = rewritten(&peek, partitioned);
    if ranges > 0 && !rewritten {
        return match (open > 0, par.helper) {
            (true, _) => range_batch(migration, batch_size, par, work),
            (false, true) => Batch::done(), // the leader records completion
            (false, false) => finish(migration, started, work),
        };
    }
    let m = catalog::load_or_raise(migration, true);
    if !m.phase.in_flight() || m.phase == Phase::Backfilled {
        return step(migration, batch_size, par, work); // contracted, aborted or finished meanwhile: answer as such
    }
    lock_table(&m);
    let rows_work = work(&m);
    require_trigger(&m, &rows_work);
    if partitioned {
        if m.phase == Phase::Expanded {
            catalog::set_phase(m.id, Phase::Backfilling);
        }
        return plan_tree(&m, started, work);
    }
    if catalog::range_counts(migration).0 > 0 && filenode(m.relid) == m.relfilenode {
        return Batch::default(); // another process split it meanwhile: the next step takes a range
    }
    if m.phase == Phase::Expanded {
        catalog::set_phase(m.id, Phase::Backfilling);
    }
    let (cursor, nblocks) = restart_if_rewritten(&m);
    if par.workers > 1 && nblocks - cursor >= MIN_SPLIT_BLOCKS {
        catalog::split_into_ranges(m.id, cursor, nblocks, par.workers as i64, m.rows_per_block);
        return range_batch(migration, batch_size, par, work);
    }
    if cursor >= nblocks {
        return if par.helper { Batch::done() } else { finish(migration, started, work) };
    }
    let per_block = if m.rows_per_block > 0.0 { m.rows_per_block } else { 1.0 };
    let blocks = batch_blocks(batch_size, per_block, introspect::rows_per_block(m.relid), nblocks - cursor);
    let end = cursor + blocks;
    let (rows, visited) = update_blocks(&rows_work, &format!("ONLY {}", m.table_sql()), m.relid, cursor, end);
    catalog::save_progress(m.id, end, rows, visited, next_density(per_block, rows, blocks, batch_size));
    Batch { rows, blocks, first_block: cursor, ..Batch::default() }
}

/// One batch on a range of a parallel backfill, under the table's ROW
/// EXCLUSIVE lock and the range's row FOR UPDATE.
fn range_batch(migration: i64, batch_size: i32, par: Share, work: Work) -> Batch {
    lock_table(&catalog::load_or_raise(migration, false));
    // Read again now that no abort or rewrite can be running: one that
    // committed while this waited for the table shows here.
    let m = catalog::load_or_raise(migration, false);
    if !m.phase.in_flight() || m.phase == Phase::Backfilled || filenode(m.relid) != m.relfilenode {
        return Batch::default(); // the next step answers for the new phase, or restarts the scan
    }
    let rows_work = work(&m);
    require_trigger(&m, &rows_work);
    let Some(mut r) = catalog::take_range(m.id, LAST_RANGE.get(), par.wait) else {
        let (_, open) = catalog::range_counts(m.id);
        return Batch { busy: open > 0, ..Batch::default() };
    };
    LAST_RANGE.set(Some((r.relid, r.start_block)));
    let Some((heap, density)) = range_heap(&m, &r) else {
        // A leaf detached or dropped since it was planned: its rows left the
        // table (DROP and DETACH wait for the table's lock this batch holds).
        r.next_block = r.end_block;
        catalog::save_range_progress(m.id, &r, 0, 0);
        return Batch::default();
    };
    if heap.is_empty() {
        return Batch::default(); // the leaf was rewritten: the next step restarts it
    }
    let per_block = if r.rows_per_block > 0.0 { r.rows_per_block } else { 1.0 };
    let blocks = batch_blocks(batch_size, per_block, density, r.end_block - r.next_block);
    let first = r.next_block;
    let heap_relid = if r.relid == pg_sys::InvalidOid { m.relid } else { r.relid };
    let (rows, visited) = update_blocks(&rows_work, &heap, heap_relid, first, first + blocks);
    r.next_block = first + blocks;
    r.rows_per_block = next_density(per_block, rows, blocks, batch_size);
    // Fewer ranges with blocks left than workers: one of them has nothing to
    // do. Give it the unvisited half of this range (a new range, committed
    // with this batch; nobody else can touch those blocks meanwhile).
    // A restart or finish waits for this range's lock, then counts again.
    let left = r.end_block - r.next_block;
    if catalog::range_counts(m.id).1 < par.workers as i64 && left >= 2 * blocks.max(MIN_SPLIT_BLOCKS / 2) {
        let mid = r.next_block + left / 2;
        catalog::add_range(m.id, &r, mid, r.end_block);
        r.end_block = mid;
    }
    catalog::save_range_progress(m.id, &r, rows, visited);
    Batch { rows, blocks, first_block: first, ..Batch::default() }
}

/// No blocks left: record completion, under the migration's row FOR UPDATE
/// and every range's row lock (batches still running end first; a range
/// one of them split off shows in the count that follows).
fn finish(migration: i64, started: Instant, work: Work) -> Batch {
    let m = catalog::load_or_raise(migration, true);
    if m.phase == Phase::Backfilled || !m.phase.in_flight() {
        return Batch::done();
    }
    lock_table(&m);
    catalog::lock_ranges(m.id);
    if rewritten(&m, tree::is_partitioned(m.relid)) || catalog::range_counts(m.id).1 > 0 || m.next_block < m.rel_blocks {
        return Batch::default(); // rewritten or split meanwhile: not finished
    }
    catalog::fold_ranges(m.id);
    let rows_work = work(&m);
    if !rows_work.synced && (extend_scan(&m) || second_pass(&m, &rows_work)) {
        return Batch::default();
    }
    // A backfill that updated nothing on a table that has rows is suspect (a
    // table whose rows live elsewhere, as a Citus shell's do): it is done
    // only if no row still waits — one look, not ONLY this heap.
    // (An update job may rightly match no row.)
    if rows_work.synced && catalog::load_or_raise(migration, false).rows_done == 0 {
        let waiting = spi::one::<bool>(&format!("SELECT EXISTS (SELECT 1 FROM {} WHERE {})", m.table_sql(), rows_work.todo), &[]);
        if waiting == Some(true) {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("the backfill of zdm migration {} visited every block of {} and updated no row, yet rows still wait for it", m.id, m.table_sql()),
                format!("The table's rows are not in its own heap (a Citus shell table?). Call zdm.abort({}).", m.id),
            );
        }
    }
    // Fresh statistics on the new column, so that plans are good the
    // moment contract makes it the only one.
    // (A partitioned table's ANALYZE would analyze every leaf inside this
    // batch, under its statement timeout: its leaves are left to autovacuum,
    // which the backfill's updates wake.)
    if !tree::is_partitioned(m.relid) && m.new_column.is_some() {
        spi::exec(&format!("ANALYZE {} ({})", m.table_sql(), ident(m.new_col())));
    }
    catalog::set_phase(m.id, Phase::Backfilled);
    let total = catalog::load_or_raise(migration, false).rows_done;
    catalog::log_step(Step {
        migration: m.id,
        step: "backfill complete",
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        lock_wait_ms: None,
        lock_attempts: None,
        detail: Some(format!("{total} rows backfilled in total")),
    });
    Batch::done()
}

/// How many times a scan without a sync trigger follows the heap's end.
const MAX_EXTENSIONS: i64 = 10;

/// A scan without a sync trigger (an update job) at its end: rows the
/// application moved meanwhile may sit in blocks added since the scan was
/// planned. If the heap grew, the scan goes on to its end now (at most
/// MAX_EXTENSIONS times: a table that grows for ever must not keep the job
/// alive for ever). A partitioned table's leaves are not followed.
fn extend_scan(m: &Migration) -> bool {
    if tree::is_partitioned(m.relid) {
        return false;
    }
    let now = introspect::relation_blocks(m.relid);
    let extended = catalog::as_catalog_owner(|| {
        spi::one::<i64>("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'scan extended'", &[m.id.into()])
    })
    .unwrap_or(0);
    if now <= m.rel_blocks || extended >= MAX_EXTENSIONS {
        return false;
    }
    catalog::as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.migrations SET next_block = rel_blocks, rel_blocks = $2, updated_at = clock_timestamp() WHERE id = $1",
            &[m.id.into(), now.into()],
        )
    });
    catalog::log_step(Step {
        migration: m.id,
        step: "scan extended",
        duration_ms: 0.0,
        lock_wait_ms: None,
        lock_attempts: None,
        detail: Some(format!("the heap grew from {} to {now} blocks: rows moved there are visited too", m.rel_blocks)),
    });
    true
}

/// A scan without a sync trigger whose rows are chosen by a condition (an
/// update job with a WHERE) at its end: a row the application moved into a
/// block the scan had already passed (free space reused) was not visited.
/// Once, the scan starts again over the whole heap (a partitioned table's
/// leaves planned again, at their sizes now); rows done no longer match and
/// are only looked at.
fn second_pass(m: &Migration, rows: &Rows) -> bool {
    if rows.todo == "true" {
        return false;
    }
    let passes = catalog::as_catalog_owner(|| {
        spi::one::<i64>("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'second pass'", &[m.id.into()])
    })
    .unwrap_or(0);
    if passes > 0 {
        return false;
    }
    // A partitioned table: its ranges are folded already, and the next step
    // plans every leaf again (`plan_tree`).
    let nblocks = if tree::is_partitioned(m.relid) { tree::blocks(m.relid) } else { introspect::relation_blocks(m.relid) };
    if !tree::is_partitioned(m.relid) {
        catalog::restart_scan(m.id, nblocks, filenode(m.relid));
    }
    catalog::log_step(Step {
        migration: m.id,
        step: "second pass",
        duration_ms: 0.0,
        lock_wait_ms: None,
        lock_attempts: None,
        detail: Some(format!("{} rows updated in the first pass; the heap ({nblocks} blocks) is visited once more for rows moved behind the cursor", m.rows_done)),
    });
    true
}

/// A partitioned table's first step, and the step after a leaf was
/// rewritten: one range per leaf planned, or the rewritten leaves' ranges
/// started again over their new heaps. The caller holds the migration's row
/// FOR UPDATE and the table's lock.
fn plan_tree(m: &Migration, started: Instant, work: Work) -> Batch {
    if catalog::range_counts(m.id).0 == 0 {
        // Each leaf locked as a batch locks it before its size and heap are
        // read: no rewrite slips in between.
        let leaves: Vec<tree::Leaf> = tree::leaves(m.relid)
            .into_iter()
            .map(|l| {
                lock_leaf(l.relid);
                tree::Leaf { relid: l.relid, blocks: introspect::relation_blocks(l.relid) }
            })
            .collect();
        catalog::plan_leaves(m.id, &leaves, m.rows_per_block);
        catalog::log_step(Step {
            migration: m.id,
            step: "backfill: planned",
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            lock_wait_ms: None,
            lock_attempts: None,
            detail: Some(format!(
                "{} leaf partition(s), {} block(s) in all",
                leaves.len(),
                leaves.iter().map(|l| l.blocks).sum::<i64>()
            )),
        });
        if catalog::range_counts(m.id).0 == 0 {
            return finish(m.id, started, work); // every leaf is empty
        }
        return Batch::default();
    }
    catalog::lock_ranges(m.id);
    for leaf in catalog::rewritten_leaves(m.id) {
        lock_leaf(leaf.relid);
        let leaf = tree::Leaf { relid: leaf.relid, blocks: introspect::relation_blocks(leaf.relid) };
        catalog::restart_leaf(m.id, &leaf);
        catalog::log_step(Step {
            migration: m.id,
            step: "backfill: partition rewritten, its scan restarts",
            duration_ms: 0.0,
            lock_wait_ms: None,
            lock_attempts: None,
            detail: Some(format!("{}: new heap of {} blocks", catalog::current_table_sql(leaf.relid).unwrap_or_default(), leaf.blocks)),
        });
    }
    Batch::default()
}

/// The heap a range covers, as an UPDATE target, and its rows per block;
/// None if the range's leaf is no longer part of the table, "" if it was
/// rewritten since the range was planned. A leaf is locked (ROW EXCLUSIVE,
/// like the batch's UPDATE) before its heap is compared, as a plain table is.
fn range_heap(m: &Migration, r: &catalog::Range) -> Option<(String, f64)> {
    if r.relid == pg_sys::InvalidOid {
        return Some((format!("ONLY {}", m.table_sql()), introspect::rows_per_block(m.relid)));
    }
    if !tree::covers(m.relid, r.relid) {
        return None;
    }
    lock_leaf(r.relid);
    let leaf = catalog::current_table_sql(r.relid)?;
    if filenode(r.relid) != r.relfilenode {
        return Some((String::new(), 0.0));
    }
    Some((format!("ONLY {leaf}"), introspect::rows_per_block(r.relid)))
}

/// A leaf's lock, by OID (the batch's own, ROW EXCLUSIVE), taken before its
/// name or heap is looked at: no rewrite or rename slips in between (its
/// parent's lock, which the batch holds, keeps DROP and a plain DETACH out;
/// a leaf detached CONCURRENTLY meanwhile is still covered as it was).
fn lock_leaf(relid: pg_sys::Oid) {
    unsafe { pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
}

/// The table's lock for the batch, taken before its heap is looked at: a
/// rewrite (VACUUM FULL, CLUSTER) cannot slip in between the relfilenode
/// check and the UPDATE. Taken by OID, then the table looked up again: one
/// dropped meanwhile is reported as such (42P01 naming the migration's
/// table), not as a statement that names a relation that does not exist.
fn lock_table(m: &Migration) {
    unsafe { pg_sys::LockRelationOid(m.relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    m.table_sql();
}

/// Without the sync trigger the backfill would race the application.
fn require_trigger(m: &Migration, rows: &Rows) {
    if !rows.synced {
        return;
    }
    if let Some(fault) = trigger::sync_trigger_fault(m.relid, m.trigger_name.as_deref().unwrap_or_default()) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the sync trigger of zdm migration {} on {} {fault}", m.id, m.table_sql()),
            format!("Writes are no longer kept in sync; call zdm.abort({}) and start again.", m.id),
        );
    }
}

/// The table's heap was rewritten since the scan was planned. A partitioned
/// table has no heap of its own: a rewrite is per leaf.
fn rewritten(m: &Migration, partitioned: bool) -> bool {
    if partitioned { !catalog::rewritten_leaves(m.id).is_empty() } else { filenode(m.relid) != m.relfilenode }
}

fn filenode(relid: pg_sys::Oid) -> pg_sys::Oid {
    spi::one::<pg_sys::Oid>("SELECT pg_catalog.pg_relation_filenode($1)", &[relid.into()]).unwrap_or(pg_sys::InvalidOid)
}

/// (cursor, end of scan), after restarting the scan if the table was
/// rewritten (VACUUM FULL, CLUSTER, a rewriting ALTER): tuples moved, so
/// every range is dropped (their counters kept) and the scan starts again
/// over the new heap. The caller holds the migration's row FOR UPDATE.
fn restart_if_rewritten(m: &Migration) -> (i64, i64) {
    let now = filenode(m.relid);
    if now == m.relfilenode {
        return (m.next_block, m.rel_blocks);
    }
    let nblocks = introspect::relation_blocks(m.relid);
    catalog::fold_ranges(m.id);
    catalog::restart_scan(m.id, nblocks, now);
    catalog::log_step(Step {
        migration: m.id,
        step: "backfill: table rewritten, scan restarts",
        duration_ms: 0.0,
        lock_wait_ms: None,
        lock_attempts: None,
        detail: Some(format!("new heap of {nblocks} blocks")),
    });
    (0, nblocks)
}

/// Which rows still wait for a rename's or type change's backfill, and the
/// SET that fills them.
pub fn column_rows(m: &Migration) -> Rows {
    let (old, new) = (ident(m.old_col()), ident(m.new_col()));
    // A rename copies the old value; a type change's trigger computes the
    // new column from the old one on an UPDATE that writes either column
    // (it may map NULL to a value): the batch must name the new column.
    let (todo, set) = if m.using_expr.is_some() {
        (format!("{new} IS NULL"), format!("{new} = NULL"))
    } else {
        (format!("{new} IS NULL AND {old} IS NOT NULL"), format!("{new} = {old}"))
    };
    // A rename's `new = old` is what its sync trigger would do to the row:
    // the batch spares every row the lock PostgreSQL takes before calling
    // it. A type change's batch needs its trigger to convert.
    let without_trigger = match (&m.using_expr, &m.trigger_name) {
        (None, Some(name)) => Some((name.clone(), "zdm.sync_trigger()")),
        _ => None,
    };
    Rows { todo, set, synced: true, search_path: None, count_visited: false, without_trigger }
}

/// The batch's UPDATE over heap blocks `[first, end)` of `heap` (`ONLY`
/// the table or one of its leaves, `relid`); returns rows updated, and rows
/// visited when the operation counts them (else 0).
fn update_blocks(rows: &Rows, heap: &str, relid: pg_sys::Oid, first: i64, end: i64) -> (i64, i64) {
    // ONLY: inheritance is refused up front, and a child added later must not
    // be half-filled by the parent's block range. Operators are qualified:
    // nothing on a search_path may stand in for them. The operation's text
    // is closed off by a line break and a parenthesis, the range follows: an
    // update job's text is checked to parse exactly so (ops::update).
    let range = format!(
        "ctid OPERATOR(pg_catalog.>=) '({first},0)'::pg_catalog.tid AND ctid OPERATOR(pg_catalog.<) '({end},0)'::pg_catalog.tid"
    );
    // Every other migration's and user's triggers fire for these UPDATEs
    // like for any other write: nothing a batch causes — including writes a
    // user trigger makes to other rows — escapes syncing. The migration's
    // own sync trigger would see new = old and leave the row alone: a
    // rename's batch runs without it (`Rows::without_trigger`).
    let run = || {
        // Counted before the UPDATE: a row it moves to another block is no
        // longer in this range afterwards.
        let visited = if rows.count_visited {
            spi::one::<i64>(&format!("SELECT pg_catalog.count(*) FROM {heap} WHERE {range}"), &[]).unwrap_or(0)
        } else {
            0
        };
        let sql = statement(heap, &rows.set, &rows.todo, &range);
        let updated = match &rows.without_trigger {
            Some((trigger, function)) => {
                let function = spi::one::<pg_sys::Oid>(&format!("SELECT {}::pg_catalog.regprocedure::pg_catalog.oid", spi::literal(function)), &[])
                    .unwrap_or(pg_sys::InvalidOid);
                crate::trigger::bypass::without(relid, &sql, trigger, function, || update_naming_row(rows, heap, &range, &sql))
            }
            None => update_naming_row(rows, heap, &range, &sql),
        };
        (updated, visited)
    };
    match &rows.search_path {
        Some(path) => {
            let path = std::ffi::CString::new(path.as_str()).unwrap_or_default();
            crate::security::with_guc_nest_level(&[(c"search_path", path.as_c_str()), (c"standard_conforming_strings", c"on")], run)
        }
        None => run(),
    }
}

/// Run the batch's UPDATE (`sql`, over `range` of `heap`). A failure in a
/// row of a job without a trigger (an update job: no trigger names the row)
/// is retraced to its row — each row of the range tried alone, rolled back —
/// and raised naming it, with its SQLSTATE. Only on the failure path; lock
/// and statement timeouts pass through for the engine to retry.
fn update_naming_row(rows: &Rows, heap: &str, range: &str, sql: &str) -> i64 {
    if rows.synced {
        return spi::exec_count(sql);
    }
    let retryable = |e: &pgrx::pg_sys::panic::CaughtError| crate::engine::locking::retryable(crate::errors::code_of(e));
    match crate::subxact::attempt(|| spi::exec_count(sql)) {
        Ok(n) => n,
        Err(e) if retryable(&e) => e.rethrow(),
        Err(e) => {
            let ctids = spi::rows(&format!("SELECT ctid::text FROM {heap} WHERE {range} ORDER BY ctid"), &[], |r| Ok(r.get::<String>(1)?.unwrap_or_default()));
            for tid in ctids {
                let one = statement(heap, &rows.set, &rows.todo, &format!("ctid OPERATOR(pg_catalog.=) {}::pg_catalog.tid", spi::literal(&tid)));
                if let Err(row_error) = crate::subxact::rolled_back(|| {
                    spi::exec_count(&one);
                }) {
                    if retryable(&row_error) {
                        row_error.rethrow();
                    }
                    crate::errors::raise_with_detail(
                        crate::errors::code_of(&row_error),
                        format!("zdm update job: row {tid} of {heap}: {}", crate::errors::message_of(&row_error)),
                        "The batch was rolled back; the rows before it stay updated.",
                        "Fix the row (or the job's SET / WHERE: zdm.abort it and start another), then zdm.start_backfill(<id>).",
                    );
                }
            }
            e.rethrow()
        }
    }
}

/// A batch's UPDATE: `set` and `todo` each closed off (a line break ends a
/// trailing `--` comment), then the block range.
pub fn statement(heap: &str, set: &str, todo: &str, range: &str) -> String {
    statement_with(heap, set, todo, range, "\n")
}

/// `statement`, closing the user's text with `end` (update jobs check that
/// their text parses the same without the line break: no trailing comment).
pub fn statement_with(heap: &str, set: &str, todo: &str, range: &str, end: &str) -> String {
    format!("UPDATE {heap} SET {set}{end} WHERE ({todo}{end}) AND {range}")
}

/// How far ranges over rows with nothing to do (the application rewrote
/// them) may stretch: at most this many times the blocks a batch takes at
/// the table's average density. Crossing such rows stays fast, and a
/// stretched range that runs into rows needing work again updates about
/// this many batches' rows at most, not the rest of the table.
const MAX_STRETCH: f64 = 8.0;

/// The blocks of the next batch: batch_size rows at the learned density,
/// no more than MAX_STRETCH times what the table's average density gives,
/// at least one block and at most the `left` ones.
fn batch_blocks(batch_size: i32, per_block: f64, table_density: f64, left: i64) -> i64 {
    let density = per_block.max(table_density / MAX_STRETCH);
    ((batch_size as f64 / density).ceil() as i64).clamp(1, left.max(1))
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
    use super::{batch_blocks, next_density};

    #[test]
    fn sparse_ranges_stretch_at_most_eight_times_the_average() {
        // Learned density 0.5 (rows already done), table average 50: the
        // range is 8 × 2000 / 50 = 320 blocks, not 4000.
        assert_eq!(batch_blocks(2000, 0.5, 50.0, 100_000), 320);
        // Dense rows: the learned density decides.
        assert_eq!(batch_blocks(2000, 100.0, 50.0, 100_000), 20);
        // Average unknown (0): the learned density alone, as before.
        assert_eq!(batch_blocks(2000, 0.5, 0.0, 100_000), 4000);
        // Never past the end, never empty.
        assert_eq!(batch_blocks(2000, 0.5, 50.0, 7), 7);
        assert_eq!(batch_blocks(1, 1000.0, 50.0, 7), 1);
    }

    #[test]
    fn density_follows_dense_batches_and_halves_on_sparse_ones() {
        assert_eq!(next_density(50.0, 5000, 100, 5000), 50.0);
        assert_eq!(next_density(50.0, 0, 100, 5000), 25.0);
        assert_eq!(next_density(0.6, 0, 100, 5000), 0.5);
    }
}

/// A batch on a migration that is no longer in flight: 55000 naming its phase.
pub fn require_backfillable(m: &Migration) {
    if !m.phase.in_flight() {
        m.require_phase("backfill");
    }
}
