//! Settings (GUCs). Defaults are chosen to keep a busy OLTP table healthy.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

/// How long one lock attempt may wait before zdm backs off and retries.
pub static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
/// How many times a lock is retried (with jittered exponential backoff) before 55P03.
pub static LOCK_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(10);
/// The databases zdm's launchers serve (preload only): a comma-separated
/// list, or unset for every database where zdm is installed.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// How many backfill workers the launcher runs at once.
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
/// How many working jobs one role may have (0: zdm.max_workers - 1, at least 1).
pub static MAX_WORKERS_PER_ROLE: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Global kill switch: every background backfill waits while this is on.
pub static PAUSE_ALL: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Whether the pause between batches follows the workload (engine::load).
pub static ADAPTIVE_THROTTLE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// How many per-batch history rows are kept per migration.
pub static BATCH_HISTORY: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// What zdm.safe_ddl does with DDL on a large table (ddl::hook).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum SafeDdl {
    #[name = c"off"]
    Off,
    #[name = c"warn"]
    Warn,
    #[name = c"on"]
    On,
}

/// DDL on a large table: refused (on), warned about (warn, the default) or
/// left alone (off); with warn and on, lock waits are bounded too.
pub static SAFE_DDL: GucSetting<SafeDdl> = GucSetting::<SafeDdl>::new(SafeDdl::Warn);
/// From this size (kB, heap + TOAST) a table is large for zdm.safe_ddl.
pub static LARGE_TABLE_KB: GucSetting<i32> = GucSetting::<i32>::new(100 * 1024);

/// WAL segments waiting to be archived above which backfills wait (0: off).
pub static MAX_ARCHIVE_BACKLOG: GucSetting<i32> = GucSetting::<i32>::new(32);
/// Backfills wait while autovacuum works on their table.
pub static YIELD_TO_AUTOVACUUM: GucSetting<bool> = GucSetting::<bool>::new(true);
/// How long a brief step waits for an anti-wraparound autovacuum on its table.
pub static WRAPAROUND_WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(600_000);

pub fn register() {
    GucRegistry::define_int_guc(
        c"zdm.max_archive_backlog",
        c"WAL segments waiting to be archived (archive_status/*.ready) above which background backfills wait; 0 turns the signal off.",
        c"Only while archive_mode is on. A failing or slow archive_command keeps WAL in pg_wal until the disk fills.",
        &MAX_ARCHIVE_BACKLOG,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"zdm.yield_to_autovacuum",
        c"Background backfills wait while an autovacuum worker vacuums their table.",
        c"",
        &YIELD_TO_AUTOVACUUM,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"zdm.wraparound_wait",
        c"How long a brief zdm step (expand, contract, abort, the constraint steps) waits for an anti-wraparound autovacuum on its table before asking for its lock.",
        c"An anti-wraparound autovacuum does not give way to a lock request, so every attempt behind it would time out.",
        &WRAPAROUND_WAIT_MS,
        0,
        86_400_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"zdm.safe_ddl",
        c"What zdm does with DDL that would lock a large table through a rewrite, scan or index build: off, warn or on (refuse).",
        c"With warn or on, DDL that needs a lock blocking reads or writes also waits at most zdm.lock_timeout per attempt, retried zdm.lock_retries times, unless the session set lock_timeout.",
        &SAFE_DDL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"zdm.large_table",
        c"Table size (heap and TOAST) from which zdm.safe_ddl refuses or warns about rewrites, scans and index builds under a blocking lock.",
        c"",
        &LARGE_TABLE_KB,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"zdm.lock_timeout",
        c"How long zdm waits for a table lock in one attempt.",
        c"After this wait zdm gives the lock queue back to other sessions, sleeps with jittered backoff and retries, so a long transaction never stalls every query behind a queued ALTER.",
        &LOCK_TIMEOUT_MS,
        1,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"zdm.lock_retries",
        c"How many times zdm retries a lock before failing with 55P03.",
        c"",
        &LOCK_RETRIES,
        0,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"zdm.database",
        c"Databases whose queued and interrupted jobs zdm's launchers run: a comma-separated list; unset (the default) for every database where zdm is installed.",
        c"Only used with shared_preload_libraries = 'zdm'.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"zdm.max_workers",
        c"Maximum number of zdm backfill workers the launcher runs at once.",
        c"",
        &MAX_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"zdm.max_workers_per_role",
        c"Maximum number of zdm jobs of one owning role that work at once.",
        c"0 (the default) means zdm.max_workers - 1 (at least 1), so that another role always finds a worker. Paused or scheduled jobs do not count.",
        &MAX_WORKERS_PER_ROLE,
        0,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"zdm.pause_all",
        c"Pause every zdm background backfill (global kill switch).",
        c"Workers finish their current batch and wait until this is off again.",
        &PAUSE_ALL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"zdm.adaptive_throttle",
        c"Lengthen the pause between backfill batches while the workload is busy, shorten it while the database is idle.",
        c"Busy: more active client sessions than CPU cores, or sessions waiting for locks on the migrating table. Why a batch waited is recorded in zdm.batches.wait_reason.",
        &ADAPTIVE_THROTTLE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"zdm.batch_history",
        c"Number of per-batch history rows kept per migration in zdm.batches.",
        c"",
        &BATCH_HISTORY,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// `zdm.database` as a list of names (None: unset or empty, every database).
pub fn served_databases() -> Option<Vec<String>> {
    let raw = DATABASE.get()?;
    let names: Vec<String> = raw
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}
