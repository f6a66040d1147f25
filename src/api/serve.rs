//! Every database served: `CREATE EXTENSION zdm` (and the upgrade) asks the
//! supervisor to start a launcher here once the transaction commits.

use pgrx::prelude::*;

#[pg_extern(sql = "
CREATE FUNCTION zdm._serve_this_database() RETURNS void VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
REVOKE ALL ON FUNCTION zdm._serve_this_database() FROM PUBLIC;
COMMENT ON FUNCTION zdm._serve_this_database() IS
  'zdm: ask the supervisor for a launcher in this database when the transaction commits (called by CREATE EXTENSION zdm)';
")]
fn _serve_this_database() {
    crate::engine::supervisor::wake_at_commit();
}

pgrx::extension_sql!(
    "SELECT zdm._serve_this_database();",
    name = "serve_this_database_at_install",
    requires = [_serve_this_database],
    finalize,
);
