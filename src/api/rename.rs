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
    let id = rename::expand(tbl, &old, &new);
    if background {
        // Queued in this transaction; the worker starts its work after commit.
        jobs::queue(id, &jobs::Options::default());
        if let Err(e) = jobs::launch_worker(id, true) {
            pgrx::warning!(
                "zdm migration {id}: backfill queued but not started ({e}); the zdm launcher will start it, or call zdm.start_backfill({id})"
            );
        }
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
