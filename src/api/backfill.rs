use crate::catalog::{self, Phase, Step};
use crate::errors::{raise, Code};
use crate::{backfill, rename};
use pgrx::prelude::*;
use std::time::Instant;

/// One batch in the caller's transaction; returns the rows it updated, 0 when
/// the backfill is complete.
#[pg_extern(sql = "
CREATE FUNCTION zdm.backfill_batch(migration bigint, batch_size int DEFAULT 1000)
RETURNS bigint STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
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
    run_backfill_batch(migration, batch_size)
}

pub fn run_backfill_batch(migration: i64, batch_size: i32) -> i64 {
    let started = Instant::now();
    // The row lock serializes concurrent callers (and the background worker).
    let mut m = catalog::load_or_raise(migration, true);
    rename::require_backfillable(&m);
    if m.phase == Phase::Backfilled {
        return 0;
    }
    if m.phase == Phase::Expanded {
        catalog::set_phase(m.id, Phase::Backfilling);
    }
    loop {
        let out = backfill::run_batch(&m, batch_size);
        if out.done {
            catalog::set_phase(m.id, Phase::Backfilled);
            catalog::log_step(Step {
                migration: m.id,
                step: "backfill complete",
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                lock_wait_ms: None,
                lock_attempts: None,
                detail: Some(format!("{} rows backfilled in total", m.rows_done)),
            });
            return 0;
        }
        if out.rows > 0 {
            return out.rows;
        }
        // A range with nothing left to do: move on within this call, so 0 keeps meaning "complete".
        m = catalog::load_or_raise(migration, false);
    }
}
