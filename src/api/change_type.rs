use crate::engine::jobs;
use crate::ops::change_type;
use pgrx::prelude::*;
use std::ffi::CStr;

// This kind, for zdm.status (sql/catalog.sql: zdm.kinds).
pgrx::extension_sql!(
    r#"INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES
    ('change_type', true, 'ready: SELECT zdm.contract(%1$s) swaps in the new type (the column keeps its name)');"#,
    name = "kind_change_type",
    requires = ["catalog"],
);

/// Start changing `col` to `new_type`: adds the shadow column and the
/// convert trigger in the caller's transaction. Returns the migration id.
#[pg_extern(sql = "
CREATE FUNCTION zdm.expand_change_type(tbl regclass, col name, new_type text, using_expr text DEFAULT NULL, background boolean DEFAULT true)
RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.expand_change_type(regclass, name, text, text, boolean) IS
  'Expand: add a shadow column of new_type kept equal to the conversion of col (using_expr, default the assignment cast) by a trigger, and schedule the background backfill; contract swaps it in; returns the migration id';
")]
fn expand_change_type(tbl: Option<pg_sys::Oid>, col: Option<&CStr>, new_type: Option<&str>, using_expr: Option<&str>, background: Option<bool>) -> i64 {
    let (Some(tbl), Some(col), Some(new_type)) = (tbl, col, new_type) else {
        crate::errors::raise(
            crate::errors::Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tbl, col and new_type must not be NULL",
            "Call zdm.expand_change_type('orders', 'id', 'bigint').",
        )
    };
    // Names in new_type and using_expr resolve with the caller's search_path
    // (as in ALTER TABLE); zdm's own SQL runs pinned.
    let caller_path = crate::spi::one::<String>("SELECT pg_catalog.current_setting('search_path')", &[]).unwrap_or_default();
    let col = super::name_arg(col, "col");
    // PostgreSQL's own rule (the one zdm.plan and zdm.safe_ddl apply): a
    // binary-compatible change needs no shadow column at all.
    if using_expr.is_none() && crate::ddl::plain_type_change_rewrites(tbl, &col, new_type) == Some(false) {
        pgrx::notice!(
            "zdm: PostgreSQL changes column {} to {new_type} without rewriting the table (binary-compatible): a plain ALTER TABLE … ALTER COLUMN … TYPE needs only a brief ACCESS EXCLUSIVE lock (bounded by zdm.safe_ddl); zdm goes on with a shadow column and a backfill",
            crate::spi::ident(&col)
        );
    }
    crate::security::pinned_search_path(|| {
        let (id, created) = change_type::expand(tbl, &col, new_type, using_expr, &caller_path);
        // A repeated call leaves the job as it is (its worker may be running).
        queue(id, created && background.unwrap_or(true));
        id
    })
}

fn queue(id: i64, background: bool) {
    if background {
        // Queued in this transaction; the worker starts its work after commit.
        jobs::queue(id, &jobs::Options::default());
        jobs::launch_after_commit(id);
    }
}
