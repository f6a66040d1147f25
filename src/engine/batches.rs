//! The throttled batch loop of a backfill: one batch per transaction,
//!
//!   read options → honour pause / cancel / pause_all / run_after / replica
//!   lag → run the operation's batch as the migration's owner, under
//!   per-batch lock_timeout and statement_timeout → heartbeat, history.
//!
//! The pause after a batch follows the workload (`load`, unless
//! `zdm.adaptive_throttle` is off). A batch that fails with a retryable
//! error is tried again after a backoff with half the size, up to the job's
//! `max_attempts` (`locking`: the one retry policy); the size then adapts
//! toward `target_batch_ms`. Any other error
//! fails the job with the reason in `zdm.status`. The cursor itself is the
//! operation's (persisted in the batch's own transaction, so a batch and its
//! cursor commit or roll back together).
//!
//! A job with `workers => N` runs this loop in N processes: the leader (the
//! worker that claimed the job) starts N - 1 helpers and starts one again if
//! it dies while work is left; the operation keeps their batches disjoint.
//! Helpers stop when the leader is gone (the launcher resumes the job with a
//! new leader) or the job stops; the leader alone goes on to the builds and
//! validation once the backfill is complete.

use super::locking;
use crate::errors::{code_of, message_of};
use crate::subxact;
use super::process::{caught_transaction, reload_config_if_asked, set_activity, sleep_ms, transaction, with_statement_timeout};
use super::{capacity, gate, jobs, Operation, Share};
use crate::catalog::as_catalog_owner;
use crate::{guc, security, spi};
use pgrx::prelude::*;
use pgrx::bgworkers::{BackgroundWorkerStatus, DynamicBackgroundWorker};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Smallest batch the adaptive sizing steers to (unless asked for less).
const MIN_ADAPTIVE_BATCH: i32 = 100;
const MAX_ADAPTIVE_BATCH: i32 = 1_000_000;
/// How often the history is trimmed to `zdm.batch_history` rows.
const PRUNE_EVERY: i64 = 100;
/// Deadlocks in a row that zdm's bookkeeping may lose before the job fails.
const MAX_LOST_DEADLOCKS: i32 = 10;

thread_local! {
    /// Time waited since the last batch, and why: recorded with the next batch.
    static PENDING_WAIT: RefCell<(f64, Option<String>)> = const { RefCell::new((0.0, None)) };
}

/// Which process of the job runs the loop.
#[derive(Clone, Copy)]
pub enum Role {
    /// the worker that claimed the job (`zdm.jobs.worker_pid`)
    Leader,
    /// helper `slot` (1 ..) of a parallel backfill, started by `leader`
    Helper { slot: i32, leader: i32 },
}

/// How long a worker with nothing to take waits before looking again.
const IDLE_MS: f64 = 100.0;
/// A helper that stopped is started again at most this often.
const HELPER_RESTART_EVERY: Duration = Duration::from_secs(2);

enum Next {
    Continue { pause_ms: i32, reason: Option<String>, workers: i32, next_size: i32 },
    /// other workers hold the work left
    Idle { workers: i32 },
    /// the batch failed with a retryable error: again after `ms`, smaller
    Retry { reason: String, ms: f64 },
    Done,
    /// a throttle: wait, then try again
    Wait { ms: f64, reason: String },
    /// the job is held (paused, pause_all, run_after, outside its windows):
    /// the leader waits, helpers end and give their slots back
    Hold { reason: String },
    Stop,
}

fn wait(ms: f64, reason: String) -> Next {
    Next::Wait { ms, reason }
}

fn hold(reason: String) -> Next {
    Next::Hold { reason }
}

/// Run batches until the backfill is complete (true) or the job stopped:
/// cancelled, failed, or taken over (false).
pub fn run(migration: i64, op: &dyn Operation, name: &str, role: Role) -> bool {
    // Whom the work runs as: the owner's name resolved now, checked again
    // before every batch.
    let owner = match transaction(|| {
        let job = jobs::load_row(migration)?;
        Some((security::resolve_owner(&job.owner_name, migration), job.owner_name))
    }) {
        Ok(Some(owner)) => owner,
        Ok(None) => return false,
        Err(e) => {
            let _ = transaction(|| jobs::fail(migration, "backfill failed", &e));
            return false;
        }
    };
    let mut loop_state = LoopState::default();
    let mut batches: i64 = 0;
    let mut helpers = Helpers::default();
    // Held (paused, scheduled, outside a window): parked, no share of
    // zdm.max_workers; batches go on once the hold ends and a share is free.
    let mut held = false;
    loop {
        reload_config_if_asked();
        if held {
            // The gate parks the job until it may work and has a share again
            // (false: stopped, or the launcher starts it again later).
            if !gate::open(migration) {
                return false;
            }
            held = false;
        }
        set_activity(&format!("{name}: batch {}", batches + 1));
        let next = match caught_transaction(|| one_batch(migration, op, &owner, role, &mut loop_state)) {
            Ok(next) => {
                loop_state.lost_deadlocks = 0;
                next
            }
            // zdm's own bookkeeping lost a deadlock (`locking::lose_deadlocks`:
            // with DROP EXTENSION, an upgrade): the batch rolled back with it
            // and is tried again.
            Err(e) if matches!(
                code_of(&e),
                PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
            ) && loop_state.lost_deadlocks < MAX_LOST_DEADLOCKS =>
            {
                loop_state.lost_deadlocks += 1;
                loop_state.last_written = None; // (rolled back: not written)
                let ms = locking::retry_pause(loop_state.lost_deadlocks).as_secs_f64() * 1000.0;
                Next::Wait { ms, reason: format!("the batch was rolled back ({}); trying again", message_of(&e)) }
            }
            Err(e) => {
                // An error outside the batch itself (catalog, options): record it.
                let _ = transaction(|| jobs::fail(migration, "backfill failed", &message_of(&e)));
                Next::Stop
            }
        };
        if let (Role::Leader, Next::Continue { workers, .. } | Next::Idle { workers }) = (role, &next) {
            helpers.keep(migration, *workers, name);
        }
        // zdm.jobs is written here, after the batch committed, never inside
        // it: a batch holding the job's row would make the job's other
        // workers wait for it while they hold their rows' locks.
        match next {
            Next::Idle { .. } => {
                set_activity(&format!("{name}: waiting for a range (the other workers hold the rest)"));
                sleep_ms(IDLE_MS);
            }
            Next::Continue { pause_ms, reason, next_size, .. } => {
                batches += 1;
                let _ = transaction(|| batch_done(migration, next_size));
                if batches % PRUNE_EVERY == 0 {
                    let _ = transaction(|| prune_history(migration));
                }
                if pause_ms > 0 {
                    note_wait(pause_ms as f64, reason);
                    set_activity(&format!("{name}: pause_ms between batches"));
                    sleep_ms(pause_ms as f64);
                }
            }
            Next::Retry { reason, ms } => {
                let _ = transaction(|| {
                    jobs::set_throttle_reason(migration, Some(&reason));
                    jobs::set_current_batch_size(migration, loop_state.retry_size.unwrap_or(1));
                });
                set_activity(&format!("{name}: waiting: {reason}"));
                sleep_ms(ms);
            }
            Next::Hold { .. } if matches!(role, Role::Helper { .. }) => {
                // The leader starts it again when batches go on.
                return false;
            }
            Next::Hold { reason, .. } => {
                let _ = transaction(|| capacity::park(migration, &reason));
                note_wait(0.0, Some(reason));
                held = true;
            }
            Next::Wait { ms, reason } => {
                set_activity(&format!("{name}: waiting: {reason}"));
                // (bookkeeping, as in batch_done: no WAL flush of its own —
                // a cap waits so before nearly every batch)
                let _ = transaction(|| {
                    super::process::commit_without_waiting();
                    jobs::set_throttle_reason(migration, Some(&reason))
                });
                note_wait(ms, Some(reason));
                sleep_ms(ms);
            }
            Next::Stop => return false,
            Next::Done => {
                let _ = transaction(|| batch_done(migration, loop_state.last_size));
                return true;
            }
        }
    }
}

/// What the loop carries from one batch transaction to the next.
#[derive(Default)]
struct LoopState {
    /// failed attempts of the batch being retried, and its smaller size
    attempts: i32,
    retry_size: Option<i32>,
    last_size: i32,
    /// a helper: its leader's backend_start, to tell it from a reused pid
    leader_started: Option<String>,
    /// the CPU gate (`load::cpu_gate`): CPU time when the last batch or wait ended, and that batch's duration
    cpu_mark: Option<super::load::CpuTicks>,
    last_batch_ms: f64,
    /// the workload, looked at every 250 ms at most (`load::Sampler`)
    sampler: super::load::Sampler,
    /// when the last batch started and the rows it wrote (`max_rows_per_second`)
    last_written: Option<(Instant, i64)>,
    /// batch transactions in a row that lost a deadlock outside the batch
    lost_deadlocks: i32,
}

/// One attempt at one batch, in its own transaction (with the history row).
fn one_batch(migration: i64, op: &dyn Operation, owner: &(pg_sys::Oid, String), role: Role, st: &mut LoopState) -> Next {
    let Some(job) = jobs::load_row(migration) else { return Next::Stop };
    security::check_owner_unchanged(owner.0, &owner.1, migration);
    match role {
        Role::Leader if job.worker_pid != Some(unsafe { pg_sys::MyProcPid }) => {
            return Next::Stop; // another worker took the job over
        }
        Role::Helper { slot, leader } => {
            let same_leader = job.worker_pid == Some(leader)
                && job.worker_alive
                && *st.leader_started.get_or_insert_with(|| job.worker_started_at.clone()) == job.worker_started_at;
            if !same_leader || slot >= job.workers {
                return Next::Stop; // the leader is gone (the job resumes with a new one), or fewer workers are wanted
            }
        }
        _ => {}
    }
    if !job.active() {
        return Next::Stop; // cancelled, completed, failed
    }
    // Paused, pause_all, run_after, outside its windows: the same holds a
    // claim parks on.
    if let Some(reason) = job.held() {
        return hold(reason);
    }
    if let Some(max_lag) = job.max_replica_lag_ms {
        let lag = spi::one::<f64>(
            "SELECT coalesce(max(extract(epoch FROM replay_lag)) * 1000, 0)::float8 FROM pg_catalog.pg_stat_replication",
            &[],
        )
        .unwrap_or(0.0);
        if lag > max_lag {
            return wait(
                1000.0,
                format!("replica replay lag {:.1}s exceeds max_replica_lag {:.1}s", lag / 1000.0, max_lag / 1000.0),
            );
        }
    }
    if let Some(reason) = super::health::gate(migration) {
        return wait(1000.0, reason);
    }
    // The cap holds whatever the throttle allows, and with it off; waited
    // out a second at a time, so that a pause, a cancel or new options are
    // seen on the way.
    // (this worker's rows a second and largest batch under the cap)
    let cap = job.max_rows_per_second.map(|cap| (cap, rate_share(cap, job.workers)));
    if let (Some((cap, (share, _))), Some((started, rows))) = (cap, st.last_written) {
        let due = started + rate_gap(share, rows);
        let left = due.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            let ms = (left.as_secs_f64() * 1000.0).ceil();
            return wait(ms.min(1000.0), format!("max_rows_per_second {cap}: next batch in {ms:.0} ms"));
        }
    }
    if guc::ADAPTIVE_THROTTLE.get() && job.pause_ms > 0 {
        // (pause_ms = 0 asks for full speed: no gate)
        let waited = PENDING_WAIT.with(|w| w.borrow().0);
        if let Some((ms, reason)) = super::load::cpu_gate(&mut st.cpu_mark, st.last_batch_ms, waited, st.sampler.others(), job.pause_ms) {
            return wait(ms, reason);
        }
    }
    let mut size = st.retry_size.unwrap_or(job.batch_size);
    if let Some((_, (_, most))) = cap {
        size = size.min(most); // a cap set since the last batch
    }
    let share = Share { workers: job.workers, helper: matches!(role, Role::Helper { .. }), wait: false };
    let started = Instant::now();
    let outcome = subxact::attempt(|| {
        // The job's lock_timeout applies to the batch only (its own GUC nest
        // level), not to zdm's own catalog writes.
        security::as_owner(owner.0, || {
            locking::with_lock_timeout(job.lock_timeout_ms, || {
                with_statement_timeout(job.statement_timeout_ms, || op.backfill_batch(migration, size, share))
            })
        })
    });
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    (st.cpu_mark, st.last_batch_ms) = (super::load::cpu_ticks(), took_ms);
    if let Ok(out) = &outcome {
        st.last_written = Some((started, out.rows));
    }
    match outcome {
        Ok(out) if out.busy => Next::Idle { workers: job.workers },
        Ok(out) => {
            (st.attempts, st.retry_size) = (0, None);
            if out.done && out.blocks == 0 {
                st.last_size = size;
                return Next::Done;
            }
            record_batch(migration, &out, size, took_ms);
            let load = guc::ADAPTIVE_THROTTLE.get().then(|| st.sampler.sample(migration));
            let target = match load {
                Some(load) => super::load::target_batch_ms(job.target_batch_ms, load, job.pause_ms),
                None => job.target_batch_ms,
            };
            let mut next_size = next_batch_size(size, job.configured_batch_size, target, took_ms);
            if let Some((_, (_, most))) = cap {
                next_size = next_size.min(most);
            }
            st.last_size = next_size;
            if out.done {
                return Next::Done;
            }
            let (pause_ms, reason) = match load {
                Some(load) => super::load::pause(job.pause_ms, load, took_ms),
                None => (job.pause_ms, None),
            };
            Next::Continue { pause_ms, reason, workers: job.workers, next_size }
        }
        Err(e) if locking::retryable(code_of(&e)) => {
            st.attempts += 1;
            let error = message_of(&e);
            let smaller = (size / 2).max(1);
            if st.attempts >= job.max_attempts {
                // A restart begins with the smaller size.
                jobs::set_current_batch_size(migration, smaller);
                jobs::fail(migration, "backfill failed", &format!("gave up after {} attempts: {error}", st.attempts));
                return Next::Stop;
            }
            st.retry_size = Some(smaller);
            Next::Retry {
                reason: format!("batch attempt {} failed ({error}); retrying with batch size {smaller}", st.attempts),
                ms: locking::retry_pause(st.attempts).as_secs_f64() * 1000.0,
            }
        }
        Err(e) => {
            jobs::fail_with_code(migration, "backfill failed", &message_of(&e), Some(code_of(&e)));
            Next::Stop
        }
    }
}

/// After a batch committed: heartbeat, the size the next batch uses, and no
/// throttle reason (a wait before the next one sets its own).
fn batch_done(migration: i64, next_size: i32) {
    // Not worth a WAL flush of its own per batch: a crash loses only the
    // heartbeat (the batch and its cursor committed before, durably).
    super::process::commit_without_waiting();
    as_catalog_owner(|| {
        spi::exec_args(
            "UPDATE zdm.jobs SET heartbeat_at = clock_timestamp(), current_batch_size = $2, throttle_reason = NULL \
              WHERE migration_id = $1",
            &[migration.into(), next_size.max(1).into()],
        )
    });
}

/// A job's `max_rows_per_second`, shared by its `workers`: this worker's
/// rows a second, and its largest batch — a fifth of a second of that share,
/// so that the rows (and their WAL, which the workload's commits flush) come
/// steadily rather than in bursts. A latency-first job: the workload's tail
/// grows with the rows written a second, whatever CPU is spare.
pub fn rate_share(cap: i32, workers: i32) -> (f64, i32) {
    let share = cap.max(1) as f64 / workers.max(1) as f64;
    (share, (share / 5.0).floor().clamp(1.0, MAX_ADAPTIVE_BATCH as f64) as i32)
}

/// How long after a batch that wrote `rows` began the next one may begin,
/// at `share` rows a second. (A batch covers whole pages, so it may write
/// more rows than its size: the wait follows what it wrote.)
pub fn rate_gap(share: f64, rows: i64) -> Duration {
    Duration::from_secs_f64(rows.max(0) as f64 / share.max(f64::MIN_POSITIVE))
}

/// Adaptive sizing toward `target_batch_ms`: grow at most ×1.2 per batch,
/// shrink in proportion, clamp. Without a target, a size halved by a timeout
/// grows back toward the configured one.
pub fn next_batch_size(current: i32, configured: i32, target_ms: Option<i32>, took_ms: f64) -> i32 {
    let current = current.max(1) as f64;
    match target_ms {
        Some(target) => {
            let ratio = target as f64 / took_ms.max(0.1);
            let next = if ratio >= 1.0 { current * ratio.min(1.2) } else { current * ratio };
            let min = MIN_ADAPTIVE_BATCH.min(configured).max(1) as f64;
            next.clamp(min, MAX_ADAPTIVE_BATCH as f64).round() as i32
        }
        // (at least a row more: 1 × 1.2 rounds back to 1)
        None => (current * 1.2).max(current + 1.0).min(configured as f64).max(1.0).round() as i32,
    }
}

/// Adds a wait before the next batch. Each kind of reason is recorded once,
/// in the order they came ("workload busy …; then CPU saturated …"): a
/// later gate must not hide why the batch waited first.
fn note_wait(ms: f64, reason: Option<String>) {
    PENDING_WAIT.with(|w| {
        let mut w = w.borrow_mut();
        w.0 += ms;
        w.1 = joined_reasons(w.1.take(), reason);
    });
}

const REASON_SEPARATOR: &str = "; then ";

fn joined_reasons(pending: Option<String>, reason: Option<String>) -> Option<String> {
    // The kind of a reason: its text before the first '(' or ':'.
    let kind = |r: &str| r.split(['(', ':']).next().unwrap_or(r).trim_end().to_string();
    match (pending, reason) {
        (Some(mut prev), Some(r)) => {
            if !prev.split(REASON_SEPARATOR).any(|p| kind(p) == kind(&r)) {
                prev.push_str(REASON_SEPARATOR);
                prev.push_str(&r);
            }
            Some(prev)
        }
        (prev, r) => prev.or(r),
    }
}

#[cfg(test)]
mod reason_tests {
    use super::joined_reasons;

    #[test]
    fn each_kind_of_wait_reason_is_kept_once_in_order() {
        let s = |v: &str| Some(v.to_string());
        let busy = joined_reasons(None, s("workload busy (2 active sessions on 2 cores): pause 300 ms"));
        let both = joined_reasons(busy, s("CPU saturated (3% idle while the backfill waited): batches held to 2% of the time"));
        let again = joined_reasons(both.clone(), s("CPU saturated (1% idle while the backfill waited): batches held to 2% of the time"));
        assert_eq!(again, both);
        assert_eq!(
            both.as_deref(),
            Some("workload busy (2 active sessions on 2 cores): pause 300 ms; then CPU saturated (3% idle while the backfill waited): batches held to 2% of the time")
        );
        assert_eq!(joined_reasons(s("database idle: pause 25 ms"), None), s("database idle: pause 25 ms"));
    }
}

fn record_batch(migration: i64, out: &super::Batch, size: i32, took_ms: f64) {
    let (wait_ms, reason) = PENDING_WAIT.with(|w| std::mem::take(&mut *w.borrow_mut()));
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.batches (migration_id, rows, blocks, batch_size, duration_ms, wait_ms, wait_reason, first_block, worker_pid) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, pg_catalog.pg_backend_pid())",
            &[
                migration.into(),
                out.rows.into(),
                out.blocks.into(),
                size.into(),
                took_ms.into(),
                wait_ms.into(),
                reason.into(),
                out.first_block.into(),
            ],
        )
    });
}

/// The leader's helpers, one per slot 1 .. workers - 1.
#[derive(Default)]
struct Helpers {
    slots: Vec<Option<(DynamicBackgroundWorker, Instant)>>,
    /// when starting one last failed (no free worker slot): retried later
    failed_at: Option<Instant>,
}

impl Helpers {
    /// Start the helpers the job wants and has not got: at first, when the
    /// job's `workers` option grows, and again when one died (killed, a
    /// batch error, a wait) — at most every HELPER_RESTART_EVERY per slot.
    /// A helper that finds nothing left ends by itself; one started too
    /// late sees that at once and ends too. zdm's worker processes, helpers
    /// included, stay within `zdm.max_workers`: a job never takes the
    /// server's worker slots beyond that, whatever `workers` says.
    fn keep(&mut self, migration: i64, workers: i32, name: &str) {
        let wanted = (workers.max(1) - 1) as usize;
        if self.failed_at.is_some_and(|t| t.elapsed() < HELPER_RESTART_EVERY * 5) {
            return;
        }
        if self.slots.len() < wanted {
            self.slots.resize_with(wanted, || None);
        }
        let stale: Vec<usize> = (0..wanted)
            .filter(|&slot| match &self.slots[slot] {
                None => true,
                Some((w, since)) => {
                    matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)) && since.elapsed() >= HELPER_RESTART_EVERY
                }
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let starting = self.slots.iter().flatten().filter(|(w, _)| matches!(w.pid(), Err(BackgroundWorkerStatus::NotYetStarted))).count();
        let running = transaction(|| {
            spi::one::<i64>(&format!("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE {}", capacity::IS_ZDM_WORKER), &[])
        })
        .ok()
        .flatten()
        .unwrap_or(0);
        let free = (guc::MAX_WORKERS.get() as i64 - running - starting as i64).max(0) as usize;
        for (n, &slot) in stale.iter().enumerate() {
            let launched = if n < free {
                transaction(|| jobs::launch_helper(migration, slot as i32 + 1)).and_then(|r| r)
            } else {
                Err(format!("zdm.max_workers ({}) zdm workers are running", guc::MAX_WORKERS.get()))
            };
            match launched {
                Ok(w) => self.slots[slot] = Some((w, Instant::now())),
                Err(e) => {
                    // Retried later; said in the server log each time.
                    self.failed_at = Some(Instant::now());
                    pgrx::log!("{name}: could not start worker {} of {workers}: {e}; going on with fewer", slot + 2);
                    return;
                }
            }
        }
        self.failed_at = None;
    }
}

fn prune_history(migration: i64) {
    super::process::commit_without_waiting(); // (a crash keeps a few more rows)
    as_catalog_owner(|| {
        spi::exec_args(
            "DELETE FROM zdm.batches WHERE migration_id = $1 AND id <= \
               (SELECT id FROM zdm.batches WHERE migration_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            &[migration.into(), (guc::BATCH_HISTORY.get() as i64).into()],
        )
    });
}

#[cfg(test)]
mod tests {
    use super::next_batch_size;

    #[test]
    fn a_rate_cap_spaces_batches_and_keeps_them_small() {
        use super::{rate_gap, rate_share};
        use std::time::Duration;
        // 10000 rows/s: batches of at most 2000 rows, 1000 rows every 100 ms
        assert_eq!(rate_share(10_000, 1), (10_000.0, 2000));
        assert_eq!(rate_gap(10_000.0, 1000), Duration::from_millis(100));
        // shared by 4 workers: 2500 rows/s each
        assert_eq!(rate_share(10_000, 4), (2500.0, 500));
        assert_eq!(rate_gap(2500.0, 1000), Duration::from_millis(400));
        // a tiny cap: 1-row batches, however long a page of rows then waits
        assert_eq!(rate_share(1, 32).1, 1);
        assert_eq!(rate_gap(rate_share(1, 32).0, 100), Duration::from_secs(3200));
        assert_eq!(rate_share(i32::MAX, 1).1, super::MAX_ADAPTIVE_BATCH);
        assert_eq!(rate_gap(10.0, 0), Duration::ZERO);
    }

    #[test]
    fn adaptive_size_grows_at_most_20_percent_and_shrinks_proportionally() {
        assert_eq!(next_batch_size(1000, 1000, Some(250), 50.0), 1200);
        assert_eq!(next_batch_size(1000, 1000, Some(250), 500.0), 500);
        assert_eq!(next_batch_size(150, 1000, Some(250), 10_000.0), 100);
        assert_eq!(next_batch_size(10, 10, Some(250), 10_000.0), 10);
    }

    #[test]
    fn without_target_a_halved_size_recovers_to_the_configured_one() {
        assert_eq!(next_batch_size(500, 1000, None, 1.0), 600);
        assert_eq!(next_batch_size(900, 1000, None, 1.0), 1000);
    }
}
