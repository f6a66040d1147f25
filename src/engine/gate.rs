//! The gate before a job's next step: it opens when the job may work
//! (`JobRow::held` says why not) and has a share of zdm.max_workers
//! (`capacity::take`). While held the job is parked, holding no share;
//! where a launcher serves the database the worker gives its slot back and
//! the launcher starts the job again later. Used by the batch loop when a
//! batch finds the job held, and between build and validation steps.

use super::{capacity, jobs};
use super::process::{reload_config_if_asked, set_activity, sleep_ms, transaction};

/// True: go on. False: the job was cancelled, failed or completed
/// meanwhile, or it is parked and the launcher starts it again.
pub fn open(id: i64) -> bool {
    loop {
        reload_config_if_asked();
        let held = match transaction(|| jobs::load_row(id).map(|job| (job.active(), job.held(), job.lock_policy()))) {
            Ok(Some((true, held, policy))) => {
                // The step that follows runs under the job's settings as they are now.
                super::locking::refresh(policy);
                held
            }
            Ok(_) => return false, // gone, or cancelled, failed, completed
            Err(e) => {
                // (a deadlock with a claimant, a catalog hiccup): look again
                set_activity(&format!("zdm migration {id}: reading its job failed ({e}); retrying"));
                sleep_ms(1000.0);
                continue;
            }
        };
        // Open: take a share of zdm.max_workers back if the job was parked.
        let reason = match held {
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
        if transaction(capacity::launcher_serves_here).unwrap_or(false) {
            pgrx::log!("zdm migration {id}: {reason}; the zdm launcher starts it again when it can run");
            return false;
        }
        set_activity(&format!("zdm migration {id}: {reason}"));
        sleep_ms(1000.0);
    }
}
