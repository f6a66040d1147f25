//! The calls that act on an existing migration of any kind: contract,
//! abort, and finding a migration's id from its table and column. Each kind's
//! own steps are in its `Operation` (src/ops/); `engine::lifecycle` checks
//! rights and phases.

use crate::engine::lifecycle;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Finish a migration: a rename's old column goes, the new one keeps its
/// default, NOT NULL and checks; a type change swaps its columns.
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

/// Undo a migration: a rename's or type change's trigger and new column go;
/// a constraint or index migration drops what it added.
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
