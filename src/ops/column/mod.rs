//! The steps shared by a rename and a type change: expand (a new column
//! beside the old one, what depends on the old one carried over, a sync
//! trigger), backfill, index builds and validation (the worker), contract
//! (drop the old column; a type change's shadow takes its name) and abort
//! (drop the new column). Expand, contract and abort run in the caller's
//! transaction, so a migration tool's transaction commits or rolls back all
//! of it. Locks are taken through `locking::lock_tables`.

pub mod backfill;
pub mod carry;
mod contract;
pub use contract::refuse_later_triggers;
pub mod conversion;
mod expand;
mod repoint;
pub mod validate;

pub use expand::{expand, install_trigger, refuse_deferred_triggers};

use crate::catalog::Migration;
use crate::engine::{jobs, Batch, BuildState, IndexTask, Operation, Share};
use crate::introspect;
use pgrx::prelude::*;
use std::time::Instant;

/// The steps a rename and a type change share: a new column beside the old
/// one, kept in sync by a trigger, backfilled, its carried indexes built and
/// its carried constraints validated, then swapped in at contract.
pub struct ColumnSteps {
    pub kinds: &'static [&'static str],
    /// At contract the new column takes the old one's name (a type change's
    /// shadow column); a rename keeps the new name.
    pub takes_old_name: bool,
}

impl Operation for ColumnSteps {
    fn kinds(&self) -> &'static [&'static str] {
        self.kinds
    }
    fn worker_type(&self) -> &'static str {
        "zdm backfill"
    }
    fn has_backfill(&self) -> bool {
        true
    }
    fn backfill_batch(&self, migration: i64, batch_size: i32, share: Share) -> Batch {
        backfill::step(migration, batch_size, share, backfill::column_rows)
    }
    fn builds(&self, migration: i64) -> Vec<IndexTask> {
        carry::pending_builds(migration)
    }
    fn build_state(&self, migration: i64, task: &IndexTask, state: BuildState) {
        match state {
            BuildState::Building => carry::set_state(migration, &task.key, "building", None),
            BuildState::Valid => carry::set_state(migration, &task.key, "valid", None),
            BuildState::Failed { code, message } => {
                let shown = crate::catalog::hide_values(migration, "index build failed", message, Some(code as i32));
                carry::set_state(migration, &task.key, "failed", Some(&shown));
                jobs::fail(migration, "index build failed", message);
            }
        }
    }
    fn validate(&self, migration: i64) -> bool {
        validate::run(migration)
    }
    fn has_contract(&self) -> bool {
        true
    }
    fn contract(&self, m: &Migration) {
        contract::contract_steps(m, &m.table_sql(), Instant::now(), self.takes_old_name)
    }
    fn abort(&self, m: &Migration) {
        contract::abort_steps(m)
    }
}

/// What expand adds beside the old column, and how the two are kept in sync.
pub struct NewColumn<'a> {
    /// `rename` or `change_type`
    pub kind: &'static str,
    pub name: &'a str,
    /// The new column's type and typmod; None: the old column's type and
    /// collation.
    pub new_type: Option<(pg_sys::Oid, i32)>,
    /// The sync trigger for the old column as it is under expand's lock.
    pub trigger: &'a dyn Fn(&introspect::Column) -> SyncTrigger,
    /// The new column's default marks the INSERTs that leave it out
    /// (`trigger::written`): a rename's sync trigger decides from them.
    pub marks_unwritten: bool,
}

/// The trigger that keeps the new column in sync, and for a type change the
/// conversion it runs (recorded in the catalog, where the trigger reads it:
/// nothing a trigger's arguments say is executed).
pub struct SyncTrigger {
    /// `<prefix><id>` names it (the guard protects both prefixes)
    pub name_prefix: &'static str,
    pub function: &'static str,
    pub args: Vec<String>,
    /// (node tree, deparsed SQL) of a type change's conversion
    pub conversion: Option<(String, String)>,
}

/// Foreign keys carried onto the new column of a partitioned table go leaf
/// by leaf, on every major: before 18 a partitioned table cannot have one
/// NOT VALID, and on any major a leaf's copy attached to the partitioned
/// key could not be renamed to the original's name at contract (PostgreSQL
/// does not rename an inherited foreign key); each leaf's own copy can, and
/// the key added on the partitioned table then attaches them, validated.
pub(crate) fn keys_by_leaves(relid: pg_sys::Oid) -> bool {
    crate::tree::is_partitioned(relid)
}

/// SQL over a pg_constraint row `c`: a foreign key's MATCH, ON UPDATE and
/// ON DELETE clauses as written in its definition ("" for the defaults).
pub(super) const FK_ACTIONS: &str = "CASE c.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END \
    || CASE c.confupdtype WHEN 'r' THEN ' ON UPDATE RESTRICT' WHEN 'c' THEN ' ON UPDATE CASCADE' \
         WHEN 'n' THEN ' ON UPDATE SET NULL' WHEN 'd' THEN ' ON UPDATE SET DEFAULT' ELSE '' END \
    || CASE c.confdeltype WHEN 'r' THEN ' ON DELETE RESTRICT' WHEN 'c' THEN ' ON DELETE CASCADE' \
         WHEN 'n' THEN ' ON DELETE SET NULL' WHEN 'd' THEN ' ON DELETE SET DEFAULT' ELSE '' END";

