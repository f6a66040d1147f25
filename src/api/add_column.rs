use crate::engine::jobs;
use crate::errors::{raise, Code};
use crate::ops::add_column::{self, Request};
use pgrx::prelude::*;
use std::ffi::CStr;

// This kind, for zdm.status (sql/catalog.sql: zdm.kinds).
pgrx::extension_sql!(
    r#"INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES
    ('add_column', true, 'ready: SELECT zdm.contract(%1$s) sets the default and NOT NULL of %2$I and drops the fill trigger');"#,
    name = "kind_add_column",
    requires = ["catalog"],
);

/// Add column `col` of `type`, filled from the row: expand in the caller's
/// transaction, the backfill in the background. Returns the migration id.
#[pg_extern(sql = "
CREATE FUNCTION zdm.add_column(tbl regclass, col name, type text, fill text DEFAULT NULL, not_null boolean DEFAULT false,
    default_expr text DEFAULT NULL, background boolean DEFAULT true)
RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.add_column(regclass, name, text, text, boolean, text, boolean) IS
  'Expand: add column col of type, kept filled with fill(row) by a trigger while old code writes, backfilled in the background; contract sets default_expr and NOT NULL without a long lock; returns the migration id';
")]
fn add_column(
    tbl: Option<pg_sys::Oid>,
    col: Option<&CStr>,
    r#type: Option<&str>,
    fill: Option<&str>,
    not_null: Option<bool>,
    default_expr: Option<&str>,
    background: Option<bool>,
) -> i64 {
    let (Some(tbl), Some(col), Some(type_text)) = (tbl, col, r#type) else {
        raise(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tbl, col and type must not be NULL",
            "Call zdm.add_column('orders', 'total_cents', 'bigint', fill => '(total * 100)::bigint', not_null => true).",
        )
    };
    // Names in type, fill and default_expr resolve with the caller's
    // search_path (as in ALTER TABLE); zdm's own SQL runs pinned.
    let caller_path = crate::spi::one::<String>("SELECT pg_catalog.current_setting('search_path')", &[]).unwrap_or_default();
    let col = super::name_arg(col, "col");
    crate::security::pinned_search_path(|| {
        let request = Request {
            relid: tbl,
            column: &col,
            type_text,
            fill,
            not_null: not_null.unwrap_or(false),
            default_expr,
            caller_path: &caller_path,
        };
        let (id, created) = add_column::expand(&request);
        // A repeated call leaves the job as it is (its worker may be running).
        if created && background.unwrap_or(true) {
            jobs::queue(id, &jobs::Options::default());
            jobs::launch_after_commit(id);
        }
        id
    })
}
