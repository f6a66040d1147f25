//! What the server says now about a step: the table's size, whether it is
//! large (`zdm.large_table`), who holds a conflicting lock or an old
//! snapshot, and how long the work would take at this server's measured
//! speed. Nothing here waits for a lock.

use super::{Step, Work};
use crate::{guc, locks, spi, subxact, tree};
use pgrx::prelude::*;
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default)]
pub struct Size {
    /// reltuples summed (None: never analysed).
    pub rows: Option<i64>,
    pub bytes: i64,
}

/// The relations a step's lock covers: the relation, and every partition
/// below it when the statement recurses.
pub fn covered(step: &Step) -> Vec<pg_sys::Oid> {
    if step.relid == pg_sys::InvalidOid {
        return Vec::new();
    }
    if !step.recurse {
        return vec![step.relid];
    }
    spi::read_rows(
        &format!("SELECT relid FROM {}", tree::partition_tree_sql(1)),
        &[step.relid.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or_default()),
    )
}

/// The size of a relation and, for a partitioned table, of its partitions:
/// exact (`pg_table_size`) where ACCESS SHARE is free at once, else the
/// catalog's relpages (nothing waits behind an exclusive lock here).
pub fn size(relid: pg_sys::Oid) -> Size {
    if relid == pg_sys::InvalidOid {
        return Size::default();
    }
    let rels = spi::read_rows(
        &format!(
            "SELECT t.relid, c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint, c.reltuples::bigint \
               FROM {} t JOIN pg_catalog.pg_class c ON c.oid = t.relid WHERE c.relkind IN ('r', 'm', 't')",
            tree::partition_tree_sql(1)
        ),
        &[relid.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<i64>(3)?.unwrap_or(-1),
            ))
        },
    );
    let mut total = Size {
        rows: Some(0),
        bytes: 0,
    };
    for (rel, catalog_bytes, tuples) in rels {
        total.bytes += with_share_lock(rel, || spi::read_one::<i64>("SELECT pg_catalog.pg_table_size($1)", &[rel.into()]))
            .flatten()
            .unwrap_or(catalog_bytes);
        total.rows = match (total.rows, tuples) {
            (Some(n), t) if t >= 0 => Some(n + t),
            _ => None,
        };
    }
    total
}

/// `zdm.large_table` in bytes.
pub fn large_table_bytes() -> i64 {
    guc::LARGE_TABLE_KB.get() as i64 * 1024
}

/// The relation was created in this transaction, or is temporary: nobody
/// else can be using it.
pub fn private(relid: pg_sys::Oid) -> bool {
    unsafe {
        if pg_sys::get_rel_persistence(relid) as u8 == b't' {
            return true;
        }
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return false;
        }
        let created = (*rel).rd_createSubid != 0;
        pg_sys::RelationClose(rel);
        created
    }
}

/// Sessions holding a lock that conflicts with the step's, and for a
/// concurrent build the snapshots it will wait for.
pub fn blockers(step: &Step) -> Vec<locks::Holder> {
    let mut out = locks::conflicting(&covered(step), step.lock);
    if step.work == Work::IndexBuild && step.lock == locks::SHARE_UPDATE_EXCLUSIVE {
        out.extend(locks::old_snapshots(1.0));
    }
    out
}

/// Run `f` under ACCESS SHARE on `relid` if that lock is free at once (None
/// otherwise: nothing here waits); a lock taken for this is given back
/// right after, not kept to the end of the transaction.
pub fn with_share_lock<R>(relid: pg_sys::Oid, f: impl FnOnce() -> R) -> Option<R> {
    let share = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    if unsafe { pg_sys::CheckRelationOidLockedByMe(relid, share, true) } {
        return Some(f());
    }
    if !unsafe { pg_sys::ConditionalLockRelationOid(relid, share) } {
        return None;
    }
    let r = subxact::attempt(f);
    unsafe { pg_sys::UnlockRelationOid(relid, share) };
    r.ok()
}

/// How many of the relation's first blocks `read_rate` reads (8 MB).
const SAMPLE_BLOCKS: u32 = 1024;

/// Work per byte relative to reading the heap's blocks, measured on this
/// class of machine (bench/safe_ddl.sh prints the same ratios for yours):
/// a seq scan evaluating a qual, an ALTER TABLE … TYPE rewrite (read,
/// convert, write, WAL, rebuild the indexes), an index build (read, sort,
/// write the index and its WAL).
const SCAN_FACTOR: f64 = 2.0;
const REWRITE_FACTOR: f64 = 12.0;
const INDEX_FACTOR: f64 = 8.0;

/// The speed this server reads the relation's heap at now, in bytes/s, and
/// how much was read to measure it: up to `SAMPLE_BLOCKS` blocks of the
/// table (of its largest partition) through a bulk-read buffer ring, as a
/// sequential scan reads them, cached or not. No SQL, no user code.
pub fn read_rate(relid: pg_sys::Oid) -> Option<(f64, i64)> {
    let target = spi::read_one::<pg_sys::Oid>(
        &format!(
            "SELECT t.relid FROM {} t JOIN pg_catalog.pg_class c ON c.oid = t.relid \
              WHERE c.relkind IN ('r', 'm') ORDER BY c.relpages DESC LIMIT 1",
            tree::partition_tree_sql(1)
        ),
        &[relid.into()],
    )?;
    with_share_lock(target, || unsafe {
        let rel = pg_sys::relation_open(target, pg_sys::NoLock as _);
        let blocks = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM).min(SAMPLE_BLOCKS);
        let strategy = pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKREAD);
        let started = Instant::now();
        for b in 0..blocks {
            let buf = pg_sys::ReadBufferExtended(rel, pg_sys::ForkNumber::MAIN_FORKNUM, b, pg_sys::ReadBufferMode::RBM_NORMAL, strategy);
            pg_sys::ReleaseBuffer(buf);
        }
        let took = started.elapsed().as_secs_f64();
        pg_sys::FreeAccessStrategy(strategy);
        pg_sys::relation_close(rel, pg_sys::NoLock as _);
        let bytes = blocks as i64 * pg_sys::BLCKSZ as i64;
        (blocks >= 16).then(|| (bytes as f64 / took.max(1e-6), bytes))
    })
    .flatten()
}

/// Seconds the step's work takes on `bytes` at `rate` (None: not
/// proportional to size, or no measurement).
pub fn estimate(work: Work, bytes: i64, rate: Option<(f64, i64)>) -> Option<f64> {
    let factor = match work {
        Work::Catalog => return Some(0.0),
        Work::Batches => return None,
        Work::Scan => SCAN_FACTOR,
        Work::Rewrite | Work::Copy => REWRITE_FACTOR,
        Work::IndexBuild => INDEX_FACTOR,
    };
    let (read, _) = rate?;
    Some(bytes as f64 / read * factor)
}

pub fn basis(work: Work, rate: Option<(f64, i64)>) -> Option<String> {
    let factor = match work {
        Work::Scan => SCAN_FACTOR,
        Work::Rewrite | Work::Copy => REWRITE_FACTOR,
        Work::IndexBuild => INDEX_FACTOR,
        _ => return None,
    };
    Some(match rate {
        Some((read, sample)) => format!(
            "bytes / {:.0} MB/s (this table's heap read now, {:.1} MB sampled) x {factor} for a {} (its cost per byte relative to a read, bench/safe_ddl.sh)",
            read / 1e6,
            sample as f64 / 1e6,
            work.text()
        ),
        None => "not measured: the table is empty or locked exclusively now".into(),
    })
}
