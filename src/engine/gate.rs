//! The gate between a job's steps: wait while the job is paused, outside its
//! windows, or the migration it depends on (a rename still filling the
//! column a constraint reads) has not finished its backfill — parked,
//! holding no share of zdm.max_workers (`capacity`); stop when it was
//! cancelled.

use super::{capacity, jobs};
use super::process::{reload_config_if_asked, set_activity, sleep_ms, transaction};
use crate::catalog::as_catalog_owner;
use crate::spi;

/// True: go on. False: the job was cancelled, failed or completed meanwhile.
pub fn open(id: i64) -> bool {
    loop {
        reload_config_if_asked();
        let row = transaction(|| {
            as_catalog_owner(|| {
                spi::first_row(
                    "SELECT j.state, d.id, d.phase FROM zdm.jobs j LEFT JOIN zdm.migrations d ON d.id = j.depends_on \
                      WHERE j.migration_id = $1",
                    &[id.into()],
                    |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?, r.get::<String>(3)?)),
                )
            })
        });
        let Ok(Some((state, dep, dep_phase))) = row else { return false };
        let reason = match (state.as_str(), dep_phase.as_deref()) {
            ("paused", _) => Some("paused by zdm.pause()".to_string()),
            ("queued" | "running", Some("expanded" | "backfilling")) => {
                Some(format!("waiting for the backfill of zdm migration {} to complete", dep.unwrap_or_default()))
            }
            ("queued" | "running", _) => transaction(|| jobs::load_row(id).and_then(|j| super::window::outside(&j.windows))).ok().flatten(),
            _ => return false, // cancelled, failed, completed
        };
        // Open: take a share of zdm.max_workers back if the job was parked.
        let reason = match reason {
            None => match transaction(|| capacity::take(id)) {
                Ok(None) => return true,
                Ok(Some(reason)) => reason,
                // (a deadlock with a second claimant, say): try again
                Err(e) => format!("taking a zdm worker share failed ({e}); retrying"),
            },
            Some(reason) => {
                let _ = transaction(|| capacity::park(id, &reason));
                reason
            }
        };
        // Parked: where a launcher serves this database, give the slot back;
        // it starts the job again (the steps resume where they stood).
        if transaction(capacity::launcher_serves_here).unwrap_or(false) {
            pgrx::log!("zdm migration {id}: {reason}; the zdm launcher starts it again when it can run");
            return false;
        }
        set_activity(&format!("zdm migration {id}: {reason}"));
        sleep_ms(1000.0);
    }
}
