//! Background jobs: one per migration in `zdm.jobs`.

use crate::catalog::as_catalog_owner;
use crate::spi;

/// Mark a migration's job as finished (contract, abort) if it has one.
pub fn finish_for_migration(id: i64, state: &str) {
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET state = $2, finished_at = clock_timestamp(), throttle_reason = NULL \
              WHERE migration_id = $1 AND state NOT IN ('completed', 'failed', 'cancelled')",
            &[id.into(), state.into()],
        )
    });
}
