//! Health signals besides the workload (`engine::load`): what GitLab's
//! batched migrations learned to pause for, read before each batch.
//!
//! * **WAL archive backlog**: segments waiting in `pg_wal/archive_status`
//!   (`.ready`) above `zdm.max_archive_backlog`. A failing or slow
//!   `archive_command` keeps WAL in pg_wal until the disk fills and the
//!   server stops; a backfill writes WAL fast. Archiving off: no signal.
//! * **Autovacuum on the table** (`zdm.yield_to_autovacuum`): while an
//!   autovacuum worker vacuums the table (or a partition of it), batches
//!   wait: both write the same heap, and an anti-wraparound vacuum must
//!   finish.
//! * **Brief steps and anti-wraparound vacuum** (`wait_out_wraparound`):
//!   before queuing for a lock that conflicts with VACUUM, a step waits
//!   (bounded by `zdm.wraparound_wait`) for an anti-wraparound autovacuum
//!   on the table to finish — it never yields its lock, so every attempt
//!   behind it would time out — and says so in the event log.

use crate::{catalog, guc, spi, tree};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Why the next batch of `migration` should wait for the server's health.
pub fn gate(migration: i64) -> Option<String> {
    archive_backlog().or_else(|| if guc::YIELD_TO_AUTOVACUUM.get() { autovacuum_on(migration) } else { None })
}

fn archive_backlog() -> Option<String> {
    let max = guc::MAX_ARCHIVE_BACKLOG.get() as i64;
    if max <= 0 {
        return None;
    }
    let waiting = spi::read_one::<i64>(
        "SELECT CASE WHEN pg_catalog.current_setting('archive_mode') = 'off' THEN 0 \
                ELSE (SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END",
        &[],
    )
    .unwrap_or(0);
    (waiting > max).then(|| {
        format!("WAL archive behind: {waiting} segments waiting to be archived (zdm.max_archive_backlog = {max}): the backfill waits until archiving catches up")
    })
}

/// An autovacuum worker vacuuming one of `relids`: (pid, anti-wraparound).
fn autovacuum_of(relid: pg_sys::Oid) -> Option<(i32, bool)> {
    // As the bootstrap superuser (a fixed query, no user code): a table
    // owner without pg_read_all_stats sees NULL for autovacuum's columns.
    crate::security::as_role(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), || autovacuum_query(relid))
}

/// Whether this transaction holds a lock that blocks writers (SHARE or
/// stronger) on a relation other than `relid`.
fn holds_other_blocking_locks(relid: pg_sys::Oid) -> bool {
    spi::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'relation' \
            AND granted AND relation <> $1 AND mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
            AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))",
        &[relid.into()],
    )
    .unwrap_or(false)
}

fn autovacuum_query(relid: pg_sys::Oid) -> Option<(i32, bool)> {
    spi::read_first_row(
        &format!(
            "SELECT a.pid, coalesce(a.query LIKE '%to prevent wraparound%', false) FROM pg_catalog.pg_stat_progress_vacuum v \
               JOIN pg_catalog.pg_stat_activity a ON a.pid = v.pid \
              WHERE a.backend_type = 'autovacuum worker' AND v.datid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
                AND v.relid IN (SELECT t.relid FROM {} t) \
              ORDER BY 2 DESC LIMIT 1",
            tree::partition_tree_sql(1)
        ),
        &[relid.into()],
        |r| Ok((r.get::<i32>(1)?.unwrap_or(0), r.get::<bool>(2)?.unwrap_or(false))),
    )
}

fn autovacuum_on(migration: i64) -> Option<String> {
    let relid = spi::read_one::<pg_sys::Oid>("SELECT relid::pg_catalog.oid FROM zdm.migrations WHERE id = $1", &[migration.into()])?;
    let (pid, wraparound) = autovacuum_of(relid)?;
    Some(format!(
        "autovacuum{} is vacuuming the table (pid {pid}): the backfill waits until it ends (zdm.yield_to_autovacuum)",
        if wraparound { " to prevent wraparound" } else { "" }
    ))
}

/// Before queuing for a lock that conflicts with VACUUM's: wait while an
/// anti-wraparound autovacuum works on the table (it does not give way to
/// a lock request as a plain autovacuum does), at most `zdm.wraparound_wait`,
/// polling every 200 ms; the wait goes into the next step's event. Returns
/// how long it waited.
pub fn wait_out_wraparound(relid: pg_sys::Oid) -> Duration {
    let started = Instant::now();
    let limit = Duration::from_millis(guc::WRAPAROUND_WAIT_MS.get().max(0) as u64);
    let mut seen: Option<i32> = None;
    // Waiting while this step already holds a lock that blocks writers on
    // another table (a partition, a referenced table) would stall them for
    // as long: the step asks at once instead, and its bounded attempts fail
    // with the blocker named, releasing those locks.
    if let Some((pid, true)) = autovacuum_of(relid) {
        if holds_other_blocking_locks(relid) {
            let text = format!(
                "an anti-wraparound autovacuum (pid {pid}) holds the table; not waiting for it while this step holds locks on other tables"
            );
            pgrx::log!("zdm: {text}");
            catalog::note_for_next_step(text);
            return Duration::ZERO;
        }
    }
    while let Some((pid, true)) = autovacuum_of(relid) {
        seen = Some(pid);
        if started.elapsed() >= limit {
            break;
        }
        super::locking::interruptible_sleep(Duration::from_millis(200));
        unsafe { pg_sys::pgstat_clear_snapshot() };
    }
    let waited = started.elapsed();
    if let Some(pid) = seen {
        let text = format!(
            "waited {:.1} s for an anti-wraparound autovacuum (pid {pid}) on the table before asking for its lock{}",
            waited.as_secs_f64(),
            if waited >= limit { " (zdm.wraparound_wait reached: asking anyway)" } else { "" }
        );
        pgrx::log!("zdm: {text}");
        catalog::note_for_next_step(text);
    }
    waited
}
