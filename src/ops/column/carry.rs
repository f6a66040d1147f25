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

/// The carried indexes still to build (not valid yet), in a stable order,
/// as engine build tasks: on the table's current schema, names in the
/// definition qualified (empty search_path for the build).
pub fn pending_builds(migration: i64) -> Vec<IndexTask> {
    let Some(m) = crate::catalog::load(migration, false) else { return Vec::new() };
    let schema = crate::catalog::current_schema_of(m.relid).unwrap_or_default();
    list(migration)
        .into_iter()
        .filter(|(_, state)| state != "valid")
        .map(|(c, _)| IndexTask {
            key: c.old_index,
            relid: m.relid,
            drop: false,
            schema: schema.clone(),
            index: c.new_index,
            definition: c.definition,
            search_path: "pg_catalog, pg_temp".into(),
        })
        .collect()
}

/// Contract needs every carried index built and valid.
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
}

/// Under contract's ACCESS EXCLUSIVE lock, after the old column (and with
/// it the old indexes and keys) is gone: names, keys, replica identity,
/// CLUSTER ON.
pub fn attach(m: &Migration, t: &str, schema: &str) {
    for (c, _) in list(m.id) {
        let final_name = match &c.constraint {
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
