//! What the server says now about a step: the table's size, whether it is
//! large (`zdm.large_table`), who holds a conflicting lock or an old
//! snapshot, and how long the work would take at this server's measured
//! speed. Nothing here waits for a lock.

use super::{Step, Work};
use crate::{guc, locks, spi, subxact, tree};
use pgrx::prelude::*;
use std::cell::Cell;
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

/// Bytes per second this session measured for a scan, a rewrite and an
/// index build.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub scan: f64,
    pub rewrite: f64,
    pub index: f64,
    pub sample_bytes: i64,
}

thread_local! {
    static RATES: Cell<Option<Rates>> = const { Cell::new(None) };
}

/// This server's speed, measured once per session on a temporary table of
/// ~5 MB (in a subtransaction that is rolled back): a scan with a qual, an
/// index build and an ALTER TYPE rewrite, timed. Close to a real table's
/// speed when the table is cached (a 117 MB table with two indexes: rewrite
/// 58 MB/s against 63 measured, index build 118 against 88); slower when it
/// must be read from disk, and a temporary table writes no WAL. Event
/// triggers see the temporary table's DDL.
pub fn rates() -> Option<Rates> {
    if let Some(r) = RATES.with(|c| c.get()) {
        return Some(r);
    }
    let mut measured: Option<Rates> = None;
    let outcome = subxact::rolled_back(|| {
        spi::exec(
            "CREATE TEMPORARY TABLE zdm_plan_calibration ON COMMIT DROP AS \
             SELECT g AS id, pg_catalog.md5(g::pg_catalog.text) AS t, g AS n FROM pg_catalog.generate_series(1, 60000) g",
        );
        let bytes = spi::read_one::<i64>(
            "SELECT pg_catalog.pg_table_size('pg_temp.zdm_plan_calibration')",
            &[],
        )
        .unwrap_or(0);
        let timed = |sql: &str| {
            let t = Instant::now();
            spi::exec(sql);
            t.elapsed().as_secs_f64().max(1e-6)
        };
        let scan =
            timed("SELECT pg_catalog.count(*) FROM pg_temp.zdm_plan_calibration WHERE t <> ''");
        let index = timed("CREATE INDEX ON pg_temp.zdm_plan_calibration (t)");
        let rewrite =
            timed("ALTER TABLE pg_temp.zdm_plan_calibration ALTER COLUMN n TYPE pg_catalog.int8");
        let b = bytes as f64;
        measured = Some(Rates {
            scan: b / scan,
            rewrite: b / rewrite,
            index: b / index,
            sample_bytes: bytes,
        });
    });
    if outcome.is_err() {
        return None;
    }
    RATES.with(|c| c.set(measured));
    measured
}

/// Seconds the step's work takes on `bytes` (None: not proportional to size,
/// or no measurement).
pub fn estimate(work: Work, bytes: i64, rates: Option<Rates>) -> Option<f64> {
    let r = rates?;
    let rate = match work {
        Work::Catalog => return Some(0.0),
        Work::Scan => r.scan,
        Work::Rewrite | Work::Copy => r.rewrite,
        Work::IndexBuild => r.index,
        Work::Batches => return None,
    };
    Some(bytes as f64 / rate)
}

pub fn basis(rates: Option<Rates>) -> String {
    match rates {
        Some(r) => format!(
            "size / speed measured in this session on a {:.1} MB temporary table: scan {:.0} MB/s, rewrite {:.0} MB/s, index build {:.0} MB/s \
             (cached and without WAL: a lower bound for a real table)",
            r.sample_bytes as f64 / 1e6,
            r.scan / 1e6,
            r.rewrite / 1e6,
            r.index / 1e6
        ),
        None => "not measured (no temporary table could be created in this transaction, e.g. a read-only one)".into(),
    }
}
