use crate::catalog::{self, as_catalog_owner, Step};
use crate::ops::constraint::{self as constraints, Request};
use crate::errors::{raise, Code};
use crate::introspect;
use crate::spi::{self, ident, literal};
use crate::engine::{jobs, locking};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

// This kind, for zdm.status (sql/catalog.sql: zdm.kinds).
pgrx::extension_sql!(
    r#"INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES ('not_null', false, NULL), ('check', false, NULL), ('foreign_key', false, NULL);"#,
    name = "kind_constraints",
    requires = ["catalog"],
);

/// An in-flight migration of this kind on this table for `key` (the column
/// for not_null, the constraint name otherwise): calling again resumes it.
fn in_flight(relid: pg_sys::Oid, kind: &str, key: &str) -> Option<(i64, String)> {
    as_catalog_owner(|| {
        spi::first_row(
            "SELECT id, object_name::text FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = $2 \
               AND phase IN ('expanded', 'backfilling', 'backfilled') \
               AND CASE WHEN $2 = 'not_null' THEN old_column::text ELSE object_name::text END = $3 \
             ORDER BY id DESC LIMIT 1",
            &[relid.into(), kind.into(), key.into()],
            |r| Ok((r.get::<i64>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
        )
    })
}

fn constraint_exists(relid: pg_sys::Oid, name: &str) -> bool {
    spi::one::<bool>("SELECT true FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2", &[relid.into(), name.into()])
        .is_some()
}

/// An in-flight rename on this table that is still filling one of `columns`
/// (any new column when `columns` is None): the constraint must wait for it.
fn filling_rename(relid: pg_sys::Oid, columns: Option<&[String]>) -> Option<i64> {
    let cols: Option<Vec<String>> = columns.map(|c| c.to_vec());
    as_catalog_owner(|| {
        spi::one::<i64>(
            "SELECT max(id) FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = 'rename' \
               AND phase IN ('expanded', 'backfilling') AND ($2::text[] IS NULL OR new_column::text = ANY($2))",
            &[relid.into(), cols.into()],
        )
    })
}

fn new_request(id: i64, kind: &str, relid: pg_sys::Oid, column: Option<String>, name: String, definition: String, ref_relid: Option<pg_sys::Oid>) -> Request {
    let depends_on = match kind {
        "not_null" => filling_rename(relid, Some(std::slice::from_ref(column.as_ref().unwrap_or(&String::new())))),
        _ => filling_rename(relid, None),
    };
    if let Some(dep) = depends_on {
        pgrx::notice!("zdm migration {id}: starts once the backfill of zdm migration {dep} on the same table is complete");
    }
    Request {
        id,
        kind: kind.into(),
        relid: relid.to_u32(),
        column,
        constraint_name: name,
        definition,
        ref_relid: ref_relid.map(|o| o.to_u32()),
        started_by: spi::one::<String>("SELECT current_user::text", &[]).unwrap_or_default(),
        search_path: spi::one::<String>("SELECT pg_catalog.current_setting('search_path')", &[]).unwrap_or_default(),
        depends_on,
        lock: crate::engine::locking::LockPolicy::current(),
    }
}

/// Inside a transaction block (or above READ COMMITTED) the steps cannot run
/// before the caller commits: they are queued and run right after it.
fn must_schedule() -> bool {
    let in_block = unsafe { pg_sys::IsTransactionBlock() };
    in_block
        || spi::one::<String>("SELECT current_setting('transaction_isolation')", &[]).as_deref() != Some("read committed")
}

/// Run the migration's steps now (autocommit) or after commit (transaction
/// block). Returns the migration id.
fn start(req: Request) -> i64 {
    let id = req.id;
    if must_schedule() {
        constraints::record(&req, false);
        jobs::launch_after_commit(id);
        pgrx::notice!(
            "zdm migration {id}: runs in the background once this transaction commits; follow it with SELECT zdm.wait({id}) or zdm.status"
        );
        return id;
    }
    run_now(&req);
    id
}

/// Autocommit: hand the request to a worker through a DSM segment (it cannot
/// see our uncommitted rows), wait for it, and report its outcome.
fn run_now(req: &Request) {
    let json = serde_json::to_vec(req).unwrap_or_default();
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    unsafe {
        let seg = pg_sys::dsm_create(json.len(), 0);
        std::ptr::copy_nonoverlapping(json.as_ptr(), pg_sys::dsm_segment_address(seg) as *mut u8, json.len());
        let handle = pg_sys::dsm_segment_handle(seg);
        let extra = format!("{db} 0 {} {handle} {}", req.kind, json.len());
        match jobs::register_worker(req.id, &req.kind, &extra, true) {
            Ok(worker) => {
                let _ = worker.wait_for_shutdown();
            }
            Err(e) => {
                pg_sys::dsm_detach(seg);
                raise(
                    Code::ERRCODE_INSUFFICIENT_RESOURCES,
                    format!("could not start a background worker for zdm migration {}: {e}", req.id),
                    "Raise max_worker_processes (needs a restart) or retry when other background workers are done.",
                );
            }
        }
        pg_sys::dsm_detach(seg);
    }
    // Our worker is gone; another one (the launcher's) may still be at it.
    loop {
        let row = as_catalog_owner(|| {
            spi::first_row(
                &format!(
                    "SELECT m.phase, j.state, {alive} FROM zdm.migrations m JOIN zdm.jobs j ON j.migration_id = m.id WHERE m.id = $1",
                    alive = jobs::WORKER_ALIVE
                ),
                &[req.id.into()],
                |r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<bool>(3)?.unwrap_or(false),
                    ))
                },
            )
        });
        let Some((phase, state, alive)) = row else {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("the zdm worker for migration {} ended before recording it", req.id),
                "Check the server log, then call it again.",
            )
        };
        if phase == "contracted" {
            return;
        }
        if state == "failed" {
            constraints::raise_if_failed(req.id);
        }
        if state == "cancelled" {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm migration {} was cancelled in phase {phase}", req.id),
                format!("Call it again to resume from the step it reached, or zdm.abort({}) to remove what it added.", req.id),
            );
        }
        if !alive {
            raise(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm migration {} was interrupted in phase {phase} (its worker ended)", req.id),
                format!("Call it again to resume from the step it reached, or zdm.abort({}) to remove what it added.", req.id),
            );
        }
        locking::interruptible_sleep(Duration::from_millis(100));
    }
}

fn log_noop(id: i64, detail: &str) {
    catalog::log_step(Step { migration: id, step: "no-op", duration_ms: 0.0, lock_wait_ms: None, lock_attempts: None, detail: Some(detail.into()) });
}

/// End with `col` NOT NULL without holding ACCESS EXCLUSIVE through a scan:
/// a NOT VALID clause (engine::steps::not_null_clause) → VALIDATE → NOT NULL,
/// each step in its own transaction.
#[pg_extern(sql = "
CREATE FUNCTION zdm.validate_not_null(tbl regclass, col name) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.validate_not_null(regclass, name) IS
  'Make a column NOT NULL without a long lock: NOT VALID check, VALIDATE, SET NOT NULL, each step its own transaction; returns the migration id';
")]
fn validate_not_null(tbl: pg_sys::Oid, col: &CStr) -> i64 {
    let col = super::name_arg(col, "col");
    let table = introspect::owned_table(tbl);
    let Some(column) = introspect::column(tbl, &col) else {
        raise(Code::ERRCODE_UNDEFINED_COLUMN, format!("column {} of table {} does not exist", ident(&col), table.sql()), "Check the column name.")
    };
    let (id, name) = match in_flight(tbl, "not_null", &col) {
        Some(found) => found,
        None if column.not_null => {
            let id = catalog::next_id();
            let req = new_request(id, "not_null", tbl, Some(col.clone()), String::new(), String::new(), None);
            constraints::record(&req, false);
            catalog::set_phase(id, catalog::Phase::Contracted);
            jobs::finish_for_migration(id, "completed");
            log_noop(id, &format!("column {} is already NOT NULL", ident(&col)));
            return id;
        }
        None => {
            let id = catalog::next_id();
            (id, spi::truncate_identifier(format!("zdm_{id}_{col}_not_null")))
        }
    };
    let def = crate::engine::steps::not_null_clause(&col);
    start(new_request(id, "not_null", tbl, Some(col), name, def, None))
}

/// Add a CHECK constraint without a long lock: NOT VALID, then VALIDATE.
#[pg_extern(sql = "
CREATE FUNCTION zdm.add_check(tbl regclass, constraint_name name, expression text) RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.add_check(regclass, name, text) IS
  'Add CHECK (expression) without a long lock: NOT VALID under a brief lock, then VALIDATE in its own transaction; returns the migration id';
")]
fn add_check(tbl: pg_sys::Oid, constraint_name: &CStr, expression: &str) -> i64 {
    // The expression's names resolve with the caller's search_path (kept
    // with the request); zdm's own SQL runs with the pinned one, like every
    // other zdm function (which pin it with a SET clause).
    // Only this statement runs with the caller's search_path (a qualified
    // function, no operator): everything else is pinned.
    let caller_path = spi::one::<String>("SELECT pg_catalog.current_setting('search_path')", &[]).unwrap_or_default();
    crate::security::pinned_search_path(|| {
        let table = introspect::owned_table(tbl);
        require_single_expression(expression);
        // Parse analysis against the table, as the table owner (security-
        // restricted) with the caller's search_path: unknown columns or
        // functions and non-boolean results are refused here, before anything
        // is recorded. Rolled back, so no lock on the table outlives it (the
        // worker needs one).
        let probe = format!("SELECT FROM ONLY {} WHERE false AND NOT ({expression}\n)", table.sql());
        crate::security::as_owner(introspect::table_owner(tbl), || {
            let outcome = crate::subxact::rolled_back(|| {
                spi::exec_args("SELECT pg_catalog.set_config('search_path', $1, true)", &[caller_path.as_str().into()]);
                spi::exec(&probe);
            });
            if let Err(e) = outcome {
                e.rethrow(); // inside as_owner: a custom SQLSTATE stays visible
            }
        });
        add_check_pinned(&table, constraint_name, expression, caller_path)
    })
}

fn add_check_pinned(table: &introspect::Table, constraint_name: &CStr, expression: &str, caller_path: String) -> i64 {
    let name = super::name_arg(constraint_name, "constraint_name");
    let tbl = table.relid;
    let id = match in_flight(tbl, "check", &name) {
        Some((id, _)) => id,
        None => {
            if constraint_exists(tbl, &name) {
                raise(Code::ERRCODE_DUPLICATE_OBJECT, format!("constraint {} of table {} already exists", ident(&name), table.sql()), "Pick another constraint name.");
            }
            catalog::next_id()
        }
    };
    let mut req = new_request(id, "check", tbl, None, name, format!("CHECK ({expression}\n)"), None);
    req.search_path = caller_path;
    start(req)
}

/// The expression must be exactly one SQL expression: it is spliced into
/// `CHECK (...)`, so `true); DROP TABLE t; --` must never get through. Only
/// the raw parser runs here — no catalog access, so no lock on the table
/// (the worker that adds the constraint must not wait for its caller).
fn require_single_expression(expression: &str) {
    let refuse = || -> ! {
        raise(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("{} is not a single SQL expression", literal(expression)),
            "Pass one boolean expression over the table's columns, e.g. 'price > 0'.",
        )
    };
    // The newline ends a trailing `--` comment before the closing parenthesis.
    let sql = std::ffi::CString::new(format!("SELECT ({expression}\n)")).unwrap_or_else(|_| refuse());
    // A parse error is a refusal too (in a subtransaction, rolled back).
    let single = crate::subxact::rolled_back(|| {
        if crate::parse::sole_expression(&sql, pg_sys::RawParseMode::RAW_PARSE_DEFAULT).is_none() {
            refuse();
        }
    });
    if single.is_err() {
        refuse();
    }
}

const ON_DELETE: [&str; 5] = ["NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"];

/// Add a FOREIGN KEY without a long lock: NOT VALID, then VALIDATE.
/// The table's owner, who runs the ALTER, must be allowed to reference the
/// columns (REFERENCES, and USAGE on their schema), and they must not be a
/// system catalog's — checked before the worker locks the table (as ALTER
/// TABLE does, before its own check).
fn refuse_unreferenceable(tbl: pg_sys::Oid, table_sql: &str, ref_tbl: pg_sys::Oid, ref_sql: &str, ref_cols: &[String]) {
    let owner = introspect::table_owner(tbl);
    let owner_sql = spi::one::<String>("SELECT pg_catalog.quote_ident(rolname::text) FROM pg_catalog.pg_roles WHERE oid = $1", &[owner.into()])
        .unwrap_or_default();
    let system = spi::one::<bool>(
        "SELECT relnamespace IN ('pg_catalog'::pg_catalog.regnamespace, 'pg_toast'::pg_catalog.regnamespace) FROM pg_catalog.pg_class WHERE oid = $1",
        &[ref_tbl.into()],
    );
    if system == Some(true) {
        raise(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("table {ref_sql} is a system catalog"), "A foreign key cannot reference a system catalog.");
    }
    let schema = spi::one::<bool>(
        "SELECT pg_catalog.has_schema_privilege($1, relnamespace, 'USAGE') FROM pg_catalog.pg_class WHERE oid = $2",
        &[owner.into(), ref_tbl.into()],
    );
    for c in ref_cols {
        let may = schema == Some(true)
            && spi::one::<bool>("SELECT pg_catalog.has_column_privilege($1, $2, $3, 'REFERENCES')", &[owner.into(), ref_tbl.into(), c.as_str().into()])
                == Some(true);
        if !may {
            raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("role {owner_sql}, the owner of table {table_sql}, may not reference column {} of table {ref_sql}", ident(c)),
                format!("Grant it: GRANT REFERENCES ({}) ON {ref_sql} TO {owner_sql} (and USAGE on the schema), then call again.", ident(c)),
            );
        }
    }
}

#[pg_extern(sql = "
CREATE FUNCTION zdm._add_foreign_key(tbl regclass, columns text[], ref_tbl regclass, ref_columns text[], on_delete text, constraint_name text)
RETURNS bigint VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
CREATE FUNCTION zdm.add_foreign_key(tbl regclass, columns name[], ref_tbl regclass, ref_columns name[],
                                    on_delete text DEFAULT NULL, constraint_name name DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$ SELECT zdm._add_foreign_key(tbl, columns::text[], ref_tbl, ref_columns::text[], on_delete, constraint_name::text) $$;
COMMENT ON FUNCTION zdm.add_foreign_key(regclass, name[], regclass, name[], text, name) IS
  'Add a FOREIGN KEY without a long lock: NOT VALID under a brief lock, then VALIDATE in its own transaction; returns the migration id';
")]
fn _add_foreign_key(
    tbl: Option<pg_sys::Oid>,
    columns: Option<Vec<Option<String>>>,
    ref_tbl: Option<pg_sys::Oid>,
    ref_columns: Option<Vec<Option<String>>>,
    on_delete: Option<String>,
    constraint_name: Option<String>,
) -> i64 {
    let null = |what: &str| -> ! {
        raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{what} must not be NULL"), "Pass the table, its columns, the referenced table and its columns.")
    };
    let (Some(tbl), Some(ref_tbl)) = (tbl, ref_tbl) else { null("tbl and ref_tbl") };
    let names = |v: Option<Vec<Option<String>>>, what: &str| -> Vec<String> {
        let v = v.unwrap_or_else(|| null(what));
        if v.is_empty() || v.iter().any(|c| c.as_deref().is_none_or(str::is_empty)) {
            raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("{what} must list one or more column names"), "e.g. ARRAY['customer_id']");
        }
        v.into_iter().flatten().collect()
    };
    let (cols, ref_cols) = (names(columns, "columns"), names(ref_columns, "ref_columns"));
    let table = introspect::owned_table(tbl);
    if cols.len() != ref_cols.len() {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("columns has {} name(s) but ref_columns has {}", cols.len(), ref_cols.len()),
            "List one referenced column per referencing column.",
        );
    }
    let ref_sql = spi::one::<String>(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[ref_tbl.into()],
    )
    .unwrap_or_default();
    for (rel, sql, list) in [(tbl, table.sql(), &cols), (ref_tbl, ref_sql.clone(), &ref_cols)] {
        for c in list {
            if introspect::column(rel, c).is_none() {
                raise(Code::ERRCODE_UNDEFINED_COLUMN, format!("column {} of table {sql} does not exist", ident(c)), "Check the column names.");
            }
        }
    }
    refuse_unreferenceable(tbl, &table.sql(), ref_tbl, &ref_sql, &ref_cols);
    let on_delete = match on_delete {
        None => String::new(),
        Some(a) => {
            let upper = a.trim().to_uppercase();
            if !ON_DELETE.contains(&upper.as_str()) {
                raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("on_delete must be one of {}, got {}", ON_DELETE.join(", "), literal(&a)), "e.g. on_delete => 'CASCADE'");
            }
            format!(" ON DELETE {upper}")
        }
    };
    let name = constraint_name.filter(|n| !n.is_empty()).unwrap_or_else(|| spi::truncate_identifier(format!("{}_{}_fkey", table.name, cols.join("_"))));
    let list = |v: &[String]| v.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let def = format!("FOREIGN KEY ({}) REFERENCES {ref_sql} ({}){on_delete}", list(&cols), list(&ref_cols));
    let id = match in_flight(tbl, "foreign_key", &name) {
        Some((id, _)) => id,
        None => {
            if constraint_exists(tbl, &name) {
                raise(Code::ERRCODE_DUPLICATE_OBJECT, format!("constraint {} of table {} already exists", ident(&name), table.sql()), "Pick another constraint_name.");
            }
            catalog::next_id()
        }
    };
    start(new_request(id, "foreign_key", tbl, None, name, def, Some(ref_tbl)))
}
