//! The guard: event triggers owned by the extension that refuse DDL which
//! would break an in-flight migration, with 55000 naming the migration.
//!
//! * `ddl_command_start`: renaming the table or moving it to another schema,
//!   renaming or changing the type of a column under migration, adding or
//!   removing inheritance on the table (either side), and creating a table
//!   that inherits from it.
//!   Disabling, re-enabling (ENABLE turns ALWAYS into ORIGIN), replacing
//!   (CREATE OR REPLACE TRIGGER) or renaming a zdm sync trigger, or changing
//!   how all triggers fire,
//!   changing the table's owner (whom the migration runs as), a default or
//!   identity on a rename's new column (its default is zdm's mark of an
//!   INSERT that left it out), the default of a rename's old column (the
//!   mark carries its value), and attaching the table as a partition, too.
//! * `sql_drop`: dropping the table, a column under migration or a sync
//!   trigger by any path
//!   (DROP TABLE, DROP COLUMN, DROP SCHEMA … CASCADE, DROP OWNED …). The
//!   drop has happened by then; the error rolls it back.
//!
//! On a partitioned table every partition is covered (a migration is found
//! from a partition through its ancestors): its columns, defaults and
//! trigger clone are protected like the parent's. `CREATE TABLE … PARTITION
//! OF` is allowed (the new partition gets the trigger), `ATTACH PARTITION`
//! only of an empty table, DETACH and DROP of a partition freely (its rows
//! leave the table; its trigger clone goes with it).
//!
//! zdm's own DDL (contract dropping the old column, abort dropping the new
//! one) runs inside `allow_zdm_ddl`, a flag private to this backend that no
//! SQL can set.
//!
//! Table names in the statement resolve with the session's search_path (as
//! the DDL itself will: a C-level lookup that runs no code); every query the
//! guard runs pins its own (`as_catalog_owner`, `table_sql`), since the
//! guard fires in anyone's session, a superuser's included.

use crate::catalog::as_catalog_owner_any_version as as_catalog_owner;
use crate::errors::{raise, Code};
use crate::spi::{self, ident};
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::CStr;

thread_local! {
    static ZDM_DDL: Cell<u32> = const { Cell::new(0) };
}

/// Run zdm's own DDL past the guard.
pub fn allow_zdm_ddl<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ZDM_DDL.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    ZDM_DDL.with(|d| d.set(d.get() + 1));
    let _reset = Reset;
    f()
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_zdm_guard() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `zdm.guard()`, the event trigger function.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn zdm_guard(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe { pg_sys::submodules::panic::pgrx_extern_c_guard(move || guard(fcinfo)) }
}

unsafe fn guard(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "zdm.guard() can only be called as an event trigger",
                "zdm installs it itself; do not call it directly.",
            );
        }
        if ZDM_DDL.with(|d| d.get()) > 0 {
            return pg_sys::Datum::from(0);
        }
        let data = context as *mut pg_sys::EventTriggerData;
        let event = CStr::from_ptr((*data).event).to_bytes();
        match event {
            b"ddl_command_start" => check_statement((*data).parsetree),
            b"sql_drop" => check_drops(),
            _ => {}
        }
        pg_sys::Datum::from(0)
    }
}

unsafe fn relid_of(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    if rv.is_null() {
        return pg_sys::InvalidOid;
    }
    unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK as u32,
            None,
            std::ptr::null_mut(),
        )
    }
}

unsafe fn str_of(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() { None } else { Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()) }
}

unsafe fn list_items(list: *mut pg_sys::List) -> Vec<*mut std::ffi::c_void> {
    if list.is_null() {
        return Vec::new();
    }
    unsafe { (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).ptr_value).collect() }
}

unsafe fn check_statement(node: *mut pg_sys::Node) {
    if node.is_null() {
        return;
    }
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_RenameStmt => {
                let s = node as *mut pg_sys::RenameStmt;
                match (*s).renameType {
                    pg_sys::ObjectType::OBJECT_TABLE => protect_table(relid_of((*s).relation), "rename"),
                    pg_sys::ObjectType::OBJECT_COLUMN => {
                        if let Some(col) = str_of((*s).subname) {
                            protect_column(relid_of((*s).relation), &col, "rename");
                        }
                    }
                    pg_sys::ObjectType::OBJECT_TRIGGER => {
                        if str_of((*s).subname).is_some_and(|n| is_migration_trigger(&n)) {
                            protect_table(relid_of((*s).relation), "rename the zdm sync trigger of");
                        }
                    }
                    _ => {}
                }
            }
            pg_sys::NodeTag::T_AlterObjectSchemaStmt => {
                let s = node as *mut pg_sys::AlterObjectSchemaStmt;
                if (*s).objectType == pg_sys::ObjectType::OBJECT_TABLE {
                    protect_table(relid_of((*s).relation), "move to another schema");
                }
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                let s = node as *mut pg_sys::AlterTableStmt;
                let relid = relid_of((*s).relation);
                for cmd in list_items((*s).cmds) {
                    let cmd = cmd as *mut pg_sys::AlterTableCmd;
                    match (*cmd).subtype {
                        pg_sys::AlterTableType::AT_AlterColumnType => {
                            if let Some(col) = str_of((*cmd).name) {
                                protect_column(relid, &col, "change the type of");
                            }
                        }
                        pg_sys::AlterTableType::AT_DropColumn => {
                            if let Some(col) = str_of((*cmd).name) {
                                protect_column(relid, &col, "drop");
                            }
                        }
                        // A sync trigger that does not fire loses writes, and
                        // one enabled ORIGIN (ENABLE TRIGGER turns ALWAYS into
                        // that) misses what replication applies.
                        pg_sys::AlterTableType::AT_DisableTrig
                        | pg_sys::AlterTableType::AT_EnableReplicaTrig
                        | pg_sys::AlterTableType::AT_EnableTrig => {
                            if str_of((*cmd).name).is_some_and(|n| is_migration_trigger(&n)) {
                                protect_table(relid, "change how the zdm sync trigger fires on");
                            }
                        }
                        pg_sys::AlterTableType::AT_DisableTrigAll
                        | pg_sys::AlterTableType::AT_DisableTrigUser
                        | pg_sys::AlterTableType::AT_EnableTrigAll
                        | pg_sys::AlterTableType::AT_EnableTrigUser => {
                            protect_table(relid, "change how all triggers fire (the zdm sync trigger's too) on");
                        }
                        // A default or identity on the new column makes every
                        // old-version INSERT arrive with a non-NULL new value,
                        // which wins over what was written to the old one.
                        pg_sys::AlterTableType::AT_ColumnDefault => {
                            if let Some(col) = str_of((*cmd).name) {
                                protect_migration_column(relid, &col, Side::New, "change the default or identity of");
                                // The new column's default carries the old
                                // one's value for SET DEFAULT (trigger/written.rs).
                                protect_migration_column(relid, &col, Side::RenamedOld, "change the default of");
                            }
                        }
                        pg_sys::AlterTableType::AT_AddIdentity
                        | pg_sys::AlterTableType::AT_SetIdentity
                        | pg_sys::AlterTableType::AT_DropIdentity => {
                            if let Some(col) = str_of((*cmd).name) {
                                protect_migration_column(relid, &col, Side::New, "change the default or identity of");
                            }
                        }
                        pg_sys::AlterTableType::AT_AttachPartition => {
                            let part = (*cmd).def as *mut pg_sys::PartitionCmd;
                            if !part.is_null() {
                                let attached = relid_of((*part).name);
                                protect_table(attached, "attach as a partition");
                                refuse_loaded_partition(relid, attached);
                            }
                        }
                        // The migration runs as the owner recorded at expand.
                        pg_sys::AlterTableType::AT_ChangeOwner => protect_table(relid, "change the owner of"),
                        pg_sys::AlterTableType::AT_AddInherit | pg_sys::AlterTableType::AT_DropInherit => {
                            protect_table(relid, "change the inheritance of");
                            protect_table(relid_of((*cmd).def as *mut pg_sys::RangeVar), "change the inheritance of");
                        }
                        _ => {}
                    }
                }
            }
            pg_sys::NodeTag::T_GrantStmt => mirror_column_privileges(node as *mut pg_sys::GrantStmt),
            // CREATE SCHEMA … CREATE TABLE …: its commands fire no event
            // trigger of their own.
            pg_sys::NodeTag::T_CreateSchemaStmt => {
                for elt in list_items((*(node as *mut pg_sys::CreateSchemaStmt)).schemaElts) {
                    check_statement(elt as *mut pg_sys::Node);
                }
            }
            // CREATE OR REPLACE TRIGGER on a sync trigger's name would swap
            // its function, timing or condition.
            pg_sys::NodeTag::T_CreateTrigStmt => {
                let s = node as *mut pg_sys::CreateTrigStmt;
                if (*s).replace && str_of((*s).trigname).is_some_and(|n| is_migration_trigger(&n)) {
                    protect_table(relid_of((*s).relation), "replace the zdm sync trigger of");
                }
            }
            // CREATE TABLE … PARTITION OF: an empty partition, which gets
            // the clone of the sync trigger and stays in sync (pg_partman's
            // maintenance creates them on a schedule).
            pg_sys::NodeTag::T_CreateStmt if !(*(node as *mut pg_sys::CreateStmt)).partbound.is_null() => {
                refuse_partition_defaults(node as *mut pg_sys::CreateStmt);
            }
            // A foreign table as a partition (or child) of a table under
            // migration: its rows are out of the backfill's and the
            // trigger's reach.
            pg_sys::NodeTag::T_CreateForeignTableStmt => {
                let s = node as *mut pg_sys::CreateForeignTableStmt;
                for parent in list_items((*s).base.inhRelations) {
                    protect_table(relid_of(parent as *mut pg_sys::RangeVar), "create a foreign table partition of");
                }
            }
            pg_sys::NodeTag::T_CreateStmt => {
                let s = node as *mut pg_sys::CreateStmt;
                for parent in list_items((*s).inhRelations) {
                    protect_table(relid_of(parent as *mut pg_sys::RangeVar), "create an inheritance child of");
                }
            }
            _ => {}
        }
    }
}

/// A column privilege granted or revoked on either column of an in-flight
/// rename applies to both: the same statement runs for the other column,
/// as the same role (so the same grantor, and the same refusal if it may
/// not). Without it a REVOKE on the old column would leave the privilege on
/// the new one — and the sync trigger writes the old column on a writer's
/// behalf.
unsafe fn mirror_column_privileges(s: *mut pg_sys::GrantStmt) {
    unsafe {
        if (*s).targtype != pg_sys::GrantTargetType::ACL_TARGET_OBJECT || (*s).objtype != pg_sys::ObjectType::OBJECT_TABLE {
            return;
        }
        let privileges: Vec<(Option<String>, Vec<String>)> = list_items((*s).privileges)
            .into_iter()
            .map(|p| {
                let p = p as *mut pg_sys::AccessPriv;
                let cols = list_items((*p).cols).into_iter().filter_map(|c| str_of((*(c as *mut pg_sys::String)).sval)).collect();
                (str_of((*p).priv_name), cols)
            })
            .filter(|(_, cols): &(Option<String>, Vec<String>)| !cols.is_empty())
            .collect();
        if privileges.is_empty() {
            return; // table-wide privileges cover both columns already
        }
        // Only the column privileges PostgreSQL knows go into the statement
        // zdm runs (a quoted identifier could hold any text); PostgreSQL
        // refuses the others itself.
        let known = |p: &Option<String>| p.as_deref().is_none_or(|p| matches!(p, "select" | "insert" | "update" | "references"));
        if !privileges.iter().all(|(p, _)| known(p)) {
            return;
        }
        let grantees: Vec<String> = list_items((*s).grantees).into_iter().map(|g| role_sql(g as *mut pg_sys::RoleSpec)).collect();
        for rv in list_items((*s).objects) {
            let relid = relid_of(rv as *mut pg_sys::RangeVar);
            if relid == pg_sys::InvalidOid {
                continue;
            }
            let pairs = rename_pairs(relid);
            let mirrored: Vec<String> = privileges
                .iter()
                .filter_map(|(privilege, cols)| {
                    let other: Vec<String> = cols
                        .iter()
                        .filter_map(|c| pairs.iter().find_map(|(o, n)| if c == o { Some(n) } else if c == n { Some(o) } else { None }))
                        .filter(|c| !cols.contains(c))
                        .map(|c| ident(c))
                        .collect();
                    (!other.is_empty()).then(|| format!("{} ({})", privilege.as_deref().unwrap_or("ALL PRIVILEGES"), other.join(", ")))
                })
                .collect();
            if mirrored.is_empty() {
                continue;
            }
            let grant = (*s).is_grant;
            let sql = format!(
                "{}{} {} ON TABLE {} {} {}{}{}{}",
                if grant { "GRANT" } else { "REVOKE" },
                if !grant && (*s).grant_option { " GRANT OPTION FOR" } else { "" },
                mirrored.join(", "),
                table_sql(relid),
                if grant { "TO" } else { "FROM" },
                grantees.join(", "),
                if grant && (*s).grant_option { " WITH GRANT OPTION" } else { "" },
                if (*s).grantor.is_null() { String::new() } else { format!(" GRANTED BY {}", role_sql((*s).grantor)) },
                if (*s).behavior == pg_sys::DropBehavior::DROP_CASCADE { " CASCADE" } else { "" },
            );
            // As the role running the statement, with zdm's pinned search_path.
            crate::security::pinned_search_path(|| allow_zdm_ddl(|| spi::exec(&sql)));
        }
    }
}

unsafe fn role_sql(r: *mut pg_sys::RoleSpec) -> String {
    unsafe {
        match (*r).roletype {
            pg_sys::RoleSpecType::ROLESPEC_PUBLIC => "PUBLIC".into(),
            pg_sys::RoleSpecType::ROLESPEC_CURRENT_USER => "CURRENT_USER".into(),
            pg_sys::RoleSpecType::ROLESPEC_CURRENT_ROLE => "CURRENT_ROLE".into(),
            pg_sys::RoleSpecType::ROLESPEC_SESSION_USER => "SESSION_USER".into(),
            _ => ident(&str_of((*r).rolename).unwrap_or_default()),
        }
    }
}

/// (old, new) columns of the renames in flight on `relid`.
fn rename_pairs(relid: pg_sys::Oid) -> Vec<(String, String)> {
    as_catalog_owner(|| {
        spi::rows(
            "SELECT old_column::text, new_column::text FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = 'rename' \
               AND phase IN ('expanded', 'backfilling', 'backfilled')",
            &[relid.into()],
            |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
        )
    })
}

/// The first in-flight migration on `relid` or, for a partition, on the
/// partitioned table it belongs to (touching `column`, if given).
fn in_flight(relid: pg_sys::Oid, column: Option<&str>) -> Option<(i64, String)> {
    if relid == pg_sys::InvalidOid {
        return None;
    }
    as_catalog_owner(|| {
        spi::first_row(
            &format!(
                "SELECT id, kind FROM zdm.migrations WHERE relid::pg_catalog.oid IN {} \
                   AND phase IN ('expanded', 'backfilling', 'backfilled') \
                   AND ($2::text IS NULL OR $2 IN (old_column::text, new_column::text) OR $2 = ANY (reads_columns::text[])) ORDER BY id LIMIT 1",
                crate::tree::self_and_ancestors_sql(1)
            ),
            &[relid.into(), column.into()],
            |r| Ok((r.get::<i64>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
        )
    })
}

/// A migration's trigger: a rename's `zdm_sync_<id>`, a type change's
/// `zdm_convert_<id>`, an added column's `zdm_fill_<id>`.
fn is_migration_trigger(name: &str) -> bool {
    name.starts_with("zdm_sync_") || name.starts_with("zdm_convert_") || name.starts_with("zdm_fill_")
}

fn refuse(what: String, id: i64, kind: &str) -> ! {
    let finish = if crate::engine::find(kind).is_some_and(|op| op.has_contract()) {
        format!("finish it with zdm.contract({id})")
    } else {
        format!("let it finish (zdm.wait({id}))")
    };
    raise(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("cannot {what}: zdm migration {id} ({kind}) is in flight on it"),
        format!("Run this DDL after the migration: {finish}, or undo it with zdm.abort({id})."),
    )
}

fn table_sql(relid: pg_sys::Oid) -> String {
    crate::security::pinned_search_path(|| crate::catalog::current_table_sql(relid)).unwrap_or_default()
}

fn protect_table(relid: pg_sys::Oid, action: &str) {
    if let Some((id, kind)) = in_flight(relid, None) {
        let t = table_sql(relid);
        refuse(format!("{action} table {t}"), id, &kind);
    }
}

fn protect_column(relid: pg_sys::Oid, column: &str, action: &str) {
    if let Some((id, kind)) = in_flight(relid, Some(column)) {
        let t = table_sql(relid);
        refuse(format!("{action} column {} of table {t}", ident(column)), id, &kind);
    }
}

/// Which column of a migration `protect_migration_column` guards.
#[derive(Clone, Copy)]
enum Side {
    /// the column a rename or type change fills
    New,
    /// the column a rename takes its values from
    RenamedOld,
}

/// `column` as one side of an in-flight rename or type change.
fn protect_migration_column(relid: pg_sys::Oid, column: &str, side: Side, action: &str) {
    if relid == pg_sys::InvalidOid {
        return;
    }
    let (kinds, which) = match side {
        Side::New => ("'rename', 'change_type'", "new_column"),
        Side::RenamedOld => ("'rename'", "old_column"),
    };
    let hit = as_catalog_owner(|| {
        spi::first_row(
            &format!(
                "SELECT id, kind FROM zdm.migrations WHERE relid::pg_catalog.oid IN {} AND kind IN ({kinds}) \
                   AND phase IN ('expanded', 'backfilling', 'backfilled') AND {which}::text = $2 ORDER BY id LIMIT 1",
                crate::tree::self_and_ancestors_sql(1)
            ),
            &[relid.into(), column.into()],
            |r| Ok((r.get::<i64>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
        )
    });
    if let Some((id, kind)) = hit {
        let t = table_sql(relid);
        refuse(format!("{action} column {} of table {t}", ident(column)), id, &kind);
    }
}

/// sql_drop: a dropped table, or a dropped column, under migration.
/// ATTACH PARTITION onto a table under migration: the attached table's rows
/// were never written through the sync trigger, nor are they in the
/// backfill's plan, and defaults other than the parent's would hide the
/// marks the trigger reads. Allowed empty (its heap has no pages: TRUNCATE
/// empties it) with the parent's defaults on the migration's columns;
/// refused otherwise. Only for a caller who owns both tables (anyone else
/// fails in ATTACH itself), as that caller: its ACCESS EXCLUSIVE lock, which
/// ATTACH takes anyway, first, so that no row arrives after the look, and
/// the look reads sizes and the catalog only — no user data, no user code.
fn refuse_loaded_partition(parent: pg_sys::Oid, attached: pg_sys::Oid) {
    if attached == pg_sys::InvalidOid {
        return;
    }
    let Some((id, kind)) = in_flight(parent, None) else { return };
    crate::security::pinned_search_path(|| {
        let owns = spi::one::<bool>(
            "SELECT pg_catalog.pg_has_role(p.relowner, 'USAGE') AND pg_catalog.pg_has_role(a.relowner, 'USAGE') \
               FROM pg_catalog.pg_class p, pg_catalog.pg_class a WHERE p.oid OPERATOR(pg_catalog.=) $1 AND a.oid OPERATOR(pg_catalog.=) $2",
            &[parent.into(), attached.into()],
        );
        if owns != Some(true) {
            return; // ATTACH refuses it itself
        }
        // What ATTACH itself locks, by OID: the table (which keeps new
        // partitions out of it), then each of its partitions.
        let lock = |relid: pg_sys::Oid| unsafe { pg_sys::LockRelationOid(relid, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
        lock(attached);
        let partitions = spi::rows(
            &format!("SELECT t.relid FROM {} t WHERE t.relid OPERATOR(pg_catalog.<>) $1", crate::tree::partition_tree_sql(1)),
            &[attached.into()],
            |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
        );
        partitions.into_iter().for_each(lock);
        let t = table_sql(attached);
        if t.is_empty() {
            return; // dropped meanwhile: ATTACH fails on its own
        }
        let parent_sql = table_sql(parent);
        let refuse_attach = |why: String, hint: String| -> ! {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("cannot attach {t} as a partition of {parent_sql}: {why}, and zdm migration {id} ({kind}) is in flight on the table"),
                hint,
            )
        };
        let tree = crate::tree::partition_tree_sql(1);
        // Every relation of what is attached (a partitioned table brings its
        // partitions): no foreign table, no owner the migration's owner is
        // not a member of, no heap with pages.
        let (foreign, stranger, pages) = spi::first_row(
            &format!(
                "SELECT pg_catalog.string_agg(c.oid::pg_catalog.regclass::text, ', ') FILTER (WHERE c.relkind OPERATOR(pg_catalog.=) 'f'), \
                        pg_catalog.string_agg(c.oid::pg_catalog.regclass::text, ', ') \
                          FILTER (WHERE NOT pg_catalog.pg_has_role(root.relowner, c.relowner, 'USAGE')), \
                        pg_catalog.sum(pg_catalog.pg_relation_size(c.oid))::bigint \
                   FROM {tree} t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.relid \
                   JOIN pg_catalog.pg_class root ON root.oid OPERATOR(pg_catalog.=) $2"
            ),
            &[attached.into(), crate::tree::root_of(parent).into()],
            |r| Ok((r.get::<String>(1)?, r.get::<String>(2)?, r.get::<i64>(3)?.unwrap_or(0))),
        )
        .unwrap_or_default();
        if let Some(f) = foreign {
            refuse_attach(format!("{f} is a foreign table, whose rows zdm's backfill and trigger cannot reach"), format!("Attach it after zdm.contract({id}) or zdm.abort({id})."));
        }
        if let Some(who) = stranger {
            refuse_attach(
                format!("{who} is owned by a role the table's owner is not a member of (the migration works on every partition as that owner)"),
                format!("Make the table's owner own it (ALTER TABLE … OWNER TO), or attach it after zdm.contract({id})."),
            );
        }
        if pages > 0 {
            refuse_attach(
                "it holds rows (or had some: its heap is not empty)".into(),
                format!("Its rows were never kept in sync by the migration. Attach it after zdm.contract({id}) (or zdm.abort({id})); or create the partition empty (CREATE TABLE … PARTITION OF, or TRUNCATE it first) and insert its rows through the partitioned table."),
            );
        }
        // A rename's trigger reads zdm's marks from each partition's own
        // defaults on its two columns: every relation attached must have the
        // partitioned table's.
        let differs = as_catalog_owner(|| {
            spi::one::<String>(
                &format!(
                    "SELECT pg_catalog.string_agg(DISTINCT pg_catalog.format('%s.%I', t.relid::pg_catalog.regclass, c.col), ', ') \
                       FROM zdm.migrations m, LATERAL (VALUES (m.old_column::text), (m.new_column::text)) c(col), {tree} t \
                      WHERE m.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $2 AND m.kind OPERATOR(pg_catalog.=) 'rename' \
                        AND m.phase IN ('expanded', 'backfilling', 'backfilled') \
                        AND (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a \
                               ON a.attrelid OPERATOR(pg_catalog.=) d.adrelid AND a.attnum OPERATOR(pg_catalog.=) d.adnum \
                              WHERE d.adrelid OPERATOR(pg_catalog.=) $2 AND a.attname OPERATOR(pg_catalog.=) c.col) \
                            IS DISTINCT FROM \
                            (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a \
                               ON a.attrelid OPERATOR(pg_catalog.=) d.adrelid AND a.attnum OPERATOR(pg_catalog.=) d.adnum \
                              WHERE d.adrelid OPERATOR(pg_catalog.=) t.relid AND a.attname OPERATOR(pg_catalog.=) c.col)"
                ),
                &[attached.into(), crate::tree::root_of(parent).into()],
            )
        });
        if let Some(columns) = differs {
            refuse_attach(
                format!("its defaults on {columns} differ from the partitioned table's (zdm's sync trigger reads them)"),
                format!("Create the partition with CREATE TABLE … PARTITION OF (or CREATE TABLE … (LIKE {parent_sql} INCLUDING DEFAULTS)), or attach it after zdm.contract({id})."),
            );
        }
    })
}

/// CREATE TABLE … PARTITION OF a table under migration with its own default
/// on a migration's column: the partition's trigger would not see zdm's
/// marks (see refuse_loaded_partition).
unsafe fn refuse_partition_defaults(s: *mut pg_sys::CreateStmt) {
    unsafe {
        for parent in list_items((*s).inhRelations) {
            let relid = relid_of(parent as *mut pg_sys::RangeVar);
            let Some((id, kind)) = in_flight(relid, None) else { continue };
            let columns: Vec<String> = as_catalog_owner(|| {
                spi::rows(
                    "SELECT c.col FROM zdm.migrations m, LATERAL (VALUES (m.old_column::text), (m.new_column::text)) c(col) \
                      WHERE m.relid::pg_catalog.oid = $1 AND m.kind = 'rename' AND m.phase IN ('expanded', 'backfilling', 'backfilled')",
                    &[crate::tree::root_of(relid).into()],
                    |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
                )
            });
            for elt in list_items((*s).tableElts) {
                let node = elt as *mut pg_sys::Node;
                if (*node).type_ != pg_sys::NodeTag::T_ColumnDef {
                    continue;
                }
                let def = node as *mut pg_sys::ColumnDef;
                let Some(name) = str_of((*def).colname) else { continue };
                let has_default = !(*def).raw_default.is_null()
                    || !(*def).cooked_default.is_null()
                    || list_items((*def).constraints).into_iter().any(|c| {
                        let c = c as *mut pg_sys::Constraint;
                        matches!((*c).contype, pg_sys::ConstrType::CONSTR_DEFAULT | pg_sys::ConstrType::CONSTR_IDENTITY | pg_sys::ConstrType::CONSTR_GENERATED)
                    });
                if has_default && columns.contains(&name) {
                    refuse(format!("give partition column {} of table {} its own default", ident(&name), table_sql(relid)), id, &kind);
                }
            }
        }
    }
}

fn check_drops() {
    let hit = as_catalog_owner(|| {
        spi::first_row(
            "SELECT m.id, m.kind, d.object_type, d.object_identity \
               FROM pg_catalog.pg_event_trigger_dropped_objects() d \
               JOIN zdm.migrations m ON m.phase IN ('expanded', 'backfilling', 'backfilled') \
              WHERE (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND m.relid::oid = d.objid \
                     AND (d.objsubid = 0 OR d.address_names[pg_catalog.array_upper(d.address_names, 1)] \
                                            IN (m.old_column::text, m.new_column::text))) \
                 OR (d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
                     AND d.address_names[pg_catalog.array_upper(d.address_names, 1)] = m.trigger_name::text \
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                                      WHERE c.oid = m.relid::pg_catalog.oid AND c.relkind = 'p' \
                                        AND d.address_names[1:2] IS DISTINCT FROM ARRAY[n.nspname::text, c.relname::text])) \
              ORDER BY m.id LIMIT 1",
            &[],
            |r| {
                Ok((
                    r.get::<i64>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                ))
            },
        )
    });
    if let Some((id, kind, object_type, identity)) = hit {
        refuse(format!("drop {object_type} {identity}"), id, &kind);
    }
}
