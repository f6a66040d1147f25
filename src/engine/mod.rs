//! The engine: what every operation shares — jobs and the worker processes
//! that run them (`jobs`, `worker`, `launcher`, `process`, `capacity`), the
//! throttled batch loop (`batches`, `load`, `window`), concurrent index
//! builds at top level (`index_build`, `toplevel`), DDL steps (`steps`), the
//! one lock-and-retry policy (`locking`), the one gate before a job's steps
//! (`gate`), and backfill_batch/contract/abort for any kind (`lifecycle`).
//! README.md in this directory walks through them.
//!
//! Operations (`src/ops/`) plug in through [`Operation`] and are registered
//! once at library load (`register`); the engine never names one, so adding
//! an operation does not touch this directory.

pub mod batches;
pub mod capacity;
pub mod gate;
pub mod index_build;
pub mod index_tree;
pub mod jobs;
pub mod health;
pub mod launcher;
pub mod supervisor;
pub mod lifecycle;
pub mod load;
pub mod locking;
pub mod process;
pub mod window;
pub mod steps;
pub mod toplevel;
pub mod worker;

use crate::catalog::Migration;
use crate::errors::{raise, Code};
use pgrx::prelude::*;
use std::sync::OnceLock;

/// What one batch of a backfill did.
#[derive(Default)]
pub struct Batch {
    pub rows: i64,
    pub blocks: i64,
    /// the first heap block it covered (history, for checking coverage)
    pub first_block: i64,
    /// the scan reached the end of the table
    pub done: bool,
    /// nothing to take now: other workers of the job hold all the work left
    pub busy: bool,
}

impl Batch {
    pub fn done() -> Batch {
        Batch { done: true, ..Batch::default() }
    }
}

/// Who runs a batch of a job's backfill.
#[derive(Clone, Copy)]
pub struct Share {
    /// processes the job runs: the operation splits its work so that they
    /// never overlap
    pub workers: i32,
    /// a helper, not the job's leader: it leaves recording completion to
    /// the leader (and answers `done` when nothing is left to take)
    pub helper: bool,
    /// wait for work another process holds instead of answering `busy`
    /// (a caller's own `zdm.backfill_batch`; a worker tries again shortly)
    pub wait: bool,
}

impl Share {
    /// A caller's own batch, in its transaction (`zdm.backfill_batch`).
    pub const CALLER: Share = Share { workers: 1, helper: false, wait: true };
}

/// A concurrent index build or drop the worker runs at top level.
#[derive(Clone, Debug)]
pub struct IndexTask {
    /// The operation's own key for the object (e.g. the index it replaces).
    pub key: String,
    /// the table (a partitioned one is built leaf by leaf: index_tree)
    pub relid: pg_sys::Oid,
    pub drop: bool,
    pub schema: String,
    pub index: String,
    /// `CREATE INDEX …` (run with `concurrent` forced on); unused for a drop
    pub definition: String,
    /// search_path the definition's names resolve with
    pub search_path: String,
    /// On a partitioned table: the index on each leaf only, nothing on the
    /// partitioned tables and nothing attached — the operation attaches the
    /// leaves' indexes itself (a key's constraint: PostgreSQL attaches a
    /// leaf's key, not a bare index, to a partitioned key).
    pub leaves_only: bool,
}

/// How a build ended, for the operation to record.
pub enum BuildState<'a> {
    Building,
    Valid,
    Failed { code: PgSqlErrorCode, message: &'a str },
}

/// One migration kind's steps: every operation has the same shape.
/// The worker drives a job through them in order — backfill, build,
/// validate — each optional; `contract` and `abort` are called by the SQL
/// surface on an in-flight migration whose owner the caller was checked to
/// be, with the migration's row locked.
pub trait Operation: Sync {
    /// The `zdm.migrations.kind` values this module implements.
    fn kinds(&self) -> &'static [&'static str];
    /// `backend_type` of its worker processes, as pg_stat_activity shows it.
    fn worker_type(&self) -> &'static str;

    /// Backfill: does this kind copy rows in batches? (At most one
    /// backfilling job runs per table; `zdm.backfill_batch` refuses others.)
    fn has_backfill(&self) -> bool {
        false
    }
    /// One batch, inside the worker's batch transaction, already running as
    /// the migration's owner under its lock and statement timeouts.
    /// `share`: the processes of the job sharing the backfill; a batch with
    /// nothing to take while the others hold the rest returns `busy`.
    fn backfill_batch(&self, _migration: i64, _batch_size: i32, _share: Share) -> Batch {
        Batch::done()
    }

    /// Build: the concurrent index builds / drops still to run, in order
    /// (read in a transaction; each then runs at top level, one at a time).
    fn builds(&self, _migration: i64) -> Vec<IndexTask> {
        Vec::new()
    }
    /// A build started, finished, or failed for good (in a transaction).
    fn build_state(&self, _migration: i64, _task: &IndexTask, _state: BuildState) {}

    /// Validate: steps in their own transactions after the builds (called
    /// outside a transaction). False when the job stopped (cancelled, or a
    /// failure the operation recorded).
    fn validate(&self, _migration: i64) -> bool {
        true
    }
    /// The job has run every step (in a transaction): complete it.
    fn job_done(&self, migration: i64) {
        jobs::finish_for_migration(migration, "completed");
    }

    /// Contract: does this kind have one? (Others finish by themselves.)
    fn has_contract(&self) -> bool {
        false
    }
    /// zdm.contract, on a migration the phase rules allow to contract.
    fn contract(&self, _m: &Migration) {}
    /// zdm.abort: undo what the migration added and close it.
    fn abort(&self, m: &Migration);

    /// A request a caller in autocommit mode handed to the worker through
    /// shared memory (the worker cannot see the caller's uncommitted rows):
    /// record the migration, in the worker's transaction.
    fn record_handoff(&self, _payload: &[u8]) -> Result<(), String> {
        Err("this kind of migration is not handed over to workers".into())
    }
}

static OPERATIONS: OnceLock<&'static [&'static dyn Operation]> = OnceLock::new();

/// Called once from `_PG_init`.
pub fn register(ops: &'static [&'static dyn Operation]) {
    let _ = OPERATIONS.set(ops);
}

fn all() -> &'static [&'static dyn Operation] {
    OPERATIONS.get().copied().unwrap_or(&[])
}

/// The module implementing `kind` (None for a kind this build does not know,
/// e.g. a catalog row written by a newer zdm).
pub fn find(kind: &str) -> Option<&'static dyn Operation> {
    all().iter().copied().find(|op| op.kinds().contains(&kind))
}

/// `find`, or a clear error naming the kind.
pub fn operation(kind: &str) -> &'static dyn Operation {
    find(kind).unwrap_or_else(|| {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("zdm does not know migrations of kind {kind:?}"),
            "The catalog was written by another zdm version; install the matching version (ALTER EXTENSION zdm UPDATE).",
        )
    })
}

/// The kinds that have a contract step.
pub fn kinds_with_contract() -> Vec<String> {
    all().iter().filter(|op| op.has_contract()).flat_map(|op| op.kinds().iter().map(|k| k.to_string())).collect()
}

/// The kinds whose jobs backfill (one per table at a time).
pub fn backfilling_kinds() -> Vec<String> {
    all().iter().filter(|op| op.has_backfill()).flat_map(|op| op.kinds().iter().map(|k| k.to_string())).collect()
}
