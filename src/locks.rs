//! Table lock modes as PostgreSQL defines them (lock.c's conflict table,
//! asked through `DoLockModesConflict`), what each blocks for an
//! application, and who holds a conflicting lock or an old snapshot right
//! now. Shared by `zdm.plan`, `zdm.safe_ddl` and zdm's own lock retries, so
//! that "blocked by" always means a lock that really conflicts.

use crate::spi;
use pgrx::prelude::*;

pub type Mode = pg_sys::LOCKMODE;

pub const ACCESS_SHARE: Mode = pg_sys::AccessShareLock as Mode;
pub const ROW_EXCLUSIVE: Mode = pg_sys::RowExclusiveLock as Mode;
pub const SHARE_UPDATE_EXCLUSIVE: Mode = pg_sys::ShareUpdateExclusiveLock as Mode;
pub const SHARE: Mode = pg_sys::ShareLock as Mode;
pub const SHARE_ROW_EXCLUSIVE: Mode = pg_sys::ShareRowExclusiveLock as Mode;
pub const ACCESS_EXCLUSIVE: Mode = pg_sys::AccessExclusiveLock as Mode;

const NAMES: [&str; 9] = [
    "NoLock",
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// The mode's name as pg_locks shows it.
pub fn name(mode: Mode) -> &'static str {
    NAMES.get(mode as usize).copied().unwrap_or("NoLock")
}

/// The mode as LOCK TABLE spells it ("ACCESS EXCLUSIVE").
pub fn sql_name(mode: Mode) -> String {
    let mut out = String::new();
    for (i, ch) in name(mode).trim_end_matches("Lock").chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// The mode pg_locks calls `name`.
pub fn from_name(name: &str) -> Option<Mode> {
    NAMES.iter().position(|n| *n == name).map(|i| i as Mode)
}

pub fn conflict(a: Mode, b: Mode) -> bool {
    a > 0 && b > 0 && unsafe { pg_sys::DoLockModesConflict(a, b) }
}

/// What a lock held in `mode` stops the application doing: plain reads take
/// ACCESS SHARE, writes ROW EXCLUSIVE.
pub fn blocks(mode: Mode) -> &'static str {
    if conflict(mode, ACCESS_SHARE) {
        "reads and writes"
    } else if conflict(mode, ROW_EXCLUSIVE) {
        "writes"
    } else {
        "nothing"
    }
}

pub fn blocks_writes(mode: Mode) -> bool {
    conflict(mode, ROW_EXCLUSIVE)
}

/// Another session holding (or waiting for, ahead of us) a lock that
/// conflicts, or a snapshot older than a concurrent build will wait for.
pub struct Holder {
    pub pid: i32,
    pub what: String,
    pub seconds: f64,
}

impl Holder {
    pub fn describe(&self) -> String {
        format!("pid {} {} for {:.1} s", self.pid, self.what, self.seconds)
    }
}

/// Sessions holding a lock on one of `relids` that conflicts with `mode`.
pub fn conflicting(relids: &[pg_sys::Oid], mode: Mode) -> Vec<Holder> {
    if relids.is_empty() || mode == 0 {
        return Vec::new();
    }
    let ids: Vec<pg_sys::Oid> = relids.to_vec();
    let rows = spi::read_rows(
        "SELECT l.pid, l.mode, l.relation::pg_catalog.regclass::pg_catalog.text, \
                coalesce(extract(epoch FROM pg_catalog.now() - coalesce(a.xact_start, a.query_start, a.backend_start))::float8, 0), \
                l.granted \
           FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
          WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
            AND l.relation = ANY($1) AND l.pid <> pg_catalog.pg_backend_pid() \
          ORDER BY l.pid",
        &[ids.into()],
        |r| {
            Ok((
                r.get::<i32>(1)?.unwrap_or(0),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<f64>(4)?.unwrap_or(0.0),
                r.get::<bool>(5)?.unwrap_or(false),
            ))
        },
    );
    let mut out: Vec<Holder> = Vec::new();
    for (pid, held, rel, seconds, granted) in rows {
        let Some(held_mode) = from_name(&held) else {
            continue;
        };
        if !conflict(held_mode, mode) || out.iter().any(|h| h.pid == pid) {
            continue;
        }
        let verb = if granted { "holds" } else { "waits for" };
        out.push(Holder {
            pid,
            what: format!("{verb} {held} on {rel}, in transaction"),
            seconds,
        });
    }
    out
}

/// Sessions of this database whose snapshot is older than `min_seconds`: a
/// concurrent index build (and DROP/REINDEX CONCURRENTLY) waits for each.
pub fn old_snapshots(min_seconds: f64) -> Vec<Holder> {
    spi::read_rows(
        "SELECT pid, extract(epoch FROM pg_catalog.now() - coalesce(xact_start, query_start))::float8 \
           FROM pg_catalog.pg_stat_activity \
          WHERE datname = pg_catalog.current_database() AND pid <> pg_catalog.pg_backend_pid() \
            AND backend_xmin IS NOT NULL AND coalesce(xact_start, query_start) < pg_catalog.now() - pg_catalog.make_interval(secs => $1) \
          ORDER BY 2 DESC",
        &[min_seconds.into()],
        |r| {
            Ok(Holder {
                pid: r.get::<i32>(1)?.unwrap_or(0),
                what: "has held a snapshot".into(),
                seconds: r.get::<f64>(2)?.unwrap_or(0.0),
            })
        },
    )
}
