//! What did the statement write? The rename trigger's decision, in one place.
//!
//! Values alone cannot say which column a writer meant: a NULL written
//! through the new column looks like a row the backfill has not reached, and
//! a default (the column's, its domain's or its type's) that fills the new
//! column behind an old-version INSERT looks like a new-version write. So
//! the decision follows the statement:
//!
//! * UPDATE (also MERGE's UPDATE and an upsert's DO UPDATE): its SET list
//!   (`tg_updatedcols`). With a BEFORE UPDATE trigger ahead of zdm's, a
//!   column whose value that trigger changed counts as written too.
//! * INSERT (also COPY, MERGE's INSERT, an upsert's proposed row, logical
//!   replication apply): whether the new column was left out. During the
//!   migration the new column's default is `zdm.unwritten(<id>, <value>)`,
//!   a volatile function the executor evaluates for exactly the rows that
//!   leave the column out, just before their BEFORE ROW triggers fire; it
//!   leaves a mark this trigger takes. No column, domain or type default can
//!   reach the new column otherwise (the guard refuses setting one).
//!
//! The table (`w` = written, `waiting` = new IS NULL and old IS NOT NULL,
//! the row the backfill has not reached; rows already equal are left as they
//! are before any of this):
//!
//! | statement | old column     | new column        | action                         |
//! |-----------|----------------|-------------------|--------------------------------|
//! | INSERT    | any            | left out          | new := old                     |
//! | INSERT    | any            | named (NULL too)  | old := new                     |
//! | UPDATE    | not w          | not w             | waiting: new := old; else keep |
//! | UPDATE    | not w          | w (NULL too)      | old := new                     |
//! | UPDATE    | w              | not w             | new := old                     |
//! | UPDATE    | w              | w                 | the one whose value changed (new first); neither: waiting: new := old, else old := new |
//!
//! Both written with unchanged values arises from MERGE, whose SET list is
//! the union of all its UPDATE actions. A left-out new column holds the
//! mark's value (the old column's default), which the old column's value
//! replaces — also when a BEFORE INSERT trigger ahead of zdm's set it.
//!
//! A migration expanded before the mark existed has no default on its new
//! column: its INSERTs are decided by value as before (a non-NULL new column
//! wins, else new := old).

use pgrx::pg_sys;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Keep,
    OldToNew,
    NewToOld,
}

/// What an UPDATE did to the two columns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    /// in the SET list, or changed by an earlier BEFORE trigger
    pub old_written: bool,
    pub new_written: bool,
    /// the value differs from the old row's
    pub old_changed: bool,
    pub new_changed: bool,
    /// new IS NULL and old IS NOT NULL: not yet backfilled
    pub waiting: bool,
}

pub(crate) fn on_update(u: Update) -> Action {
    match (u.old_written, u.new_written) {
        (false, false) if u.waiting => Action::OldToNew,
        (false, false) => Action::Keep,
        (false, true) => Action::NewToOld,
        (true, false) => Action::OldToNew,
        (true, true) if u.new_changed => Action::NewToOld,
        (true, true) if u.old_changed || u.waiting => Action::OldToNew,
        (true, true) => Action::NewToOld,
    }
}

/// An INSERT: `left_out` is Some(whether the new column was left out) when
/// the migration marks it, None for a migration without the mark (decided
/// by value, as before the mark existed).
pub(crate) fn on_insert(left_out: Option<bool>, old_null: bool, new_null: bool) -> Action {
    match left_out {
        Some(true) => Action::OldToNew,
        Some(false) => Action::NewToOld,
        None if !new_null => Action::NewToOld,
        None if !old_null => Action::OldToNew,
        None => Action::Keep,
    }
}

// The marks: which migrations' new columns the current statement's current
// row left out. Keyed by the transaction (its start time) and the
// statement (its active snapshot's command id, which nested statements run
// by earlier triggers do not change for the outer one). Plain statics: a
// backend runs one thread, and these are touched once per row.
const SLOTS: usize = 8;
static MARK_XACT: AtomicI64 = AtomicI64::new(0);
static MARK_CID: AtomicU32 = AtomicU32::new(u32::MAX);
static MARKS: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];

unsafe fn statement_key() -> Option<(i64, u32)> {
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        Some((pg_sys::GetCurrentTransactionStartTimestamp(), (*pg_sys::GetActiveSnapshot()).curcid))
    }
}

/// Leave a mark for `migration` (the default was evaluated for this row).
unsafe fn mark(migration: i64) {
    unsafe {
        let Some((xact, cid)) = statement_key() else { return };
        if MARK_XACT.load(Relaxed) != xact || MARK_CID.load(Relaxed) != cid {
            // Nested statements' marks are taken before the outer row's
            // trigger fires; anything else left here is stale.
            MARK_XACT.store(xact, Relaxed);
            MARK_CID.store(cid, Relaxed);
            for m in &MARKS {
                m.store(0, Relaxed);
            }
        }
        if MARKS.iter().any(|m| m.load(Relaxed) == migration) {
            return;
        }
        MARKS.iter().find(|m| m.load(Relaxed) == 0).unwrap_or(&MARKS[0]).store(migration, Relaxed);
    }
}

/// Take `migration`'s mark for this statement's current row: whether the
/// row left the new column out.
pub(crate) unsafe fn take_mark(migration: i64) -> bool {
    unsafe {
        if MARKS.iter().all(|m| m.load(Relaxed) == 0) {
            return false;
        }
        let Some((xact, cid)) = statement_key() else { return false };
        if MARK_XACT.load(Relaxed) != xact || MARK_CID.load(Relaxed) != cid {
            return false;
        }
        match MARKS.iter().find(|m| m.load(Relaxed) == migration) {
            Some(m) => {
                m.store(0, Relaxed);
                true
            }
            None => false,
        }
    }
}

/// The default the new column carries during the migration: the mark, and
/// as its value `value` (the old column's default when that is not
/// volatile, so `SET new = DEFAULT` and a carried foreign key's ON DELETE
/// SET DEFAULT give what the old column would; else NULL).
pub(crate) fn default_sql(migration: i64, value: Option<&str>, type_sql: &str) -> String {
    match value {
        Some(v) => format!("zdm.unwritten({migration}, ({v})::{type_sql})"),
        None => format!("zdm.unwritten({migration}, NULL::{type_sql})"),
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_zdm_unwritten() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `zdm.unwritten(migration bigint, value anyelement) → anyelement`,
/// VOLATILE, not strict: marks the row and returns `value`.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn zdm_unwritten(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        pg_sys::submodules::panic::pgrx_extern_c_guard(move || {
            let args = (*fcinfo).args.as_ptr();
            let id = *args;
            if !id.isnull {
                mark(id.value.value() as i64);
            }
            let value = *args.add(1);
            (*fcinfo).isnull = value.isnull;
            value.value
        })
    }
}

/// The migration id in a sync trigger's name (`zdm_sync_<id>`), 0 if none.
pub(crate) unsafe fn migration_of(trigger: *const pg_sys::Trigger) -> i64 {
    unsafe {
        let name = std::ffi::CStr::from_ptr((*trigger).tgname).to_bytes();
        name.strip_prefix(b"zdm_sync_")
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|id| id.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every UPDATE combination against the table in the module comment.
    #[test]
    fn update_table_is_total_and_follows_the_statement() {
        for bits in 0..32u8 {
            let b = |i: u8| bits & (1 << i) != 0;
            let u = Update { old_written: b(0), new_written: b(1), old_changed: b(2), new_changed: b(3), waiting: b(4) };
            let a = on_update(u);
            if u.new_written && !u.old_written {
                assert_eq!(a, Action::NewToOld, "{u:?}");
            }
            if u.old_written && !u.new_written {
                assert_eq!(a, Action::OldToNew, "{u:?}");
            }
            if !u.old_written && !u.new_written {
                assert_eq!(a, if u.waiting { Action::OldToNew } else { Action::Keep }, "{u:?}");
            }
        }
        assert_eq!(on_insert(Some(false), false, true), Action::NewToOld);
        assert_eq!(on_insert(Some(true), false, true), Action::OldToNew);
        assert_eq!(on_insert(None, false, true), Action::OldToNew);
    }
}
