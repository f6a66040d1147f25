use crate::catalog;
use crate::errors::{raise, Code};
use crate::spi::{self, ident, literal};
use crate::ops::index;
use crate::{introspect, security};
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CString;

// This kind, for zdm.status (sql/catalog.sql: zdm.kinds).
pgrx::extension_sql!(
    r#"INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES ('create_index', false, NULL), ('drop_index', false, NULL);"#,
    name = "kind_index",
    requires = ["catalog"],
);

unsafe extern "C-unwind" {
    // parser/parse_utilcmd.h (not in pgrx's bindings): the parse analysis
    // CREATE INDEX itself runs, without building anything.
    fn transformIndexStmt(relid: pg_sys::Oid, stmt: *mut pg_sys::IndexStmt, query: *const std::ffi::c_char) -> *mut pg_sys::IndexStmt;
}

/// Parse `definition`: exactly one named `CREATE INDEX` statement. Returns
/// the table (resolved with the caller's search_path, no lock) and the index
/// name; refuses anything else with 42601 / 22023 / 42P01 before anything runs.
fn parse_definition(definition: &str) -> (pg_sys::Oid, String) {
    let refuse = || -> ! {
        raise(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("{} is not a single CREATE INDEX statement", literal(definition)),
            "Pass one statement, e.g. 'CREATE UNIQUE INDEX users_email_key ON users (email)'; zdm builds it CONCURRENTLY.",
        )
    };
    let sql = CString::new(definition).unwrap_or_else(|_| refuse());
    let relid = Cell::new(pg_sys::InvalidOid);
    let name: Cell<Option<String>> = Cell::new(None);
    let parsed = crate::subxact::rolled_back(|| unsafe {
        let list = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() || (*list).length != 1 {
            refuse();
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt as *mut pg_sys::IndexStmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_IndexStmt {
            refuse();
        }
        if !(*stmt).idxname.is_null() {
            name.set(Some(std::ffi::CStr::from_ptr((*stmt).idxname).to_string_lossy().into_owned()));
        }
        relid.set(pg_sys::RangeVarGetRelidExtended(
            (*stmt).relation,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK as u32,
            None,
            std::ptr::null_mut(),
        ));
    });
    if parsed.is_err() {
        refuse();
    }
    let Some(name) = name.take() else {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{} does not name the index", literal(definition)),
            "Name it (CREATE INDEX my_index ON ...): zdm follows the build by that name.",
        )
    };
    if relid.get() == pg_sys::InvalidOid {
        raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("the table of {} does not exist", literal(definition)),
            "Check the table name and your search_path.",
        );
    }
    (relid.get(), name)
}

/// Parse analysis of the definition against the table (columns, expressions,
/// predicate), as the owner with the caller's search_path, in a rolled-back
/// subtransaction: nothing stays locked, nothing is built.
fn analyse(definition: &str, relid: pg_sys::Oid, caller_path: &str) {
    let sql = CString::new(definition).unwrap_or_default();
    security::as_owner(introspect::table_owner(relid), || {
        let outcome = crate::subxact::rolled_back(|| unsafe {
            spi::exec_args("SELECT pg_catalog.set_config('search_path', $1, true)", &[caller_path.into()]);
            pg_sys::LockRelationOid(relid, pg_sys::AccessShareLock as i32);
            let list = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
            let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
            // Guarded: an ERROR from the parser becomes a Rust panic here.
            let stmt = pg_sys::ffi::pg_guard_ffi_boundary(|| transformIndexStmt(relid, (*raw).stmt as *mut pg_sys::IndexStmt, sql.as_ptr()));
            // Plain column names are only checked when the index is built.
            for list in [(*stmt).indexParams, (*stmt).indexIncludingParams] {
                if list.is_null() {
                    continue;
                }
                for i in 0..(*list).length as usize {
                    let elem = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::IndexElem;
                    if elem.is_null() || (*elem).name.is_null() {
                        continue;
                    }
                    if pg_sys::get_attnum(relid, (*elem).name) == pg_sys::InvalidAttrNumber as i16 {
                        let col = std::ffi::CStr::from_ptr((*elem).name).to_string_lossy().into_owned();
                        raise(
                            Code::ERRCODE_UNDEFINED_COLUMN,
                            format!("column {} of table {} does not exist", ident(&col), introspect::migratable_table(relid).sql()),
                            "Check the column names of the index definition.",
                        );
                    }
                }
            }
        });
        if let Err(e) = outcome {
            e.rethrow();
        }
    });
}

/// Build an index concurrently, from inside any transaction: checked now,
/// built by a worker after commit (retried after an INVALID build). Returns
/// the migration id; `zdm.wait(id)` follows it.
#[pg_extern(sql = "
CREATE FUNCTION zdm.create_index(definition text) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.create_index(text) IS
  'Build an index CONCURRENTLY in a background worker once the calling transaction commits (one CREATE INDEX statement, named); returns the migration id';
")]
fn create_index(definition: &str) -> i64 {
    // Only this statement and the C-level name lookup use the caller's
    // search_path; zdm's own SQL is pinned.
    let caller_path = spi::one::<String>("SELECT pg_catalog.current_setting('search_path')", &[]).unwrap_or_default();
    let (relid, name) = parse_definition(definition);
    security::pinned_search_path(|| {
        let table = introspect::owned_table(relid);
        if let Some(id) = index::in_flight(relid, "create_index", &name) {
            pgrx::notice!("zdm migration {id} is already building index {}", ident(&name));
            return id;
        }
        let taken = spi::one::<bool>(
            "SELECT true FROM pg_catalog.pg_class c WHERE c.relname = $1 \
               AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = $2)",
            &[name.as_str().into(), relid.into()],
        );
        if taken.is_some() {
            raise(
                Code::ERRCODE_DUPLICATE_TABLE,
                format!("relation {} already exists in the schema of {}", ident(&name), table.sql()),
                "Pick another index name, or drop the existing index first (zdm.drop_index).",
            );
        }
        analyse(definition, relid, &caller_path);
        let id = catalog::next_id();
        index::queue(id, "create_index", relid, &name, Some(definition), &caller_path);
        id
    })
}

/// Drop an index concurrently, from inside any transaction (after commit).
#[pg_extern(sql = "
CREATE FUNCTION zdm.drop_index(index regclass) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.drop_index(regclass) IS
  'Drop an index CONCURRENTLY in a background worker once the calling transaction commits; returns the migration id';
")]
fn drop_index(index: pg_sys::Oid) -> i64 {
    let row = spi::first_row(
        "SELECT c.relkind::text, c.relname::text, i.indrelid, \
                (SELECT con.conname::text FROM pg_catalog.pg_constraint con WHERE con.conindid = c.oid AND con.contype IN ('p', 'u', 'x') LIMIT 1) \
           FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid WHERE c.oid = $1",
        &[index.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(3)?,
                r.get::<String>(4)?,
            ))
        },
    );
    // 'I': a partitioned table's index (dropped in one brief step: PostgreSQL
    // cannot drop it concurrently).
    let Some((_, name, Some(relid), constraint)) = row.filter(|r| r.0 == "i" || r.0 == "I") else {
        raise(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("relation with OID {} is not an index", index.to_u32()),
            "Pass an index name, e.g. zdm.drop_index('users_email_idx').",
        )
    };
    let parent = spi::one::<String>(
        "SELECT inhparent::pg_catalog.regclass::text FROM pg_catalog.pg_inherits WHERE inhrelid = $1",
        &[index.into()],
    );
    if let Some(parent) = parent {
        raise(
            Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("index {} is a partition of index {parent}", ident(&name)),
            format!("Drop {parent} itself (zdm.drop_index('{parent}')); the index of every partition goes with it."),
        );
    }
    let table = introspect::owned_table(relid);
    if let Some(constraint) = constraint {
        raise(
            Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("index {} of {} backs constraint {}", ident(&name), table.sql(), ident(&constraint)),
            "Drop the constraint instead (ALTER TABLE ... DROP CONSTRAINT); its index goes with it.",
        );
    }
    if let Some(id) = index::in_flight(relid, "drop_index", &name) {
        pgrx::notice!("zdm migration {id} is already dropping index {}", ident(&name));
        return id;
    }
    let id = catalog::next_id();
    index::queue(id, "drop_index", relid, &name, None, "pg_catalog, pg_temp");
    id
}
