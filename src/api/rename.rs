use crate::engine::{jobs, lifecycle};
use crate::ops::rename;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Start renaming `old_column` to `new_column`: adds the new column and the
/// sync trigger in the caller's transaction. Returns the migration id.
#[pg_extern(sql = "
CREATE FUNCTION zdm.expand_rename(tbl regclass, old_column name, new_column name, background boolean DEFAULT true)
RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.expand_rename(regclass, name, name, boolean) IS
  'Expand: add new_column (same type, collation, comment, checks) kept in sync with old_column by a trigger, and schedule the background backfill (unless background => false); returns the migration id';
")]
fn expand_rename(tbl: pg_sys::Oid, old_column: &CStr, new_column: &CStr, background: bool) -> i64 {
    let old = super::name_arg(old_column, "old_column");
    let new = super::name_arg(new_column, "new_column");
    let (id, created) = rename::expand(tbl, &old, &new);
    // A repeated call leaves the job as it is (its worker may be running).
    if background && created {
        // Queued in this transaction; the worker starts its work after commit.
        jobs::queue(id, &jobs::Options::default());
        jobs::launch_after_commit(id);
    }
    id
}

/// Finish a backfilled rename: the old column goes, the new one keeps its
/// default, NOT NULL and checks.
#[pg_extern(sql = "
CREATE FUNCTION zdm.contract(migration bigint)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.contract(bigint) IS
  'Contract: validate carried constraints, move default and NOT NULL, drop the trigger and the old column';
")]
fn contract(migration: i64) {
    lifecycle::contract(migration)
}

/// Undo an expand: drop the trigger and the new column.
#[pg_extern(sql = "
CREATE FUNCTION zdm.abort(migration bigint)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.abort(bigint) IS
  'Abort: stop the backfill, drop the sync trigger and the new column; the old column is untouched';
")]
fn abort(migration: i64) {
    lifecycle::abort(migration)
}

/// The migration that changes a column, for a later migration that knows
/// the table and column but not the id: the one in flight on it (by old or
/// new column name, or the name of a constraint or of an index that
/// create_index / drop_index builds or drops), else the latest.
#[pg_extern(sql = "
CREATE FUNCTION zdm.migration_id(tbl regclass, col name, kind text DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.migration_id(regclass, name, text) IS
  'The id of the migration in flight on tbl.col (old or new column name, or the name of a constraint or an index it builds or drops), else the latest one; 42P08 if several are in flight (pass kind), 42704 if none';
")]
fn migration_id(tbl: Option<pg_sys::Oid>, col: Option<&CStr>, kind: Option<&str>) -> Option<i64> {
    let (tbl, col) = (tbl?, col?);
    let col = super::name_arg(col, "col");
    Some(crate::catalog::migration_on(tbl, &col, kind.map(|k| vec![k.to_string()])))
}

/// `zdm.contract(zdm.migration_id(tbl, col))`.
#[pg_extern(sql = "
CREATE FUNCTION zdm.contract(tbl regclass, col name)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.contract(regclass, name) IS
  'Contract the migration on tbl.col (see zdm.migration_id); a no-op with a NOTICE if it is contracted already';
")]
fn contract_column(tbl: pg_sys::Oid, col: &CStr) {
    let col = super::name_arg(col, "col");
    // Only kinds that have a contract step (a later NOT NULL on the column
    // does not stand in the way of re-running the contract).
    let kinds = crate::engine::kinds_with_contract();
    lifecycle::contract(crate::catalog::migration_on(tbl, &col, Some(kinds)))
}

/// `zdm.abort(zdm.migration_id(tbl, col))`.
#[pg_extern(sql = "
CREATE FUNCTION zdm.abort(tbl regclass, col name)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.abort(regclass, name) IS
  'Abort the migration on tbl.col (see zdm.migration_id); a no-op with a NOTICE if it is aborted already';
")]
fn abort_column(tbl: pg_sys::Oid, col: &CStr) {
    let col = super::name_arg(col, "col");
    lifecycle::abort(crate::catalog::migration_on(tbl, &col, None))
}
