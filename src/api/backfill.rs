use crate::engine::lifecycle;
use crate::errors::{raise, Code};

/// Batches in the caller's transaction until one updates rows; returns the
/// rows updated, 0 when the backfill is complete.
#[pgrx::pg_extern(sql = "
CREATE FUNCTION zdm.backfill_batch(migration bigint, batch_size int DEFAULT 1000)
RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.backfill_batch(bigint, int) IS
  'Backfill in the caller''s transaction until a batch updates rows; returns rows updated, 0 when complete';
")]
fn backfill_batch(migration: i64, batch_size: i32) -> i64 {
    if batch_size < 1 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("batch_size must be at least 1, got {batch_size}"),
            "A batch of 1000 to 10000 rows keeps each transaction short.",
        );
    }
    lifecycle::backfill_batch(migration, batch_size)
}
