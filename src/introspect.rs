//! Facts about the user's table read from the system catalogs: what kind of
//! relation it is, a column's full type, and which objects depend on a column.

use crate::errors::{raise, raise_with_detail, Code, OrRaise};
use crate::spi;
use pgrx::prelude::*;

pub struct Table {
    pub relid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
}

impl Table {
    pub fn sql(&self) -> String {
        spi::qualified(&self.schema, &self.name)
    }
}

/// Resolve a table that zdm can migrate, refusing every other kind of
/// relation with 0A000/42809 and a hint.
pub fn migratable_table(relid: pg_sys::Oid) -> Table {
    let row = spi::first_row(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, c.relispartition \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relid.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<bool>(5)?.unwrap_or_default(),
            ))
        },
    );
    let Some((schema, name, relkind, persistence, is_partition)) = row else {
        raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", relid.to_u32()),
            "Pass the table name, e.g. 'myschema.mytable'.",
        )
    };
    let display = spi::qualified(&schema, &name);
    let refuse = |what: &str, hint: &str| -> ! {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("zdm cannot migrate {display}: it is {what}"),
            hint.to_string(),
        )
    };
    match relkind.as_str() {
        "r" => {}
        "p" => {}
        "v" => refuse("a view", "Migrate the table the view reads from, then recreate the view."),
        "m" => refuse("a materialized view", "Recreate the materialized view instead."),
        "f" => refuse("a foreign table", "Change the column on the remote server."),
        _ => raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{display} is not a table"),
            "zdm migrates ordinary tables.",
        ),
    }
    if persistence == "t" {
        refuse(
            "a temporary table",
            "Temporary tables are private to one session; background backfill cannot reach them. Use plain ALTER TABLE.",
        );
    }
    if is_partition {
        let root = spi::one::<String>("SELECT pg_catalog.pg_partition_root($1)::pg_catalog.regclass::text", &[relid.into()]).unwrap_or_default();
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("zdm cannot migrate {display}: it is a partition of {root}"),
            format!("A partition's columns are its parent's: migrate the partitioned table {root} itself, and zdm covers every partition."),
        );
    }
    if relkind == "p" {
        refuse_unreachable_leaves(relid, &display);
    }
    // Citus keeps a distributed or reference table's rows in shards: the
    // table zdm sees is an empty shell, whose backfill would find nothing.
    if let Some(what) = citus_table(relid) {
        refuse(
            &what,
            "Citus distributed, reference and Citus-managed local tables are not supported yet: their rows live in shards that zdm's backfill and trigger do not reach. Use Citus's own DDL propagation in a maintenance window.",
        );
    }
    // ALTER TABLE recurses to inheritance children, but a block-range
    // backfill and a trigger on the parent would not: rows would be lost.
    if let Some(what) = inheritance(relid) {
        refuse(
            &what,
            "Tables with inheritance parents or children are not supported: schema changes recurse to them, but zdm's trigger and backfill would cover one table only. Use plain DDL, or detach with ALTER TABLE ... NO INHERIT first.",
        );
    }
    // FORCE ROW LEVEL SECURITY applies policies to the owner, as whom zdm
    // works: rows it cannot see would be skipped. Refused up front; batches
    // also run with row_security = off, so policies added later fail loudly.
    let hidden = spi::one::<bool>(
        "SELECT c.relrowsecurity AND c.relforcerowsecurity AND NOT (r.rolsuper OR r.rolbypassrls) \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $1",
        &[relid.into()],
    );
    if hidden == Some(true) {
        refuse(
            "protected by FORCE ROW LEVEL SECURITY, whose policies would hide rows from its owner, as whom zdm works",
            "Run ALTER TABLE ... NO FORCE ROW LEVEL SECURITY for the migration (the owner then sees every row), or grant the owner BYPASSRLS.",
        );
    }
    Table { relid, schema, name }
}

/// A partitioned table's leaves are where its rows are read and written:
/// each must be an ordinary table its root's owner may update and see
/// every row of (a batch updates a leaf directly).
fn refuse_unreachable_leaves(relid: pg_sys::Oid, display: &str) {
    let bad = spi::first_row(
        &format!("SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), \
                CASE WHEN c.relkind = 'f' THEN 'a foreign table' \
                     WHEN NOT pg_catalog.pg_has_role(root.relowner, c.relowner, 'USAGE') THEN 'owned by a role the partitioned table''s owner is not a member of' \
                     WHEN c.relrowsecurity AND c.relforcerowsecurity AND NOT (r.rolsuper OR r.rolbypassrls) THEN 'protected by FORCE ROW LEVEL SECURITY' END \
           FROM {} t JOIN pg_catalog.pg_class c ON c.oid = t.relid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_catalog.pg_class root ON root.oid = $1 JOIN pg_catalog.pg_roles r ON r.oid = root.relowner \
          WHERE t.relid <> $1 AND (c.relkind = 'f' OR NOT pg_catalog.pg_has_role(root.relowner, c.relowner, 'USAGE') \
                OR (c.relrowsecurity AND c.relforcerowsecurity AND NOT (r.rolsuper OR r.rolbypassrls))) \
          ORDER BY 1 LIMIT 1", crate::tree::partition_tree_sql(1)),
        &[relid.into()],
        |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
    );
    if let Some((leaf, why)) = bad {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("zdm cannot migrate {display}: its partition {leaf} is {why}"),
            "zdm works on every leaf partition as the partitioned table's owner (its contract alters each one). Detach that partition for the migration, or make the partitioned table's owner own it (ALTER TABLE … OWNER TO), without FORCE ROW LEVEL SECURITY.",
        );
    }
}

/// The partition key (at any level of the tree) that uses `column`, if any.
pub fn partition_key_using(relid: pg_sys::Oid, column: &str) -> Option<String> {
    spi::one::<String>(
        &format!("SELECT pg_catalog.format('%s of %s', pg_catalog.pg_get_partkeydef(p.partrelid), p.partrelid::pg_catalog.regclass) \
           FROM {} t JOIN pg_catalog.pg_partitioned_table p ON p.partrelid = t.relid \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attname = $2 AND NOT a.attisdropped \
          WHERE a.attnum = ANY (p.partattrs::int2[]) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                         WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = p.partrelid AND d.objsubid = 0 \
                           AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = p.partrelid \
                           AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i')) \
          ORDER BY t.level LIMIT 1", crate::tree::partition_tree_sql(1)),
        &[relid.into(), column.into()],
    )
}

/// Objects on a partition's copy of `column` that are the partition's own —
/// not an index, key, check, foreign key or trigger it has from the
/// partitioned table — described: dropping the column on the partitioned
/// table would drop them silently (indexes, keys, checks, statistics) or
/// fail (views, triggers, policies). zdm carries only what the partitioned
/// table has.
pub fn partition_own_dependents(relid: pg_sys::Oid, column: &str) -> Vec<String> {
    spi::one::<Vec<String>>(
        &format!(
            "SELECT pg_catalog.array_agg(DISTINCT pg_catalog.format('%s (on partition %s)', \
                      pg_catalog.pg_describe_object(d.classid, d.objid, 0), t.relid::pg_catalog.regclass)) \
               FROM {} t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.relid AND a.attname = $2 AND NOT a.attisdropped \
               JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                    AND d.refobjid = t.relid AND d.refobjsubid = a.attnum AND d.deptype IN ('n', 'a') \
              WHERE t.relid <> $1 \
                AND d.classid <> 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                AND NOT (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND (d.objid = t.relid \
                         OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = d.objid))) \
                AND NOT (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND EXISTS ( \
                         SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.oid = d.objid \
                            AND (k.conparentid <> 0 OR k.coninhcount > 0 OR k.contype = 'n'))) \
                AND NOT (d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND EXISTS ( \
                         SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.oid = d.objid AND g.tgparentid <> 0))",
            crate::tree::partition_tree_sql(1)
        ),
        &[relid.into(), column.into()],
    )
    .unwrap_or_default()
}

/// The table's owner, as whom all of a migration's work runs.
pub fn table_owner(relid: pg_sys::Oid) -> pg_sys::Oid {
    spi::one::<pg_sys::Oid>("SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])
        .unwrap_or(pg_sys::InvalidOid)
}

/// A table zdm can migrate that the caller owns.
pub fn owned_table(relid: pg_sys::Oid) -> Table {
    let t = migratable_table(relid);
    require_owner(&t);
    t
}

/// The caller must own the table (be a member of its owner role).
pub fn require_owner(t: &Table) {
    let owns = spi::one::<bool>(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[t.relid.into()],
    )
    .unwrap_or(false);
    if !owns {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {} to migrate it", t.sql()),
            "Run this as the table's owner or a member of the owning role.",
        );
    }
}

pub struct Column {
    pub attnum: i16,
    pub type_sql: String,
    pub collation_sql: Option<String>,
    pub not_null: bool,
    pub generated: bool,
    pub identity: bool,
    pub comment: Option<String>,
}

/// A user column of `table` by name, or the refusal: 0A000 for a system
/// column, 42703 for none.
pub fn user_column(table: &Table, name: &str) -> Column {
    column(table.relid, name).unwrap_or_else(|| {
        let system = spi::one::<i16>(
            "SELECT attnum FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum < 0",
            &[table.relid.into(), name.into()],
        );
        if system.is_some() {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("column {} of table {} is a system column", spi::ident(name), table.sql()),
                "Pick a user column.",
            );
        }
        raise(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("column {} of table {} does not exist", spi::ident(name), table.sql()),
            "Check the column name; names are case-sensitive when quoted.",
        )
    })
}

/// The tables outside `relid`'s tree that foreign keys on its column
/// `column` (on any partition: matched by name) reference, each with its
/// name: dropping the column drops those keys, which locks each ACCESS
/// EXCLUSIVE. (A key's rows for a referenced table's partitions are left
/// out: `locking::lock_tables` locks a referenced table's partitions.)
pub fn referenced_through(relid: pg_sys::Oid, column: &str) -> Vec<(pg_sys::Oid, String)> {
    let tree = crate::tree::partition_tree_sql(1);
    spi::rows(
        &format!(
            "SELECT DISTINCT c.confrelid, pg_catalog.format('%I.%I', n.nspname, r.relname) FROM pg_catalog.pg_constraint c \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
               JOIN pg_catalog.pg_class r ON r.oid = c.confrelid JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
              WHERE c.contype = 'f' AND a.attname = $2 \
                AND c.conrelid IN (SELECT t.relid FROM {tree} t) AND c.confrelid NOT IN (SELECT t.relid FROM {tree} t) \
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint p WHERE p.oid = c.conparentid AND p.conrelid = c.conrelid) ORDER BY 2"
        ),
        &[relid.into(), column.into()],
        |r| Ok((r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid), r.get::<String>(2)?.unwrap_or_default())),
    )
}

/// A user column by name (system columns have negative attnums).
pub fn column(relid: pg_sys::Oid, name: &str) -> Option<Column> {
    spi::first_row(
            "SELECT a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                         THEN pg_catalog.format('%I.%I', cn.nspname, co.collname) END, \
                    a.attnotnull, a.attgenerated <> '', a.attidentity <> '', \
                    pg_catalog.col_description(a.attrelid, a.attnum) \
               FROM pg_catalog.pg_attribute a \
               JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
               LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
               LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        &[relid.into(), name.into()],
        |r| Ok(Column {
            attnum: r.get::<i16>(1)?.unwrap_or_default(),
            type_sql: r.get::<String>(2)?.unwrap_or_default(),
            collation_sql: r.get::<String>(3)?,
            not_null: r.get::<bool>(4)?.unwrap_or_default(),
            generated: r.get::<bool>(5)?.unwrap_or_default(),
            identity: r.get::<bool>(6)?.unwrap_or_default(),
            comment: r.get::<String>(7)?,
        }),
    )
}

/// An object that depends on a column, as pg_depend records it.
pub struct Dependent {
    pub description: String,
    pub kind: DependentKind,
}

#[derive(PartialEq, Eq, Debug)]
pub enum DependentKind {
    /// The column's own default: it stays on the old column until contract.
    OwnDefault,
    /// The column's own NOT NULL, a pg_constraint row since PostgreSQL 18:
    /// carried as the new column's NOT NULL (`steps::not_null_clause`).
    OwnNotNull,
    /// A sequence owned by the column (serial): re-owned at contract.
    OwnedSequence { oid: pg_sys::Oid },
    /// A CHECK constraint on this column alone: carried over NOT VALID.
    SingleColumnCheck { oid: pg_sys::Oid, name: String },
    /// A FOREIGN KEY from this table involving the column: copied NOT VALID
    /// onto the new column at expand, validated at contract.
    ForeignKey { oid: pg_sys::Oid, name: String },
    /// A FOREIGN KEY of another table referencing the column: re-pointed at
    /// the new column at contract, validated afterwards (expand checks that
    /// it can be: single-column, another table the owner may alter).
    Referencing,
    /// An index (any shape) involving the column: rebuilt concurrently on
    /// the new column after the backfill.
    Index { oid: pg_sys::Oid },
    /// A UNIQUE or PRIMARY KEY constraint: its index is rebuilt concurrently,
    /// then attached USING INDEX at contract.
    Key { index: pg_sys::Oid, name: String, primary: bool },
    /// An extended statistics object on plain columns (no expressions):
    /// copied onto the new column at expand, renamed at contract.
    Statistics { oid: pg_sys::Oid },
    /// A view, rule, policy, trigger (column list or WHEN), publication
    /// column list or a generated column of the same table computed from it:
    /// it keeps using the old column while that exists; expand
    /// proceeds, `zdm.status` lists it as a blocker, contract refuses until it
    /// is recreated on the new column.
    NotCarried,
    /// Anything else (exclusion constraint, multi-column check, expression
    /// statistics …): refused at expand.
    Blocking,
}

pub fn column_dependents(relid: pg_sys::Oid, attnum: i16) -> Vec<Dependent> {
    Spi::connect_mut(|c| {
        let t = c.update(
            &format!(
            "SELECT coalesce(g.description, pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)), d.objid, \
                    CASE WHEN d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                              AND (SELECT ad.adrelid = $1 AND ad.adnum = $2 FROM pg_catalog.pg_attrdef ad WHERE ad.oid = d.objid) THEN 'default' \
                         WHEN g.description IS NOT NULL THEN 'not_carried' \
                         WHEN d.classid IN ('pg_catalog.pg_rewrite'::pg_catalog.regclass, 'pg_catalog.pg_policy'::pg_catalog.regclass, \
                                            'pg_catalog.pg_trigger'::pg_catalog.regclass, 'pg_catalog.pg_publication_rel'::pg_catalog.regclass) \
                              THEN 'not_carried' \
                         WHEN d.classid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass THEN \
                              (SELECT CASE WHEN st.stxexprs IS NULL THEN 'statistics' END FROM pg_catalog.pg_statistic_ext st WHERE st.oid = d.objid) \
                         WHEN d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = $1 AND d.objsubid > 0 THEN 'not_carried' \
                         WHEN d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass THEN \
                              (SELECT CASE cl.relkind WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' END FROM pg_catalog.pg_class cl WHERE cl.oid = d.objid) \
                         WHEN d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN \
                              (SELECT CASE WHEN co.contype = 'c' AND co.conrelid = $1 AND co.conkey = ARRAY[$2]::int2[] AND {enforced} THEN 'check' \
                                           WHEN co.contype = 'n' AND co.conrelid = $1 THEN 'not_null' \
                                           WHEN co.contype = 'f' AND co.conrelid = $1 AND {enforced} THEN 'foreign_key' \
                                           WHEN co.contype = 'f' AND co.confrelid = $1 AND {enforced} THEN 'referencing' \
                                           WHEN co.contype IN ('u', 'p') AND co.conrelid = $1 AND co.conindid <> 0 AND NOT co.condeferrable THEN 'key' END \
                                 FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid) END, \
                    CASE WHEN d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN \
                         (SELECT co.conname::text FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid) END, \
                    CASE WHEN d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN \
                         (SELECT co.conindid FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid) END, \
                    CASE WHEN d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN \
                         (SELECT co.contype::text FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid) END \
               FROM (SELECT DISTINCT classid, objid, objsubid FROM pg_catalog.pg_depend \
                      WHERE refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND refobjid = $1 AND refobjsubid = $2 \
                        AND deptype IN ('n', 'a')) d \
               -- a generated column computed from this one (its expression, or the column itself)
               LEFT JOIN LATERAL (SELECT pg_catalog.format('generated column %I of table %s', ga.attname, ga.attrelid::pg_catalog.regclass) AS description \
                                    FROM pg_catalog.pg_attribute ga \
                                   WHERE ga.attrelid = $1 AND ga.attgenerated <> '' AND ga.attnum <> $2 \
                                     AND ((d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = $1 AND d.objsubid = ga.attnum) \
                                       OR (d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                                           AND ga.attnum = (SELECT ad.adnum FROM pg_catalog.pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = $1)))) g ON true \
              ORDER BY 1",
            enforced = crate::compat::CONSTRAINT_ENFORCED
            ),
            None,
            &[relid.into(), (attnum as i32).into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            let description = r.get::<String>(1)?.unwrap_or_default();
            let objid = r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid);
            let name = r.get::<String>(4)?.unwrap_or_default();
            let kind = match r.get::<String>(3)?.as_deref() {
                Some("default") => DependentKind::OwnDefault,
                Some("not_null") => DependentKind::OwnNotNull,
                Some("sequence") => DependentKind::OwnedSequence { oid: objid },
                Some("check") => DependentKind::SingleColumnCheck { oid: objid, name },
                Some("index") => DependentKind::Index { oid: objid },
                Some("foreign_key") => DependentKind::ForeignKey { oid: objid, name },
                Some("referencing") => DependentKind::Referencing,
                Some("not_carried") => DependentKind::NotCarried,
                Some("statistics") => DependentKind::Statistics { oid: objid },
                Some("key") => DependentKind::Key {
                    index: r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                    name,
                    primary: r.get::<String>(6)?.as_deref() == Some("p"),
                },
                _ => DependentKind::Blocking,
            };
            out.push(Dependent { description, kind });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise("reading pg_depend")
}

/// Refuse with `code` when any blocking object depends on the column.
pub fn refuse_blocking_dependents(deps: &[Dependent], code: Code, table: &str, column: &str, hint: &str) {
    let blocking: Vec<&str> =
        deps.iter().filter(|d| d.kind == DependentKind::Blocking).map(|d| d.description.as_str()).collect();
    if !blocking.is_empty() {
        raise_with_detail(
            code,
            format!(
                "column {} of table {table} has dependent objects zdm does not carry over: {}",
                spi::ident(column),
                blocking.join(", ")
            ),
            format!("Dependent objects: {}.", blocking.join("; ")),
            hint.to_string(),
        );
    }
}

/// Heap size in blocks, read now.
/// "an inheritance child" or "an inheritance parent" when the table is one.
pub fn inheritance(relid: pg_sys::Oid) -> Option<String> {
    // Partitions are not inheritance here: the tree covers them (crate::tree).
    spi::one::<String>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
                                   WHERE i.inhrelid = $1 AND NOT c.relispartition) THEN 'an inheritance child' \
                     WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
                                   WHERE i.inhparent = $1 AND NOT c.relispartition) THEN 'an inheritance parent' END",
        &[relid.into()],
    )
}

/// The table's live rows per heap block as the planner sees it
/// (reltuples / relpages from the last VACUUM or ANALYZE: a ratio that
/// holds while the table grows), at most what a block can hold; 0 when
/// unknown.
pub fn rows_per_block(relid: pg_sys::Oid) -> f64 {
    // (BLCKSZ - page header) / (tuple header + line pointer), MaxHeapTuplesPerPage
    let most = ((pg_sys::BLCKSZ as usize - 24) / (24 + 4)) as f64;
    spi::one::<f64>(
        "SELECT CASE WHEN relpages > 0 AND reltuples > 0 THEN reltuples::float8 / relpages ELSE 0 END \
           FROM pg_catalog.pg_class WHERE oid = $1",
        &[relid.into()],
    )
    .unwrap_or(0.0)
    .min(most)
}

pub fn relation_blocks(relid: pg_sys::Oid) -> i64 {
    spi::one::<i64>(
        "SELECT pg_catalog.pg_relation_size($1) / pg_catalog.current_setting('block_size')::bigint",
        &[relid.into()],
    )
    .unwrap_or(0)
}

/// (reltuples estimate, rows per heap block). When the table was never
/// analysed, counts the live rows of about 128 blocks picked at random over the
/// whole heap (TABLESAMPLE SYSTEM): the first blocks alone say nothing once an
/// earlier backfill or a bulk UPDATE has moved their rows to the end.
pub fn row_estimates(t: &Table, blocks: i64) -> (i64, f64) {
    // Over the leaves of a partitioned table (its own pg_class row has no pages).
    let (reltuples, relpages) = Spi::connect_mut(|c| {
        let r = c.update(
            &format!(
                "SELECT CASE WHEN pg_catalog.bool_and(reltuples >= 0) THEN pg_catalog.sum(reltuples)::float8 ELSE -1 END, \
                        pg_catalog.sum(relpages)::float8 FROM pg_catalog.pg_class WHERE oid IN {} AND relkind = 'r'",
                crate::tree::self_and_descendants_sql(1)
            ),
            Some(1),
            &[t.relid.into()],
        )?;
        r.first().get_two::<f64, f64>()
    })
    .or_raise("reading pg_class");
    let (reltuples, relpages) = (reltuples.unwrap_or(-1.0), relpages.unwrap_or(0.0));
    let per_block = if reltuples > 0.0 && relpages > 0.0 {
        reltuples / relpages
    } else if blocks > 0 {
        let percent = (12800.0 / blocks as f64).min(100.0);
        let n = spi::one::<i64>(
            &format!("SELECT pg_catalog.count(*) FROM {} TABLESAMPLE pg_catalog.system ({percent})", crate::tree::scan_target(t.relid, &t.sql())),
            &[],
        )
        .unwrap_or(0);
        n as f64 * 100.0 / percent / blocks as f64
    } else {
        0.0
    };
    let per_block = per_block.max(1.0);
    let estimate = if reltuples > 0.0 { reltuples as i64 } else { (per_block * blocks as f64) as i64 };
    (estimate, per_block)
}

/// Column `attnum`'s own default as SQL (deparsed under the caller's
/// search_path), if it has one.
pub fn column_default(relid: pg_sys::Oid, attnum: i16) -> Option<String> {
    spi::one::<String>(
        "SELECT pg_catalog.pg_get_expr(adbin, adrelid) FROM pg_catalog.pg_attrdef \
          WHERE adrelid OPERATOR(pg_catalog.=) $1 AND adnum OPERATOR(pg_catalog.=) $2",
        &[relid.into(), attnum.into()],
    )
}

/// Column `attnum`'s default as SQL (deparsed under the caller's pinned
/// search_path) — its own, or else its domain's — when it has one that is
/// not volatile: what `SET col = DEFAULT` may evaluate in another column's
/// place without side effects.
pub fn stable_default(relid: pg_sys::Oid, attnum: i16) -> Option<String> {
    let (sql, tree) = spi::first_row(
        "SELECT coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), pg_catalog.pg_get_expr(ty.typdefaultbin, 0)), \
                coalesce(d.adbin, ty.typdefaultbin)::text \
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid \
           LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid AND d.adnum OPERATOR(pg_catalog.=) a.attnum \
          WHERE a.attrelid = $1 AND a.attnum = $2",
        &[relid.into(), attnum.into()],
        |r| Ok((r.get::<String>(1)?, r.get::<String>(2)?)),
    )?;
    let (sql, tree) = (sql?, std::ffi::CString::new(tree?).ok()?);
    let volatile = unsafe { pg_sys::contain_volatile_functions(pg_sys::stringToNode(tree.as_ptr()) as *mut pg_sys::Node) };
    (!volatile).then_some(sql)
}

/// What Citus makes of `relid`, when Citus is installed and the table is in
/// its metadata (pg_dist_partition): read from Citus's catalog by name, so
/// zdm does not depend on Citus.
pub fn citus_table(relid: pg_sys::Oid) -> Option<String> {
    spi::one::<bool>("SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL", &[]).filter(|&b| b)?;
    let method = spi::one::<String>(
        "SELECT partmethod::text FROM pg_catalog.pg_dist_partition WHERE logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
        &[relid.into()],
    )?;
    Some(match method.as_str() {
        "n" => "a Citus reference or Citus-managed local table".to_string(),
        _ => "a Citus distributed table".to_string(),
    })
}

/// Function `funcid` is zdm's own `zdm.<name>` (a function of that name in
/// another schema is not).
pub fn is_zdm_function(funcid: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    unsafe {
        let (own, schema) = (pg_sys::get_func_name(funcid), pg_sys::get_namespace_name(pg_sys::get_func_namespace(funcid)));
        !own.is_null() && !schema.is_null() && std::ffi::CStr::from_ptr(own) == name && std::ffi::CStr::from_ptr(schema) == c"zdm"
    }
}
