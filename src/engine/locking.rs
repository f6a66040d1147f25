//! Lock waits and retries: the one policy every step of every operation
//! uses — expand, contract, abort, batches, index builds, constraint steps.
//!
//! A plain `ALTER TABLE` queued behind a long transaction blocks every query
//! that arrives after it. zdm instead bounds every lock wait by the **lock
//! timeout** (`zdm.lock_timeout`, or the job's `lock_timeout`, which is a
//! copy of it taken when the job is queued unless the caller chose one):
//!
//! * a table lock (`lock_table`) is asked for in a subtransaction under that
//!   timeout; on timeout the subtransaction is rolled back (leaving the lock
//!   queue to others), zdm sleeps `backoff(n)` and asks again, up to
//!   **lock retries** (`zdm.lock_retries`, or the job's copy) times, then
//!   fails with 55P03 naming the sessions that hold the table. Once a lock is
//!   held, the DDL that follows in the same transaction does not wait.
//!   Several tables a step needs (a foreign key's two, a partition's
//!   leaves) are one such attempt (`lock_tables`): none is held between
//!   attempts, and within one a wait while holding some is cut short.
//! * a lock needed while the table's ACCESS EXCLUSIVE is already held (the
//!   referenced table of a foreign key added while expand waited for the
//!   table; those there before are in expand's `lock_tables`) gets one attempt under the
//!   lock timeout (`one_attempt`): retrying would keep every reader of the
//!   table waiting, so it fails instead and the caller tries again later.
//! * a unit of a job's work — one batch, one concurrent index build — runs
//!   with the lock timeout for all its lock waits (a build at least
//!   `zdm.lock_timeout`: a concurrent build also waits for older snapshots).
//!   If it fails with a `retryable` error it is tried again after
//!   `retry_pause(n)` (a batch with half its size), up to the job's
//!   `max_attempts` attempts in all.
//!
//! A job's policy is read again from its row before each step
//! (`gate::open` calls `refresh`), so `zdm.set_options` applies to the next
//! step.
//!
//! Retryable: lock timeout (55P03), statement timeout or cancel (57014),
//! deadlock (40P01), serialization failure (40001). Anything else is final.

use crate::errors::{code_of, raise_with_detail, Code};
use crate::{guc, locks, security, spi, subxact};
use pgrx::prelude::*;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// What a lock cost, for the event log.
pub struct LockStats {
    pub wait_ms: f64,
    pub attempts: i32,
}

/// How long one lock wait may last, how many times a table lock is asked
/// for again, and how many attempts a unit of work gets.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LockPolicy {
    pub timeout_ms: i32,
    pub retries: i32,
    pub attempts: i32,
}

/// A job's attempts when it has no row to say (the zdm.jobs default).
const DEFAULT_ATTEMPTS: i32 = 5;

thread_local! {
    /// The policy of the job whose steps run now (`for_job`), if any.
    static JOB_POLICY: Cell<Option<LockPolicy>> = const { Cell::new(None) };
}

impl LockPolicy {
    /// The settings' policy, or the running job's.
    pub fn current() -> LockPolicy {
        JOB_POLICY.with(|p| p.get()).unwrap_or(LockPolicy {
            timeout_ms: guc::LOCK_TIMEOUT_MS.get(),
            retries: guc::LOCK_RETRIES.get(),
            attempts: DEFAULT_ATTEMPTS,
        })
    }
}

/// Run a job's steps under the job's policy (restored afterwards, also on
/// error).
pub fn for_job<R>(policy: LockPolicy, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<LockPolicy>);
    impl Drop for Restore {
        fn drop(&mut self) {
            JOB_POLICY.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(JOB_POLICY.with(|p| p.replace(Some(policy))));
    f()
}

/// The job's policy as its row says now (before each step), while a job's
/// steps run.
pub fn refresh(policy: LockPolicy) {
    JOB_POLICY.with(|p| {
        if p.get().is_some() {
            p.set(Some(policy));
        }
    });
}

/// Run `f`, whose statements may wait for locks, with one bounded wait each
/// and no retry (see the module comment). The caller's lock_timeout is back
/// afterwards.
pub fn one_attempt<R>(f: impl FnOnce() -> R) -> R {
    with_lock_timeout(LockPolicy::current().timeout_ms, f)
}

/// Run `f` with `lock_timeout` set to `ms`, in a GUC nest level: the
/// caller's lock_timeout is back afterwards (on error, the (sub)transaction
/// abort restores it).
pub fn with_lock_timeout<R>(ms: i32, f: impl FnOnce() -> R) -> R {
    let timeout = std::ffi::CString::new(format!("{ms}ms")).unwrap_or_default();
    security::with_guc_nest_level(&[(c"lock_timeout", timeout.as_c_str())], f)
}

/// zdm's `deadlock_timeout`: a tenth of the server's (100 ms at least, as
/// each check takes every lock partition's lock; never later than the
/// server's), so in a deadlock with a session — an application's
/// transaction, DROP EXTENSION, an upgrade — it is nearly always zdm that
/// PostgreSQL cancels (whoever checks first is), and zdm tries its batch or
/// step again while the session goes on. The server's value is the reset
/// value, which a reload updates under a session's own.
fn losing_deadlock_timeout() -> std::ffi::CString {
    let ms = server_deadlock_timeout_ms();
    std::ffi::CString::new(format!("{}ms", ms.min((ms / 10).max(100)))).unwrap_or_default()
}

/// The server's deadlock_timeout (its reset value), in ms.
fn server_deadlock_timeout_ms() -> i32 {
    let configured = unsafe {
        let s = pg_sys::GetConfigOptionResetString(c"deadlock_timeout".as_ptr());
        // (an integer setting's reset value prints in its unit, ms: "1000")
        (!s.is_null()).then(|| std::ffi::CStr::from_ptr(s).to_string_lossy().trim_end_matches("ms").parse::<i32>().ok()).flatten()
    };
    configured.unwrap_or(1000)
}

/// For a zdm process's whole session (at start and after a reload).
pub fn lose_deadlocks() {
    let value = losing_deadlock_timeout();
    security::set_guc_as(pg_sys::GucContext::PGC_SUSET, c"deadlock_timeout", &value, pg_sys::GucAction::GUC_ACTION_SET);
}

/// For zdm's work in a caller's session (`zdm.backfill_batch`): the
/// caller's own deadlock_timeout is back afterwards.
pub fn losing_deadlocks<R>(f: impl FnOnce() -> R) -> R {
    let value = losing_deadlock_timeout();
    security::with_guc_nest_level_as(pg_sys::GucContext::PGC_SUSET, &[(c"deadlock_timeout", value.as_c_str())], f)
}

/// Errors worth another attempt (see the module comment).
pub fn retryable(code: PgSqlErrorCode) -> bool {
    matches!(
        code,
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
            | PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
            | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
    )
}

fn jitter_fraction() -> f64 {
    // Cheap per-backend pseudo-randomness: good enough to de-synchronise retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let pid = unsafe { pg_sys::MyProcPid } as u32;
    let x = nanos.wrapping_mul(2654435761).wrapping_add(pid.wrapping_mul(40503));
    (x % 1000) as f64 / 1000.0
}

/// `first_ms` doubling with each `attempt` (1-based), capped at `cap_ms`,
/// with 50–100 % jitter.
fn jittered_doubling(first_ms: f64, cap_ms: f64, attempt: i32) -> Duration {
    let base = (first_ms * 2f64.powi(attempt.saturating_sub(1).min(10))).min(cap_ms);
    Duration::from_millis((base * (0.5 + 0.5 * jitter_fraction())) as u64)
}

/// The pause before retry `attempt` (1-based) of a lock: 50 ms doubling,
/// capped at 2 s, jittered.
pub fn backoff(attempt: i32) -> Duration {
    jittered_doubling(50.0, 2000.0, attempt)
}

/// The pause before attempt `attempt + 1` of a unit of work: 500 ms
/// doubling, capped at 10 s, jittered (a failed batch or build cost more
/// than a lock attempt; the blocker needs longer to go away).
pub fn retry_pause(attempt: i32) -> Duration {
    jittered_doubling(500.0, 10_000.0, attempt)
}

/// Sleep in a way that query cancel and termination still interrupt.
pub fn interruptible_sleep(d: Duration) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
    }
}

/// The sessions holding a lock on `relid` that conflicts with `mode` (the
/// SQL spelling, "ACCESS EXCLUSIVE").
fn blocking_pids(relid: pg_sys::Oid, mode: &str) -> Vec<i32> {
    locks::conflicting(&[relid], mode_of(mode)).into_iter().map(|h| h.pid).collect()
}

/// A lock mode from its SQL spelling ("ACCESS EXCLUSIVE").
fn mode_of(mode: &str) -> locks::Mode {
    let camel: String = mode.split_whitespace().map(|w| w.chars().take(1).collect::<String>() + &w.chars().skip(1).collect::<String>().to_lowercase()).collect();
    locks::from_name(&format!("{camel}Lock")).unwrap_or(locks::ACCESS_EXCLUSIVE)
}

/// `LOCK TABLE table IN mode MODE` under the current policy.
pub fn lock_table(relid: pg_sys::Oid, table_sql: &str, mode: &str) -> LockStats {
    lock_tables(&[(relid, table_sql, mode)], &[])
}

/// A table to lock: its oid, its SQL name, the mode in its SQL spelling.
pub type TableLock<'a> = (pg_sys::Oid, &'a str, &'a str);

/// `tables` (oid and SQL name each), all to be locked in `mode`.
pub fn in_mode<'a>(tables: &'a [(pg_sys::Oid, String)], mode: &'a str) -> Vec<TableLock<'a>> {
    tables.iter().map(|(relid, sql)| (*relid, sql.as_str(), mode)).collect()
}

/// A deadlock keeps its SQLSTATE once zdm has lost this many in one call:
/// one that closes through a lock the transaction held before the attempt
/// comes back at every attempt, and the other session waits for each.
const MAX_LOST_DEADLOCKS: i32 = 3;

/// `LOCK TABLE` each of `tables`, in the order given, then each of
/// `referenced` (tables foreign keys reference) with its partitions, locked
/// the way ALTER TABLE locks them: by oid, privileges being the statement's
/// to check (REFERENCES, where LOCK TABLE would want UPDATE). Under the
/// current policy, all of them are one attempt of the lock timeout, in a
/// subtransaction: on a timeout, or a deadlock that zdm loses
/// (`losing_deadlocks`), every lock the attempt took is given back before
/// the pause. Once the attempt holds one, each further wait is cut to half
/// the server's deadlock_timeout: a writer that locks them in another order
/// (a cascading DELETE, an insert into two partitions) and closes a cycle
/// after zdm's own deadlock check has run finds zdm gone before its own
/// check — it goes through, and zdm asks again. A deadlock lost
/// `MAX_LOST_DEADLOCKS` times keeps its SQLSTATE (40P01), for the caller.
pub fn lock_tables(tables: &[TableLock], referenced: &[TableLock]) -> LockStats {
    let LockPolicy { timeout_ms, retries, .. } = LockPolicy::current();
    let started = Instant::now();
    let referenced: Vec<&TableLock> = referenced.iter().filter(|r| !tables.iter().any(|t| t.0 == r.0)).collect();
    let all = || tables.iter().chain(referenced.iter().copied());
    for (relid, _, mode) in all() {
        // Every mode from SHARE UPDATE EXCLUSIVE up conflicts with VACUUM.
        if !matches!(*mode, "ACCESS SHARE" | "ROW SHARE" | "ROW EXCLUSIVE") {
            super::health::wait_out_wraparound(*relid);
        }
    }
    let statements: Vec<String> = tables.iter().map(|(_, sql, mode)| format!("LOCK TABLE {sql} IN {mode} MODE")).collect();
    let holding_cap = (server_deadlock_timeout_ms() / 2).max(1);
    let mut blockers: Vec<i32> = Vec::new();
    let mut lost_deadlocks = 0;
    for attempt in 1..=retries + 1 {
        // One lock timeout for all of them together: each wait gets what is
        // left of it. The caller's lock_timeout is back once they are held.
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(1) as u64);
        let mut holding = false;
        let mut wait_ms = || {
            let left = deadline.saturating_duration_since(Instant::now()).as_millis().max(1) as i32;
            let ms = if holding { left.min(holding_cap) } else { left };
            holding = true;
            ms
        };
        let outcome = subxact::attempt(|| {
            losing_deadlocks(|| {
                for statement in &statements {
                    with_lock_timeout(wait_ms(), || spi::exec(statement));
                }
                for (relid, _, mode) in &referenced {
                    // The partitions as they are once the parent is held.
                    with_lock_timeout(wait_ms(), || unsafe { pg_sys::LockRelationOid(*relid, mode_of(mode)) });
                    for partition in partitions(*relid) {
                        with_lock_timeout(wait_ms(), || unsafe { pg_sys::LockRelationOid(partition, mode_of(mode)) });
                    }
                }
            })
        });
        match outcome {
            Ok(()) => return LockStats { wait_ms: started.elapsed().as_secs_f64() * 1000.0, attempts: attempt },
            Err(e) if matches!(code_of(&e), PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED) => {
                if code_of(&e) == PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED {
                    lost_deadlocks += 1;
                    if lost_deadlocks >= MAX_LOST_DEADLOCKS || attempt > retries {
                        e.rethrow();
                    }
                }
                blockers = all().flat_map(|(relid, _, mode)| blocking_pids(*relid, mode)).collect();
                blockers.sort_unstable();
                blockers.dedup();
                if attempt <= retries {
                    interruptible_sleep(backoff(attempt));
                }
            }
            Err(e) => e.rethrow(),
        }
    }
    give_up(&describe(all()), timeout_ms, retries, &blockers)
}

/// "table a, b in ACCESS EXCLUSIVE mode and table c in ROW SHARE mode",
/// with at most five names per mode.
fn describe<'a>(tables: impl Iterator<Item = &'a TableLock<'a>>) -> String {
    let mut by_mode: Vec<(&str, Vec<&str>)> = Vec::new();
    for (_, sql, mode) in tables {
        match by_mode.iter_mut().find(|(m, _)| m == mode) {
            Some((_, names)) => names.push(sql),
            None => by_mode.push((mode, vec![sql])),
        }
    }
    by_mode
        .iter()
        .map(|(mode, names)| {
            let more = names.len().saturating_sub(5);
            let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            format!("table {shown}{} in {mode} mode", if more > 0 { format!(" and {more} more") } else { String::new() })
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Every partition below `relid` (parents first, as ALTER TABLE locks a
/// tree); none for a table that is not partitioned, or gone.
fn partitions(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    spi::read_rows(
        &format!("SELECT relid FROM {} t WHERE t.level > 0 ORDER BY t.level", crate::tree::partition_tree_sql(1)),
        &[relid.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or_default()),
    )
}

/// A relation `lock_relations` takes, in `mode`, with every partition below
/// it when `recurse` (as the statement will: parent first, then down).
pub struct Target {
    pub relid: pg_sys::Oid,
    pub mode: locks::Mode,
    pub recurse: bool,
}

/// Take the locks a statement is about to take, under the current policy:
/// all of them in one attempt of the lock timeout (a subtransaction, kept
/// on success, so they stay held for the statement), retried like
/// `lock_table`. For `zdm.safe_ddl`, before a user's DDL; read-only
/// queries only (no transaction id is assigned).
pub fn lock_relations(targets: &[Target]) -> LockStats {
    let LockPolicy { timeout_ms, retries, .. } = LockPolicy::current();
    let started = Instant::now();
    let mut blockers: Vec<i32> = Vec::new();
    let mut all: Vec<(pg_sys::Oid, locks::Mode)> = Vec::new();
    for t in targets {
        all.push((t.relid, t.mode));
        if t.recurse {
            all.extend(partitions(t.relid).into_iter().map(|r| (r, t.mode)));
        }
    }
    // Free at once (the common case): taken without a subtransaction.
    let mut taken: Vec<(pg_sys::Oid, locks::Mode)> = Vec::new();
    for (relid, mode) in &all {
        if !unsafe { pg_sys::ConditionalLockRelationOid(*relid, *mode) } {
            break;
        }
        taken.push((*relid, *mode));
    }
    if taken.len() == all.len() {
        return LockStats { wait_ms: 0.0, attempts: 1 };
    }
    // Not all free: give back what was taken (nothing is held while we back
    // off) and wait in bounded attempts.
    for (relid, mode) in taken.into_iter().rev() {
        unsafe { pg_sys::UnlockRelationOid(relid, mode) };
    }
    for attempt in 1..=retries + 1 {
        // One attempt is one lock timeout for all of them together: each
        // wait gets what is left of it.
        let deadline = Instant::now() + std::time::Duration::from_millis(timeout_ms.max(1) as u64);
        let outcome = subxact::attempt(|| {
            for (relid, mode) in &all {
                let left = deadline.saturating_duration_since(Instant::now()).as_millis().max(1) as i32;
                with_lock_timeout(left, || unsafe { pg_sys::LockRelationOid(*relid, *mode) });
            }
        });
        match outcome {
            Ok(()) => return LockStats { wait_ms: started.elapsed().as_secs_f64() * 1000.0, attempts: attempt },
            Err(e) if code_of(&e) == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
                blockers = all.iter().flat_map(|(r, m)| locks::conflicting(&[*r], *m)).map(|h| h.pid).collect();
                blockers.sort_unstable();
                blockers.dedup();
                if attempt <= retries {
                    interruptible_sleep(backoff(attempt));
                }
            }
            Err(e) => e.rethrow(),
        }
    }
    let names = targets
        .iter()
        .map(|t| spi::read_one::<String>("SELECT $1::pg_catalog.regclass::pg_catalog.text", &[t.relid.into()]).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ");
    let mode = targets.iter().map(|t| t.mode).max().unwrap_or(locks::ACCESS_EXCLUSIVE);
    give_up(&format!("table {names} in {} mode", locks::sql_name(mode)), timeout_ms, retries, &blockers)
}

/// 55P03 after the last attempt; `what` is "table t in MODE mode".
fn give_up(what: &str, timeout_ms: i32, retries: i32, blockers: &[i32]) -> ! {
    let pids = blockers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    raise_with_detail(
        Code::ERRCODE_LOCK_NOT_AVAILABLE,
        format!(
            "could not lock {what}: {} attempts of {timeout_ms} ms each timed out; blocked by pid(s) {}",
            retries + 1,
            if pids.is_empty() { "unknown".into() } else { pids.clone() }
        ),
        format!("Sessions holding conflicting locks: {}", if pids.is_empty() { "none seen".into() } else { pids.clone() }),
        format!(
            "Find them with SELECT pid, state, xact_start, query FROM pg_stat_activity WHERE pid IN ({}); \
             end or wait for them and call again, or raise zdm.lock_timeout / zdm.lock_retries.",
            if pids.is_empty() { "0".into() } else { pids }
        ),
    )
}
