use crate::engine::jobs;
use crate::errors::{raise, Code};
use crate::ops::update;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

// This kind, for zdm.status (sql/catalog.sql: zdm.kinds): no contract, the
// job completes by itself.
pgrx::extension_sql!(
    r#"INSERT INTO zdm.kinds (kind, adds_column, ready_step) VALUES ('update', false, NULL);"#,
    name = "kind_update",
    requires = ["catalog"],
);

/// `UPDATE tbl SET <set> WHERE <where>` as a background job in throttled
/// batches over the table's blocks; starts when the calling transaction
/// commits. Returns the job id (= migration id).
#[pg_extern(sql = "
CREATE FUNCTION zdm.update_in_batches(tbl regclass, set text, \"where\" text DEFAULT NULL, batch_size int DEFAULT NULL,
    pause_ms int DEFAULT NULL, target_batch_ms int DEFAULT NULL, max_replica_lag interval DEFAULT NULL,
    lock_timeout interval DEFAULT NULL, statement_timeout interval DEFAULT NULL, run_after timestamptz DEFAULT NULL,
    windows text[] DEFAULT NULL, workers int DEFAULT NULL, max_rows_per_second int DEFAULT NULL)
RETURNS bigint VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION zdm.update_in_batches(regclass, text, text, int, int, int, interval, interval, interval, timestamptz, text[], int, int) IS
  'Run UPDATE tbl SET set WHERE where as a background job in throttled batches over the table''s blocks, as its owner; returns the job id (= migration id)';
")]
#[allow(clippy::too_many_arguments)]
fn update_in_batches(
    tbl: Option<pg_sys::Oid>,
    set: Option<&str>,
    r#where: Option<&str>,
    batch_size: Option<i32>,
    pause_ms: Option<i32>,
    target_batch_ms: Option<i32>,
    max_replica_lag: Option<Interval>,
    lock_timeout: Option<Interval>,
    statement_timeout: Option<Interval>,
    run_after: Option<TimestampWithTimeZone>,
    windows: Option<Vec<String>>,
    workers: Option<i32>,
    max_rows_per_second: Option<i32>,
) -> i64 {
    let (Some(tbl), Some(set)) = (tbl, set) else {
        raise(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tbl and set must not be NULL",
            "Call zdm.update_in_batches('orders', set => 'status = lower(status)', \"where\" => 'status <> lower(status)').",
        )
    };
    let opts = super::jobs::options(batch_size, pause_ms, target_batch_ms, max_replica_lag, lock_timeout, statement_timeout, run_after, windows, workers, max_rows_per_second);
    let caller_path = crate::spi::one::<String>("SELECT pg_catalog.current_setting('search_path')", &[]).unwrap_or_default();
    crate::security::pinned_search_path(|| {
        let (id, created) = update::start(tbl, set, r#where, &caller_path);
        if created {
            jobs::queue(id, &opts);
            jobs::launch_after_commit(id);
        }
        id
    })
}
