use crate::engine::jobs;
use crate::ops::rename;
use pgrx::prelude::*;
use std::ffi::CStr;

// This kind, for zdm.status (sql/catalog.sql: zdm.kinds).
pgrx::extension_sql!(
    r#"INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES
    ('rename', true, 'ready for new code: deploy the version that uses %2$I; once no version uses %3$I, SELECT zdm.contract(%1$s)');"#,
    name = "kind_rename",
    requires = ["catalog"],
);

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
