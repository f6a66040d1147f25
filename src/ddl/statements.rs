//! The DDL statements besides ALTER TABLE that lock or rebuild a table:
//! CREATE INDEX, DROP INDEX, REINDEX, VACUUM FULL, CLUSTER, RENAME. Their
//! lock levels are the ones indexcmds.c, cluster.c, vacuum.c and
//! tablecmds.c take (tests/plan.rs compares them with pg_locks).

use super::{Step, Work, has_option, list, lit, relation_sql, resolve};
use crate::locks;
use crate::spi;
use pgrx::prelude::*;

fn table_kind_ok(relid: pg_sys::Oid) -> bool {
    let k = unsafe { pg_sys::get_rel_relkind(relid) } as u8;
    k == b'r' || k == b'p' || k == b'm'
}

pub fn index(stmt: *mut pg_sys::IndexStmt, text: &str) -> Vec<Step> {
    let s = unsafe { &*stmt };
    let Some(relid) = resolve(s.relation) else {
        return Vec::new();
    };
    if !table_kind_ok(relid) {
        return Vec::new();
    }
    let recurse =
        unsafe { (*s.relation).inh } && unsafe { pg_sys::get_rel_relkind(relid) } as u8 == b'p';
    let mut step = if s.concurrent {
        Step::new("build an index concurrently", relid, locks::SHARE_UPDATE_EXCLUSIVE, Work::IndexBuild)
            .note("writes go on; the build waits for transactions older than it, and leaves an INVALID index if it fails")
            .alternative(format!("SELECT zdm.create_index({}) -- retried, resumable, and on a partitioned table too", lit(text.trim())))
    } else {
        Step::new("build an index", relid, locks::SHARE, Work::IndexBuild)
            .alternative(format!("SELECT zdm.create_index({})", lit(text.trim())))
    };
    step.recurse = recurse;
    vec![step]
}

/// The index a name list designates, and its table.
fn index_and_table(names: *mut pg_sys::List) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    let rv = unsafe { pg_sys::makeRangeVarFromNameList(names) };
    let index = resolve(rv)?;
    let kind = unsafe { pg_sys::get_rel_relkind(index) } as u8;
    if kind != b'i' && kind != b'I' {
        return None;
    }
    let table = unsafe { pg_sys::IndexGetRelation(index, true) };
    (table != pg_sys::InvalidOid).then_some((index, table))
}

pub fn drop(stmt: *mut pg_sys::DropStmt) -> Vec<Step> {
    let s = unsafe { &*stmt };
    if s.removeType != pg_sys::ObjectType::OBJECT_INDEX {
        return Vec::new();
    }
    let mut out = Vec::new();
    for names in list::<pg_sys::List>(s.objects) {
        let Some((index, table)) = index_and_table(names) else {
            continue;
        };
        let name = relation_sql(index);
        let step = if s.concurrent {
            Step::new(
                format!("drop index {name} concurrently"),
                table,
                locks::SHARE_UPDATE_EXCLUSIVE,
                Work::Catalog,
            )
            .note("waits for transactions using the index, blocking nothing")
        } else {
            Step::new(
                format!("drop index {name}"),
                table,
                locks::ACCESS_EXCLUSIVE,
                Work::Catalog,
            )
            .alternative(format!("SELECT zdm.drop_index({})", lit(&name)))
        };
        out.push(step);
    }
    out
}

pub fn reindex(stmt: *mut pg_sys::ReindexStmt) -> Vec<Step> {
    let s = unsafe { &*stmt };
    let concurrent = has_option(s.params, "concurrently");
    let (table, what) = match s.kind {
        pg_sys::ReindexObjectType::REINDEX_OBJECT_TABLE => match resolve(s.relation) {
            Some(t) => (t, "every index of the table".to_string()),
            None => return Vec::new(),
        },
        pg_sys::ReindexObjectType::REINDEX_OBJECT_INDEX => {
            let Some(index) = resolve(s.relation) else {
                return Vec::new();
            };
            let t = unsafe { pg_sys::IndexGetRelation(index, true) };
            if t == pg_sys::InvalidOid {
                return Vec::new();
            }
            (t, format!("index {}", relation_sql(index)))
        }
        _ => {
            return vec![
                Step::new(
                    "rebuild the indexes of many tables",
                    pg_sys::InvalidOid,
                    locks::SHARE,
                    Work::IndexBuild,
                )
                .note("each table in turn: its writes wait while its indexes are rebuilt"),
            ];
        }
    };
    if concurrent {
        return vec![
            Step::new(
                format!("rebuild {what} concurrently"),
                table,
                locks::SHARE_UPDATE_EXCLUSIVE,
                Work::IndexBuild,
            )
            .note("writes go on; waits for older transactions"),
        ];
    }
    vec![Step::new(format!("rebuild {what}"), table, locks::SHARE, Work::IndexBuild)
        .note("also ACCESS EXCLUSIVE on each index: queries that plan with it wait too, so reads stop as well")
        .alternative(format!("REINDEX {} CONCURRENTLY", if s.kind == pg_sys::ReindexObjectType::REINDEX_OBJECT_TABLE { format!("TABLE {}", relation_sql(table)) } else { format!("INDEX {}", what.trim_start_matches("index ")) }))]
}

pub fn vacuum(stmt: *mut pg_sys::VacuumStmt) -> Vec<Step> {
    let s = unsafe { &*stmt };
    if !s.is_vacuumcmd || !has_option(s.options, "full") {
        return Vec::new();
    }
    let rels = list::<pg_sys::VacuumRelation>(s.rels);
    if rels.is_empty() {
        return vec![Step::new(
            "rewrite every table of the database (VACUUM FULL)",
            pg_sys::InvalidOid,
            locks::ACCESS_EXCLUSIVE,
            Work::Rewrite,
        )];
    }
    rels.into_iter()
        .filter_map(|r| resolve(unsafe { (*r).relation }))
        .map(|t| {
            Step::new("rewrite the table compactly (VACUUM FULL)", t, locks::ACCESS_EXCLUSIVE, Work::Rewrite)
                .note("no online way in zdm: pg_repack or pg_squeeze compact a table without a long lock; plain VACUUM blocks nothing")
        })
        .collect()
}

pub fn cluster(stmt: *mut pg_sys::ClusterStmt) -> Vec<Step> {
    let s = unsafe { &*stmt };
    match resolve(s.relation) {
        Some(t) => vec![
            Step::new(
                "rewrite the table in index order (CLUSTER)",
                t,
                locks::ACCESS_EXCLUSIVE,
                Work::Rewrite,
            )
            .note("no online way in zdm: pg_repack orders a table without a long lock"),
        ],
        None if s.relation.is_null() => {
            vec![Step::new(
                "rewrite every clustered table of the database (CLUSTER)",
                pg_sys::InvalidOid,
                locks::ACCESS_EXCLUSIVE,
                Work::Rewrite,
            )]
        }
        None => Vec::new(),
    }
}

#[allow(non_upper_case_globals)]
pub fn rename(stmt: *mut pg_sys::RenameStmt) -> Vec<Step> {
    use pg_sys::ObjectType::*;
    let s = unsafe { &*stmt };
    let Some(relid) = resolve(s.relation) else {
        return Vec::new();
    };
    let newname = super::cstr(s.newname);
    match s.renameType {
        OBJECT_COLUMN if table_kind_ok(relid) => {
            let old = super::cstr(s.subname);
            vec![Step::new(format!("rename column {} to {}", spi::ident(&old), spi::ident(&newname)), relid, locks::ACCESS_EXCLUSIVE, Work::Catalog)
                .note("instant once the lock is granted, but application code still using the old name fails from then on")
                .alternative(format!("SELECT zdm.expand_rename({}, {}, {})", lit(&relation_sql(relid)), lit(&old), lit(&newname)))]
        }
        OBJECT_TABLE | OBJECT_TABCONSTRAINT if table_kind_ok(relid) => {
            vec![Step::new(
                format!("rename to {}", spi::ident(&newname)),
                relid,
                locks::ACCESS_EXCLUSIVE,
                Work::Catalog,
            )]
        }
        OBJECT_INDEX => {
            let table = unsafe { pg_sys::IndexGetRelation(relid, true) };
            vec![
                Step::new(
                    format!("rename index to {}", spi::ident(&newname)),
                    relid,
                    locks::SHARE_UPDATE_EXCLUSIVE,
                    Work::Catalog,
                )
                .note(if table == pg_sys::InvalidOid {
                    ""
                } else {
                    "the table is not locked"
                }),
            ]
        }
        _ => Vec::new(),
    }
}
