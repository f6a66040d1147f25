//! Indexes a rename carries over to the new column (`zdm.carried_indexes`).
//!
//! * expand: for every index involving the old column (any position, partial,
//!   expression, INCLUDE, any access method, opclass, collation, order,
//!   NULLS NOT DISTINCT) and every UNIQUE / PRIMARY KEY constraint on it,
//!   build the equivalent definition on the new column from the catalog —
//!   key columns, retargeted expression and predicate trees deparsed, not an
//!   edited `pg_get_indexdef` text — and record it;
//! * after the backfill the worker builds each one concurrently
//!   (`index::build_carried`), so the backfill's UPDATEs never maintain them
//!   and writers are never blocked;
//! * contract: the old indexes go with the old column; each new index takes
//!   its old index's name, a key is attached `ADD CONSTRAINT … USING INDEX`
//!   under the brief lock (the validated NOT NULL makes a primary key
//!   instant), and replica identity and CLUSTER ON follow.
//! * a partitioned table: indexes are built leaf by leaf (engine's
//!   index_tree); a key's parts stay unattached until contract, which makes
//!   each leaf's part its key and then adds the key to the partitioned table,
//!   which attaches them (`attach_partitioned_key`).

use crate::catalog::{as_catalog_owner, Migration};
use crate::engine::IndexTask;
use crate::errors::{raise_with_detail, Code, OrRaise};
use crate::introspect::Table;
use crate::spi::{self, ident};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

pub struct Carried {
    pub old_index: String,
    pub new_index: String,
    pub definition: String,
    pub constraint: Option<(String, bool)>,
    pub replica_identity: bool,
    pub clustered: bool,
}

fn qualified_name(catalog: &str, oid: pg_sys::Oid) -> String {
    let (table, name_col, ns_col) = match catalog {
        "opclass" => ("pg_catalog.pg_opclass", "opcname", "opcnamespace"),
        _ => ("pg_catalog.pg_collation", "collname", "collnamespace"),
    };
    spi::one::<String>(
        &format!("SELECT pg_catalog.format('%I.%I', n.nspname, x.{name_col}) FROM {table} x JOIN pg_catalog.pg_namespace n ON n.oid = x.{ns_col} WHERE x.oid = $1"),
        &[oid.into()],
    )
    .unwrap_or_default()
}

/// The CREATE INDEX statement for index `index` with attribute `from`
/// replaced by `to`, named `new_name`.
pub fn definition(table: &Table, index: pg_sys::Oid, from: i16, to: i16, new_name: &str) -> (String, bool, bool) {
    #[allow(clippy::type_complexity)]
    let row: Option<(bool, bool, i32, Vec<i16>, Vec<pg_sys::Oid>, Vec<pg_sys::Oid>, Vec<i16>, Option<String>, Option<String>, String, pg_sys::Oid, Vec<String>, Option<String>, bool, bool)> =
        spi::first_row(
            "SELECT i.indisunique, i.indnullsnotdistinct, i.indnkeyatts::int, i.indkey::int2[], i.indclass::oid[], \
                    i.indcollation::oid[], i.indoption::int2[], i.indexprs::text, i.indpred::text, am.amname::text, am.oid, \
                    coalesce(c.reloptions, '{}')::text[], ts.spcname::text, i.indisreplident, i.indisclustered \
               FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
               JOIN pg_catalog.pg_am am ON am.oid = c.relam LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid = c.reltablespace \
              WHERE i.indexrelid = $1",
            &[index.into()],
            |r| {
                Ok((
                    r.get::<bool>(1)?.unwrap_or(false),
                    r.get::<bool>(2)?.unwrap_or(false),
                    r.get::<i32>(3)?.unwrap_or(0),
                    r.get::<Vec<i16>>(4)?.unwrap_or_default(),
                    r.get::<Vec<pg_sys::Oid>>(5)?.unwrap_or_default(),
                    r.get::<Vec<pg_sys::Oid>>(6)?.unwrap_or_default(),
                    r.get::<Vec<i16>>(7)?.unwrap_or_default(),
                    r.get::<String>(8)?,
                    r.get::<String>(9)?,
                    r.get::<String>(10)?.unwrap_or_default(),
                    r.get::<pg_sys::Oid>(11)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<Vec<String>>(12)?.unwrap_or_default(),
                    r.get::<String>(13)?,
                    r.get::<bool>(14)?.unwrap_or(false),
                    r.get::<bool>(15)?.unwrap_or(false),
                ))
            },
        );
    let Some((unique, nulls_not_distinct, nkey, keys, classes, collations, options, exprs, pred, am, am_oid, reloptions, tablespace, replident, clustered)) = row
    else {
        raise_with_detail(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("index with OID {} disappeared while zdm read it", index.to_u32()),
            "",
            "Call again.",
        )
    };
    let relname = CString::new(table.name.as_str()).unwrap_or_default();
    let (expressions, predicate) = unsafe {
        let context = pg_sys::deparse_context_for(relname.as_ptr(), table.relid);
        let tree = |text: &Option<String>| -> *mut pg_sys::Node {
            match text {
                Some(t) => {
                    let c = CString::new(t.as_str()).unwrap_or_default();
                    let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Node;
                    crate::parse::retarget(node, Some(from), to);
                    node
                }
                None => std::ptr::null_mut(),
            }
        };
        let deparse = |node: *mut pg_sys::Node| -> String {
            CStr::from_ptr(pg_sys::deparse_expression(node, context, false, false)).to_string_lossy().into_owned()
        };
        let list = tree(&exprs) as *mut pg_sys::List;
        let mut expressions = Vec::new();
        if !list.is_null() {
            for i in 0..(*list).length as usize {
                let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node;
                expressions.push((deparse(node), pg_sys::exprType(node), pg_sys::exprCollation(node)));
            }
        }
        let pred_node = tree(&pred);
        let predicate = (!pred_node.is_null()).then(|| deparse(pred_node));
        (expressions, predicate)
    };
    let mut next_expr = expressions.into_iter();
    let mut key_items = Vec::new();
    let mut include = Vec::new();
    for (i, &attnum) in keys.iter().enumerate() {
        let (text, type_oid, default_collation) = if attnum == 0 {
            let (t, ty, coll) = next_expr.next().unwrap_or_default();
            (format!("({t})"), ty, coll)
        } else {
            let target = if attnum == from { to } else { attnum };
            let (name, ty, coll) = spi::first_row(
                "SELECT attname::text, atttypid, attcollation FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                &[table.relid.into(), target.into()],
                |r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                        r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                    ))
                },
            )
            .unwrap_or((String::new(), pg_sys::InvalidOid, pg_sys::InvalidOid));
            (ident(&name), ty, coll)
        };
        if i as i32 >= nkey {
            include.push(text);
            continue;
        }
        let mut item = text;
        if let Some(&coll) = collations.get(i) {
            if coll != pg_sys::InvalidOid && coll != default_collation {
                item.push_str(&format!(" COLLATE {}", qualified_name("collation", coll)));
            }
        }
        if let Some(&class) = classes.get(i) {
            let default = unsafe { pg_sys::GetDefaultOpClass(type_oid, am_oid) };
            // A type change: the old type's default class becomes the new type's.
            let old_default = (attnum == from)
                .then(|| {
                    spi::one::<pg_sys::Oid>(
                        "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                        &[table.relid.into(), from.into()],
                    )
                })
                .flatten()
                .map(|old_type| unsafe { pg_sys::GetDefaultOpClass(old_type, am_oid) });
            if class != default && Some(class) != old_default {
                item.push_str(&format!(" {}", qualified_name("opclass", class)));
            }
        }
        let option = options.get(i).copied().unwrap_or(0);
        let (desc, nulls_first) = (option & 1 != 0, option & 2 != 0);
        if desc {
            item.push_str(" DESC");
            if !nulls_first {
                item.push_str(" NULLS LAST");
            }
        } else if nulls_first {
            item.push_str(" NULLS FIRST");
        }
        key_items.push(item);
    }
    let mut sql = format!(
        "CREATE {}INDEX {} ON {} USING {} ({})",
        if unique { "UNIQUE " } else { "" },
        ident(new_name),
        table.sql(),
        ident(&am),
        key_items.join(", ")
    );
    if !include.is_empty() {
        sql.push_str(&format!(" INCLUDE ({})", include.join(", ")));
    }
    if nulls_not_distinct {
        sql.push_str(" NULLS NOT DISTINCT");
    }
    let reloptions: Vec<String> = reloptions
        .iter()
        .filter_map(|o| o.split_once('='))
        .map(|(k, v)| format!("{} = {}", ident(k), spi::literal(v)))
        .collect();
    if !reloptions.is_empty() {
        sql.push_str(&format!(" WITH ({})", reloptions.join(", ")));
    }
    if let Some(ts) = tablespace {
        sql.push_str(&format!(" TABLESPACE {}", ident(&ts)));
    }
    if let Some(p) = predicate {
        sql.push_str(&format!(" WHERE {p}"));
    }
    (sql, replident, clustered)
}

pub fn record(migration: i64, c: &Carried) {
    let (ctype, cname) = match &c.constraint {
        Some((name, primary)) => (Some(if *primary { "p" } else { "u" }), Some(name.as_str())),
        None => (None, None),
    };
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.carried_indexes (migration_id, old_index, new_index, definition, constraint_type, constraint_name, \
                                              replica_identity, clustered) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                migration.into(),
                c.old_index.as_str().into(),
                c.new_index.as_str().into(),
                c.definition.as_str().into(),
                ctype.into(),
                cname.into(),
                c.replica_identity.into(),
                c.clustered.into(),
            ],
        )
    });
}

/// The migration's carried indexes with their state.
pub fn list(migration: i64) -> Vec<(Carried, String)> {
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            let rows = c.update(
                "SELECT old_index::text, new_index::text, definition, constraint_type, constraint_name::text, replica_identity, clustered, state \
                   FROM zdm.carried_indexes WHERE migration_id = $1 ORDER BY old_index",
                None,
                &[migration.into()],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let constraint = match (r.get::<String>(4)?, r.get::<String>(5)?) {
                    (Some(t), Some(n)) => Some((n, t == "p")),
                    _ => None,
                };
                out.push((
                    Carried {
                        old_index: r.get::<String>(1)?.unwrap_or_default(),
                        new_index: r.get::<String>(2)?.unwrap_or_default(),
                        definition: r.get::<String>(3)?.unwrap_or_default(),
                        constraint,
                        replica_identity: r.get::<bool>(6)?.unwrap_or(false),
                        clustered: r.get::<bool>(7)?.unwrap_or(false),
                    },
                    r.get::<String>(8)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .or_raise("reading zdm.carried_indexes")
    })
}

pub fn set_state(migration: i64, old_index: &str, state: &str, error: Option<&str>) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.carried_indexes SET state = $3, last_error = $4 WHERE migration_id = $1 AND old_index = $2",
            &[migration.into(), old_index.into(), state.into(), error.into()],
        )
    });
}

/// A carried key on a partitioned table is built on the leaves only and
/// attached at contract (PostgreSQL attaches a leaf's key to a partitioned
/// key, never a bare index, and cannot add a key USING INDEX there).
fn leaves_only(partitioned: bool, c: &Carried) -> bool {
    partitioned && c.constraint.is_some()
}

/// Leaves of the tree without a valid part of key `c` (created after the
/// build), with whether their heap is empty: (leaf, empty).
fn leaves_without(m: &Migration, c: &Carried) -> Vec<(String, bool)> {
    crate::tree::leaves(m.relid)
        .into_iter()
        .filter(|leaf| {
            let name = crate::engine::index_tree::partition_index_name(&c.new_index, leaf.relid);
            spi::one::<bool>(
                "SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
                  WHERE i.indrelid = $1 AND c.relname = $2",
                &[leaf.relid.into(), name.as_str().into()],
            ) != Some(true)
        })
        .map(|leaf| (crate::catalog::current_table_sql(leaf.relid).unwrap_or_default(), leaf.blocks == 0))
        .collect()
}

/// The carried indexes still to build (not valid yet, or a key whose
/// partitioned table gained a leaf with rows since), in a stable order, as
/// engine build tasks: on the table's current schema, names in the
/// definition qualified (empty search_path for the build).
pub fn pending_builds(migration: i64) -> Vec<IndexTask> {
    let Some(m) = crate::catalog::load(migration, false) else { return Vec::new() };
    let schema = crate::catalog::current_schema_of(m.relid).unwrap_or_default();
    let partitioned = crate::tree::is_partitioned(m.relid);
    list(migration)
        .into_iter()
        .filter(|(c, state)| state != "valid" || (leaves_only(partitioned, c) && leaves_without(&m, c).iter().any(|(_, empty)| !empty)))
        .map(|(c, _)| IndexTask {
            key: c.old_index.clone(),
            relid: m.relid,
            drop: false,
            schema: schema.clone(),
            leaves_only: leaves_only(partitioned, &c),
            index: c.new_index,
            definition: c.definition,
            search_path: "pg_catalog, pg_temp".into(),
        })
        .collect()
}

/// Contract needs every carried index built and valid — for a key on a
/// partitioned table, on every leaf that holds rows (an empty leaf created
/// since gets its part at contract, instantly).
pub fn require_built(m: &Migration) {
    let missing: Vec<String> = list(m.id)
        .into_iter()
        .filter(|(_, state)| state != "valid")
        .map(|(c, state)| format!("{} ({state})", ident(&c.new_index)))
        .collect();
    if !missing.is_empty() {
        raise_with_detail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot contract zdm migration {}: index builds are not complete: {}", m.id, missing.join(", ")),
            "The new column's indexes are built concurrently by the worker after the backfill.",
            format!("Follow them with zdm.wait({0}); if a build failed, fix the cause (see zdm.status) and call zdm.start_backfill({0}).", m.id),
        );
    }
    let partitioned = crate::tree::is_partitioned(m.relid);
    for (c, _) in list(m.id).into_iter().filter(|(c, _)| leaves_only(partitioned, c)) {
        let loaded: Vec<String> = leaves_without(m, &c).into_iter().filter(|(_, empty)| !empty).map(|(leaf, _)| leaf).collect();
        if !loaded.is_empty() {
            raise_with_detail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "cannot contract zdm migration {}: partition(s) {} of {} hold rows but no part of {}",
                    m.id,
                    loaded.join(", "),
                    m.table_sql(),
                    ident(&c.new_index)
                ),
                "They were created after the worker built the new key's index leaf by leaf; attaching the key would build it under ACCESS EXCLUSIVE.",
                format!("Call zdm.start_backfill({0}) (it builds them concurrently), zdm.wait({0}), then zdm.contract({0}) again.", m.id),
            );
        }
    }
}

/// For each carried key of a partitioned table, the clause that makes it
/// again — `PRIMARY KEY (…) INCLUDE (…) WITH (…) USING INDEX TABLESPACE …`
/// — read from the old key's index with attribute `from` named `to` (the
/// name the column ends with): the partitioned table gets its key by this
/// clause, attaching the leaves' keys. Read before the old key goes.
pub fn partitioned_key_clauses(m: &Migration, from: i16, to: &str) -> Vec<PartitionedKey> {
    if !crate::tree::is_partitioned(m.relid) {
        return Vec::new();
    }
    list(m.id)
        .into_iter()
        .filter_map(|(c, _)| {
            let (name, primary) = c.constraint?;
            spi::first_row(
                "SELECT cols.keys, cols.include, \
                        i.indnullsnotdistinct, pg_catalog.array_to_string(x.reloptions, ', '), \
                        (SELECT pg_catalog.quote_ident(ts.spcname) FROM pg_catalog.pg_tablespace ts WHERE ts.oid = x.reltablespace) \
                   FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_index i ON i.indexrelid = k.conindid \
                   JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid, \
                   LATERAL (SELECT pg_catalog.array_agg(u.col ORDER BY u.n) FILTER (WHERE u.n <= i.indnkeyatts) AS keys, \
                                   pg_catalog.array_agg(u.col ORDER BY u.n) FILTER (WHERE u.n > i.indnkeyatts) AS include \
                              FROM (SELECT e.n, pg_catalog.quote_ident(CASE WHEN e.attnum = $3 THEN $4 ELSE a.attname::text END) AS col \
                                      FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY e(attnum, n) \
                                      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = e.attnum) u) cols \
                  WHERE k.conrelid = $1 AND k.conname = $2",
                &[m.relid.into(), name.as_str().into(), from.into(), to.into()],
                |r| {
                    let keys = r.get::<Vec<String>>(1)?.unwrap_or_default();
                    let include = r.get::<Vec<String>>(2)?.unwrap_or_default();
                    let mut clause = format!(
                        "{}{} ({})",
                        if primary { "PRIMARY KEY" } else { "UNIQUE" },
                        if r.get::<bool>(3)?.unwrap_or(false) { " NULLS NOT DISTINCT" } else { "" },
                        keys.join(", ")
                    );
                    if !include.is_empty() {
                        clause.push_str(&format!(" INCLUDE ({})", include.join(", ")));
                    }
                    if let Some(options) = r.get::<String>(4)?.filter(|o| !o.is_empty()) {
                        clause.push_str(&format!(" WITH ({options})"));
                    }
                    if let Some(ts) = r.get::<String>(5)? {
                        clause.push_str(&format!(" USING INDEX TABLESPACE {ts}"));
                    }
                    Ok(clause)
                },
            )
            .map(|clause| {
                // Each partition's part of the old key, by name: the new
                // parts take those names once the old ones are gone.
                let parts = spi::rows(
                    &format!(
                        "SELECT k.conrelid, k.conname::text, i.indisreplident FROM {} p \
                           JOIN pg_catalog.pg_constraint k ON k.conindid = p.relid JOIN pg_catalog.pg_index i ON i.indexrelid = p.relid \
                          WHERE p.relid <> $1 AND k.contype IN ('p', 'u')",
                        crate::tree::partition_tree_sql(1)
                    ),
                    &[old_key_index(m, &name).into()],
                    |r| {
                        Ok(OldPart {
                            relid: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                            name: r.get::<String>(2)?.unwrap_or_default(),
                            replica_identity: r.get::<bool>(3)?.unwrap_or(false),
                        })
                    },
                );
                PartitionedKey { name, clause, parts }
            })
        })
        .collect()
}

/// A carried key of a partitioned table, as contract adds it again.
pub struct PartitionedKey {
    name: String,
    clause: String,
    /// each partition's part of the old key
    parts: Vec<OldPart>,
}

struct OldPart {
    relid: pg_sys::Oid,
    name: String,
    /// it was its partition's replica identity: the new part takes over
    replica_identity: bool,
}

fn old_key_index(m: &Migration, name: &str) -> pg_sys::Oid {
    spi::one::<pg_sys::Oid>(
        "SELECT conindid FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
        &[m.relid.into(), name.into()],
    )
    .unwrap_or(pg_sys::InvalidOid)
}

/// Under contract's ACCESS EXCLUSIVE lock, after the old column (and with
/// it the old indexes and keys) is gone: names, keys, replica identity,
/// CLUSTER ON. `keys` are a partitioned table's key clauses
/// (`partitioned_key_clauses`, read before the old keys went).
pub fn attach(m: &Migration, t: &str, schema: &str, keys: &[PartitionedKey]) {
    let partitioned = crate::tree::is_partitioned(m.relid);
    for (c, _) in list(m.id) {
        let final_name = match &c.constraint {
            Some((name, _)) if partitioned => {
                attach_partitioned_key(m, t, &c, keys);
                name.clone()
            }
            Some((name, primary)) => {
                spi::exec(&format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} {} USING INDEX {}",
                    ident(name),
                    if *primary { "PRIMARY KEY" } else { "UNIQUE" },
                    ident(&c.new_index)
                ));
                name.clone()
            }
            None => {
                spi::exec(&format!("ALTER INDEX {} RENAME TO {}", spi::qualified(schema, &c.new_index), ident(&c.old_index)));
                c.old_index.clone()
            }
        };
        if c.replica_identity {
            spi::exec(&format!("ALTER TABLE {t} REPLICA IDENTITY USING INDEX {}", ident(&final_name)));
        }
        if c.clustered {
            spi::exec(&format!("ALTER TABLE {t} CLUSTER ON {}", ident(&final_name)));
        }
    }
}

/// A key on a partitioned table: each leaf's part becomes the leaf's key
/// USING INDEX (no scan: the NOT NULL is in place), then the key on the
/// partitioned table attaches them; PostgreSQL builds a part only for a leaf
/// without one, which must be empty (checked again here, under the lock: a
/// leaf created empty may have been filled since `require_built`). A leaf's
/// replica identity that was its part of the old key moves to the new part.
/// A key dropped by hand since expand is not made again: its parts go.
fn attach_partitioned_key(m: &Migration, t: &str, c: &Carried, keys: &[PartitionedKey]) {
    let Some((name, primary)) = &c.constraint else { return };
    let key = keys.iter().find(|k| &k.name == name);
    for leaf in crate::tree::leaves(m.relid) {
        let part = crate::engine::index_tree::partition_index_name(&c.new_index, leaf.relid);
        let (leaf_sql, valid) = spi::first_row(
            "SELECT pg_catalog.format('%I.%I', n.nspname, l.relname), \
                    (SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid \
                      WHERE i.indrelid = l.oid AND x.relname = $2) \
               FROM pg_catalog.pg_class l JOIN pg_catalog.pg_namespace n ON n.oid = l.relnamespace WHERE l.oid = $1",
            &[leaf.relid.into(), part.as_str().into()],
            |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<bool>(2)?)),
        )
        .unwrap_or_default();
        let part_sql = spi::qualified(&crate::catalog::current_schema_of(leaf.relid).unwrap_or_default(), &part);
        let Some(key) = key.filter(|_| valid == Some(true)) else {
            if valid.is_some() {
                spi::exec(&format!("DROP INDEX {part_sql}"));
            }
            if key.is_some() && leaf.blocks > 0 {
                raise_with_detail(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("cannot contract zdm migration {}: partition {leaf_sql} of {t} holds rows but no valid part of {}", m.id, ident(&c.new_index)),
                    "Attaching the key would build it under ACCESS EXCLUSIVE. Nothing was changed.",
                    format!("Call zdm.start_backfill({0}) (it builds the part concurrently), zdm.wait({0}), then zdm.contract({0}) again.", m.id),
                );
            }
            continue;
        };
        let old = key.parts.iter().find(|p| p.relid == leaf.relid);
        // The old part's name (free now: the old part is gone), else the build's.
        let leaf_name = old.map_or(part.clone(), |p| p.name.clone());
        spi::exec(&format!(
            "ALTER TABLE {leaf_sql} ADD CONSTRAINT {} {} USING INDEX {}",
            ident(&leaf_name),
            if *primary { "PRIMARY KEY" } else { "UNIQUE" },
            ident(&part)
        ));
        if old.is_some_and(|p| p.replica_identity) {
            spi::exec(&format!("ALTER TABLE {leaf_sql} REPLICA IDENTITY USING INDEX {}", ident(&leaf_name)));
        }
    }
    if let Some(key) = key {
        spi::exec(&format!("ALTER TABLE {t} ADD CONSTRAINT {} {}", ident(name), key.clause));
    }
}
