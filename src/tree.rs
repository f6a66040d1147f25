//! Which relations a migration covers. A plain table is its own heap; a
//! partitioned table is a tree whose rows live in its leaf partitions, and
//! whose DDL (ADD/DROP/RENAME COLUMN, CREATE TRIGGER, LOCK TABLE, CHECK
//! constraints) recurses through the tree by itself. Every step that scans
//! rows, locks or finds a migration from one of its relations asks here,
//! rather than branching on the relation's kind itself.

use crate::spi;
use pgrx::prelude::*;

/// A relation that holds rows of the migrated table.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub relid: pg_sys::Oid,
    pub blocks: i64,
}

/// The table is partitioned (at its root): its rows live in its leaves.
pub fn is_partitioned(relid: pg_sys::Oid) -> bool {
    spi::one::<bool>("SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()]).unwrap_or(false)
}

/// The relations holding the table's rows: the table itself, or every leaf
/// partition of its tree (sub-partitions and a default partition included),
/// in the tree's order.
pub fn leaves(relid: pg_sys::Oid) -> Vec<Leaf> {
    if !is_partitioned(relid) {
        return vec![Leaf { relid, blocks: crate::introspect::relation_blocks(relid) }];
    }
    spi::rows(
        &format!(
            "SELECT t.relid, pg_catalog.pg_relation_size(t.relid) / pg_catalog.current_setting('block_size')::bigint \
               FROM {} t JOIN pg_catalog.pg_class c ON c.oid = t.relid \
              WHERE t.isleaf AND c.relkind = 'r' ORDER BY t.level, c.relname",
            partition_tree_sql(1)
        ),
        &[relid.into()],
        |r| {
            Ok(Leaf {
                relid: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                blocks: r.get::<i64>(2)?.unwrap_or(0),
            })
        },
    )
}

/// Heap blocks over the whole table (every leaf of a partitioned one).
pub fn blocks(relid: pg_sys::Oid) -> i64 {
    leaves(relid).iter().map(|l| l.blocks).sum()
}

/// The root of the partition tree `relid` belongs to (itself if none).
pub fn root_of(relid: pg_sys::Oid) -> pg_sys::Oid {
    spi::one::<pg_sys::Oid>("SELECT coalesce(pg_catalog.pg_partition_root($1), $1)", &[relid.into()]).unwrap_or(relid)
}

/// `leaf` is `root` itself or one of its partitions (at any depth), now.
pub fn covers(root: pg_sys::Oid, leaf: pg_sys::Oid) -> bool {
    root == leaf
        || spi::one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_partition_ancestors($2) a WHERE a.relid = $1)",
            &[root.into(), leaf.into()],
        )
        .unwrap_or(false)
}

/// The FROM/UPDATE target that reaches every row of the table: `ONLY t` for
/// a plain table (no inheritance child is half-covered), `t` for a
/// partitioned one (its leaves).
pub fn scan_target(relid: pg_sys::Oid, table_sql: &str) -> String {
    if is_partitioned(relid) { table_sql.to_string() } else { format!("ONLY {table_sql}") }
}

/// SQL for "the relations whose migrations apply to relation `$n`": the
/// relation and its partition ancestors. For the guard and the triggers,
/// which see a leaf and look up its root's migration.
pub fn self_and_ancestors_sql(param: u32) -> String {
    format!("(SELECT ${param}::pg_catalog.oid UNION ALL SELECT a.relid FROM pg_catalog.pg_partition_ancestors(${param}::pg_catalog.regclass) a)")
}

/// SQL for "the relations of the tree rooted at `$n`" (the relation itself
/// when it is not partitioned).
pub fn self_and_descendants_sql(param: u32) -> String {
    format!("(SELECT t.relid FROM {} t)", partition_tree_sql(param))
}

/// SQL for the tree rooted at `$n` as rows `(relid, parentrelid, level,
/// isleaf)`, like `pg_partition_tree($n)` but read from pg_inherits without
/// locking anything: pg_partition_tree takes ACCESS SHARE on every
/// partition until the transaction ends, which a caller that hands its work
/// to a worker (and waits for it) must not hold. Partitions only: an
/// inheritance child (refused, see introspect::inheritance) is not covered.
pub fn partition_tree_sql(param: u32) -> String {
    format!(
        "(WITH RECURSIVE tr(relid, parentrelid, level) AS ( \
            SELECT ${param}::pg_catalog.oid, NULL::pg_catalog.oid, 0 \
            UNION ALL SELECT i.inhrelid, i.inhparent, tr.level + 1 FROM pg_catalog.pg_inherits i JOIN tr ON i.inhparent = tr.relid \
                       WHERE (SELECT p.relispartition FROM pg_catalog.pg_class p WHERE p.oid = i.inhrelid)) \
          SELECT tr.relid, tr.parentrelid, tr.level, k.relkind NOT IN ('p', 'I') AS isleaf \
            FROM tr JOIN pg_catalog.pg_class k ON k.oid = tr.relid)"
    )
}
