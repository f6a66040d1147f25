//! An index on a partitioned table, built without a long lock — the way a
//! careful DBA does it by hand, since PostgreSQL cannot `CREATE INDEX
//! CONCURRENTLY` on a partitioned table: the index created `ON ONLY` each
//! partitioned table of the tree (catalog only, INVALID), a concurrent build
//! on each leaf, then `ALTER INDEX … ATTACH PARTITION` of each. PostgreSQL
//! marks a partitioned index valid when its last partition attaches.
//!
//! Every step looks first at what is there: an interrupted build resumes at
//! the first leaf without a valid attached index; a leaf whose build failed
//! has its INVALID index dropped before anything else happens. Partitions
//! created later get the index from PostgreSQL itself (CREATE TABLE …
//! PARTITION OF clones a partitioned table's indexes, valid or not).
//!
//! A task `leaves_only` builds the leaves' indexes and stops there: the
//! operation attaches them itself (a carried key: see ops/column/carry.rs).

use super::process::{caught_transaction, transaction};
use super::index_build::log;
use super::{locking, toplevel, IndexTask};
use crate::spi::{self, ident};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::Instant;

/// A relation of the tree and its part of the index.
struct Node {
    relid: pg_sys::Oid,
    schema: String,
    table: String,
    partitioned: bool,
    /// the index on it: the task's own name on the root, `<name>_p<oid>` below
    index: String,
    /// the index it attaches to (None on the root)
    parent_index: Option<String>,
}

/// A build that failed: the error, and the partition it failed on.
pub struct Failure {
    pub error: CaughtError,
    pub partition: Option<String>,
}

/// The name of index `index`'s part on partition `relid`: `<index>_p<oid>`,
/// or, when that would be cut to PostgreSQL's 63 bytes, the cut name with a
/// hash of the whole one, so that two long names sharing their first bytes
/// never name one part.
pub fn partition_index_name(index: &str, relid: pg_sys::Oid) -> String {
    let suffix = format!("_p{}", relid.to_u32());
    if index.len() + suffix.len() <= 63 {
        return format!("{index}{suffix}");
    }
    // FNV-1a: stable across builds and versions (a resumed build finds its parts).
    let hash = index.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    spi::with_suffix(index, &format!("_{:08x}{suffix}", hash as u32))
}

fn nodes(t: &IndexTask) -> Vec<Node> {
    let name_of = |relid: pg_sys::Oid, root: bool| if root { t.index.clone() } else { partition_index_name(&t.index, relid) };
    let rows = transaction(|| {
        spi::rows(
            &format!(
                "SELECT t.relid, t.parentrelid, n.nspname::text, c.relname::text, c.relkind = 'p', \
                        (SELECT pn.nspname::text FROM pg_catalog.pg_class p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace WHERE p.oid = t.parentrelid) \
                   FROM {} t JOIN pg_catalog.pg_class c ON c.oid = t.relid \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p') ORDER BY t.level, c.relname",
                crate::tree::partition_tree_sql(1)
            ),
            &[t.relid.into()],
            |r| {
                Ok((
                    r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<pg_sys::Oid>(2)?,
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                    r.get::<bool>(5)?.unwrap_or(false),
                    r.get::<String>(6)?,
                ))
            },
        )
    })
    .unwrap_or_default();
    rows.into_iter()
        .map(|(relid, parent, schema, table, partitioned, parent_schema)| {
            let root = relid == t.relid;
            Node {
                relid,
                index: name_of(relid, root),
                parent_index: parent.filter(|_| !root).map(|p| {
                    let schema = if p == t.relid { t.schema.clone() } else { parent_schema.unwrap_or_default() };
                    spi::qualified(&schema, &name_of(p, p == t.relid))
                }),
                schema,
                table,
                partitioned,
            }
        })
        .collect()
}

/// (exists, valid, attached to its parent index)
fn state(n: &Node) -> (bool, bool, bool) {
    let schema = if n.parent_index.is_none() { None } else { Some(n.schema.as_str()) };
    transaction(|| {
        spi::first_row(
            "SELECT i.indisvalid, EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = c.oid) \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
               JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid \
              WHERE c.relname = $1 AND i.indrelid = $2 AND ($3::text IS NULL OR s.nspname = $3)",
            &[n.index.as_str().into(), n.relid.into(), schema.into()],
            |r| Ok((r.get::<bool>(1)?.unwrap_or(false), r.get::<bool>(2)?.unwrap_or(false))),
        )
    })
    .ok()
    .flatten()
    .map_or((false, false, false), |(valid, attached)| (true, valid, attached))
}

/// The task's definition run on one relation of the tree: `ON ONLY` a
/// partitioned one, concurrently on a leaf.
fn create_on(t: &IndexTask, n: &Node, owner: pg_sys::Oid, timeout_ms: i32) -> Result<(), CaughtError> {
    let (schema, table, index) = (CString::new(n.schema.as_str()), CString::new(n.table.as_str()), CString::new(n.index.as_str()));
    let (Ok(schema), Ok(table), Ok(index)) = (schema, table, index) else { return Ok(()) };
    let leaf = !n.partitioned;
    toplevel::run(&t.definition, owner, &t.search_path, timeout_ms, |node| unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_IndexStmt {
            return;
        }
        let stmt = node as *mut pg_sys::IndexStmt;
        (*stmt).relation = pg_sys::makeRangeVar(pg_sys::pstrdup(schema.as_ptr()), pg_sys::pstrdup(table.as_ptr()), -1);
        (*(*stmt).relation).inh = leaf;
        (*stmt).idxname = pg_sys::pstrdup(index.as_ptr());
        (*stmt).concurrent = leaf;
    })
}

fn drop_concurrently(n: &Node, t: &IndexTask, owner: pg_sys::Oid, timeout_ms: i32) -> Result<(), CaughtError> {
    let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", spi::qualified(&n.schema, &n.index));
    toplevel::run(&sql, owner, &t.search_path, timeout_ms, |_| {})
}

fn attach(n: &Node, owner: pg_sys::Oid, timeout_ms: i32) -> Result<(), CaughtError> {
    let Some(parent) = &n.parent_index else { return Ok(()) };
    let sql = format!("ALTER INDEX {parent} ATTACH PARTITION {}", spi::qualified(&n.schema, &n.index));
    caught_transaction(|| crate::security::as_owner(owner, || locking::with_lock_timeout(timeout_ms, || spi::exec(&sql))))
}

/// Build the task's index over the whole tree, resuming where an earlier
/// attempt stopped. A leaf's failed build leaves nothing INVALID behind.
pub fn build(id: i64, t: &IndexTask, owner: pg_sys::Oid, timeout_ms: i32) -> Result<(), Failure> {
    let nodes = nodes(t);
    let (mut built, mut kept) = (0, 0);
    for n in nodes.iter().filter(|n| !(t.leaves_only && n.partitioned)) {
        let where_ = || format!("{}.{}", ident(&n.schema), ident(&n.table));
        let fail = |error| Failure { error, partition: n.parent_index.as_ref().map(|_| where_()) };
        let (exists, valid, attached) = state(n);
        let started = Instant::now();
        if exists && !valid && !n.partitioned {
            drop_concurrently(n, t, owner, timeout_ms).map_err(fail)?;
        }
        if !exists || (!valid && !n.partitioned) {
            if let Err(e) = create_on(t, n, owner, timeout_ms) {
                if !n.partitioned {
                    let _ = drop_concurrently(n, t, owner, timeout_ms);
                }
                return Err(fail(e));
            }
            if !n.partitioned {
                built += 1;
                log(id, "index built on partition", started, format!("{} on {} (concurrently)", ident(&n.index), where_()));
            }
        } else if !n.partitioned {
            kept += 1;
        }
        if !attached && !t.leaves_only {
            attach(n, owner, timeout_ms).map_err(fail)?;
        }
    }
    log(
        id,
        if t.leaves_only { "index built on every partition" } else { "index attached on every partition" },
        Instant::now(),
        format!("{}: {built} partition(s) built, {kept} already valid", spi::qualified(&t.schema, &t.index)),
    );
    Ok(())
}

/// Remove whatever a build left (a failed or cancelled one): the partitioned
/// index with every partition attached to it (PostgreSQL cannot drop a
/// partitioned index concurrently: one brief ACCESS EXCLUSIVE, catalog
/// only, bounded by the lock timeout), then leaf indexes not attached yet.
pub fn remove(t: &IndexTask, owner: pg_sys::Oid, timeout_ms: i32) -> Result<(), CaughtError> {
    let nodes = nodes(t);
    toplevel::run(&format!("DROP INDEX IF EXISTS {}", spi::qualified(&t.schema, &t.index)), owner, &t.search_path, timeout_ms, |_| {})?;
    for n in nodes.iter().filter(|n| n.parent_index.is_some()) {
        if state(n).0 {
            let sql = format!("DROP INDEX {}IF EXISTS {}", if n.partitioned { "" } else { "CONCURRENTLY " }, spi::qualified(&n.schema, &n.index));
            toplevel::run(&sql, owner, &t.search_path, timeout_ms, |_| {})?;
        }
    }
    Ok(())
}

/// Indexes a build of `index` left on the partitions of `relid` (each
/// relation's own name, as `nodes` makes it), qualified: what an abort drops
/// in the caller's transaction, under its lock on the tree.
pub fn partition_indexes(relid: pg_sys::Oid, index: &str) -> Vec<String> {
    let rows = spi::rows(
        &format!(
            "SELECT t.relid, c.relname::text, pg_catalog.format('%I.%I', n.nspname, c.relname) FROM {} t \
               JOIN pg_catalog.pg_index i ON i.indrelid = t.relid JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE t.relid <> $1",
            crate::tree::partition_tree_sql(1)
        ),
        &[relid.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ))
        },
    );
    rows.into_iter()
        .filter(|(rel, name, _)| *name == partition_index_name(index, *rel))
        .map(|(_, _, qualified)| qualified)
        .collect()
}
