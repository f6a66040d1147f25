use crate::ops::column::backfill;
use crate::{catalog, security};
use crate::errors::{raise, Code};
use pgrx::prelude::*;

/// One batch in the caller's transaction; returns the rows it updated, 0 when
/// the backfill is complete.
#[pg_extern(sql = "
CREATE FUNCTION zdm.backfill_batch(migration bigint, batch_size int DEFAULT 1000)
RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.backfill_batch(bigint, int) IS
  'Backfill one batch in the caller''s transaction; returns rows updated, 0 when complete';
")]
fn backfill_batch(migration: i64, batch_size: i32) -> i64 {
    if batch_size < 1 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("batch_size must be at least 1, got {batch_size}"),
            "A batch of 1000 to 10000 rows keeps each transaction short.",
        );
    }
    // Rights first (no lock taken for anyone else); then the batch runs as
    // the migration's owner, security-restricted, like the worker's.
    let m = catalog::load_for(migration, "backfill", false);
    let owner = security::resolve_owner(&m.owner_name, migration);
    security::as_owner(owner, || backfill::batch_until_rows(migration, batch_size))
}
