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
//!   reach the new column otherwise (the guard refuses setting one). The
//!   old column's default carries a mark too (`zdm.unwritten(-<id>, <its
//!   default>)`), so a statement naming both columns — a copy of whole rows
//!   — is told from one naming only the new column. An identity, or a
//!   domain's default, on the old column carries none (a column default
//!   would no longer follow ALTER DOMAIN): there, naming the new column
//!   decides, and a whole-row copy of a row the backfill had not reached
//!   loses its old value.
//!
//! The table (`w` = written, `waiting` = new IS NULL and old IS NOT NULL,
//! the row the backfill has not reached; rows already equal are left as they
//! are before any of this):
//!
//! | statement | old column     | new column        | action                         |
//! |-----------|----------------|-------------------|--------------------------------|
//! | INSERT    | any            | left out          | new := old                     |
//! | INSERT    | left out       | named (NULL too)  | old := new                     |
//! | INSERT    | named          | named, NULL       | new := old (a copy of a row the backfill had not reached) |
//! | INSERT    | named          | named, not NULL   | old := new                     |
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
use std::ffi::CStr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

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

/// An INSERT. `new_left_out`: Some(whether the new column was left out)
/// when the migration marks it, None for a migration without the mark
/// (decided by value, as before the mark existed). `old_left_out`: the same
/// for the old column, whose default carries a mark too unless it is an
/// identity or a domain's default.
pub(crate) fn on_insert(new_left_out: Option<bool>, old_left_out: Option<bool>, old_null: bool, new_null: bool) -> Action {
    match (new_left_out, old_left_out) {
        (Some(true), _) => Action::OldToNew,
        // Both columns named, the new one NULL: a copy of a row the backfill
        // had not reached (INSERT … SELECT *, a COPY of every column).
        (Some(false), Some(false)) if new_null && !old_null => Action::OldToNew,
        (Some(false), _) => Action::NewToOld,
        (None, _) if !new_null => Action::NewToOld,
        (None, _) if !old_null => Action::OldToNew,
        (None, _) => Action::Keep,
    }
}

// The marks: which migrations' new columns the rows being inserted left
// out. Each is keyed by the transaction (its local id), the statement (its
// active snapshot and that snapshot's command id: nested statements that
// earlier triggers run have their own, and take their own marks before the
// outer row's trigger fires) and the migration. A mark is taken by exactly
// that key; marks of earlier transactions are dropped. Plain statics: a
// backend runs one thread, and these are touched once per row.
const SLOTS: usize = 8;
static USED: AtomicUsize = AtomicUsize::new(0);
static MARK_XACT_CID: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static MARK_SNAPSHOT: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static MARK_MIGRATION: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
static MARK_SUBXACT: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
static NEXT_VICTIM: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" {
    // PostgreSQL's own, declared here to be called without pgrx's error
    // guard (a sigsetjmp per call, on every row): neither can raise.
    #[link_name = "ActiveSnapshotSet"]
    fn active_snapshot_set() -> bool;
    #[link_name = "GetActiveSnapshot"]
    fn active_snapshot() -> pg_sys::Snapshot;
    #[link_name = "GetCurrentSubTransactionId"]
    fn current_subxact() -> pg_sys::SubTransactionId;
}

/// (local transaction id << 32 | command id, active snapshot address,
/// subtransaction): a statement after ROLLBACK TO SAVEPOINT may get the same
/// command id and snapshot address as the failed one, never its
/// subtransaction.
#[inline]
unsafe fn statement_key() -> Option<(u64, usize, u32)> {
    unsafe {
        if pg_sys::MyProc.is_null() || !active_snapshot_set() {
            return None;
        }
        let snapshot = active_snapshot();
        Some(((u64::from(local_xid()) << 32) | u64::from((*snapshot).curcid), snapshot as usize, current_subxact()))
    }
}

use crate::compat::local_xid;

/// Leave a mark for `migration` (the default was evaluated for this row).
unsafe fn mark(migration: i64) {
    unsafe {
        let Some((xact_cid, snapshot, subxact)) = statement_key() else { return };
        let xact = xact_cid >> 32;
        let mut free = None;
        for i in 0..SLOTS {
            let m = MARK_MIGRATION[i].load(Relaxed);
            if m != 0 && MARK_XACT_CID[i].load(Relaxed) >> 32 != xact {
                MARK_MIGRATION[i].store(0, Relaxed); // an earlier transaction's
                USED.fetch_sub(1, Relaxed);
            } else if m == migration
                && MARK_XACT_CID[i].load(Relaxed) == xact_cid
                && MARK_SNAPSHOT[i].load(Relaxed) == snapshot
                && MARK_SUBXACT[i].load(Relaxed) == subxact
            {
                return; // already marked (a row whose trigger never fired)
            }
            if free.is_none() && MARK_MIGRATION[i].load(Relaxed) == 0 {
                free = Some(i);
            }
        }
        let slot = free.unwrap_or_else(|| {
            // Full (more nested statements than slots): reuse one.
            USED.fetch_sub(1, Relaxed);
            NEXT_VICTIM.fetch_add(1, Relaxed) % SLOTS
        });
        MARK_XACT_CID[slot].store(xact_cid, Relaxed);
        MARK_SNAPSHOT[slot].store(snapshot, Relaxed);
        MARK_SUBXACT[slot].store(subxact, Relaxed);
        MARK_MIGRATION[slot].store(migration, Relaxed);
        USED.fetch_add(1, Relaxed);
    }
}

/// Take migration `id`'s marks for this statement's current row: whether
/// the row left the new column out, and (when `old_marked`) the old one.
pub(crate) unsafe fn take_marks(id: i64, old_marked: bool) -> (bool, Option<bool>) {
    unsafe {
        if USED.load(Relaxed) == 0 {
            return (false, old_marked.then_some(false));
        }
        let Some(key) = statement_key() else { return (false, old_marked.then_some(false)) };
        (take_mark(id, key), old_marked.then(|| take_mark(-id, key)))
    }
}

fn take_mark(migration: i64, (xact_cid, snapshot, subxact): (u64, usize, u32)) -> bool {
    for i in 0..SLOTS {
        if MARK_MIGRATION[i].load(Relaxed) == migration
            && MARK_XACT_CID[i].load(Relaxed) == xact_cid
            && MARK_SNAPSHOT[i].load(Relaxed) == snapshot
            && MARK_SUBXACT[i].load(Relaxed) == subxact
        {
            MARK_MIGRATION[i].store(0, Relaxed);
            USED.fetch_sub(1, Relaxed);
            return true;
        }
    }
    false
}

/// A marked default: on the new column the mark is the migration id and
/// the value the old column's default when that is not volatile (so `SET
/// new = DEFAULT` and a carried foreign key's ON DELETE SET DEFAULT give
/// what the old column would; else NULL); on the old column the mark is
/// minus the id and the value its own default, evaluated once as before.
pub(crate) fn default_sql(mark: i64, value: Option<&str>, type_sql: &str) -> String {
    // A quoted literal becomes a bigint constant when parsed (a bare number
    // would be an int4 under a cast, not a constant `marked_default` reads).
    match value {
        Some(v) => format!("zdm.unwritten('{mark}'::bigint, ({v})::{type_sql})"),
        None => format!("zdm.unwritten('{mark}'::bigint, NULL::{type_sql})"),
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

/// The mark in attribute `att`'s default, if that default is
/// `zdm.unwritten(<mark>, …)`: read from the relation's descriptor, once per
/// statement.
pub(crate) unsafe fn marked_default(tupdesc: pg_sys::TupleDesc, att: i32) -> Option<i64> {
    unsafe {
        let constr = (*tupdesc).constr;
        if constr.is_null() {
            return None;
        }
        let defaults = std::slice::from_raw_parts((*constr).defval, (*constr).num_defval as usize);
        let adbin = defaults.iter().find(|d| i32::from(d.adnum) == att)?.adbin;
        mark_of(pg_sys::stringToNode(adbin) as *mut pg_sys::Node).map(|(mark, _)| mark)
    }
}

/// (mark, value expression) of a `zdm.unwritten(<mark>, value)` call.
unsafe fn mark_of(node: *mut pg_sys::Node) -> Option<(i64, *mut pg_sys::Node)> {
    unsafe {
        // A column with a type modifier (varchar(20), numeric(10,2)) or a
        // domain type stores its default under an implicit length coercion
        // or domain check: the call is beneath it.
        let node = if node.is_null() { node } else { pg_sys::strip_implicit_coercions(node) };
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_FuncExpr {
            return None;
        }
        let f = node as *mut pg_sys::FuncExpr;
        if !crate::introspect::is_zdm_function((*f).funcid, c"unwritten") {
            return None;
        }
        let args = (*f).args;
        if args.is_null() || (*args).length != 2 {
            return None;
        }
        let (mark, value) = ((*(*args).elements).ptr_value as *mut pg_sys::Node, (*(*args).elements.add(1)).ptr_value as *mut pg_sys::Node);
        if (*mark).type_ != pg_sys::NodeTag::T_Const || (*(mark as *mut pg_sys::Const)).constisnull {
            return None;
        }
        Some(((*(mark as *mut pg_sys::Const)).constvalue.value() as i64, value))
    }
}

/// The default a marked column had before the mark, as SQL to give it back
/// (contract, abort): Some(None) when it had none, None when the column's
/// default carries no mark.
pub(crate) fn unmarked_default(relid: pg_sys::Oid, attnum: i16) -> Option<Option<String>> {
    let (adbin, relname) = crate::spi::first_row(
        "SELECT d.adbin::text, c.relname::text FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.adrelid \
          WHERE d.adrelid OPERATOR(pg_catalog.=) $1 AND d.adnum OPERATOR(pg_catalog.=) $2",
        &[relid.into(), attnum.into()],
        |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())),
    )?;
    unsafe {
        let tree = std::ffi::CString::new(adbin).ok()?;
        let (_, value) = mark_of(pg_sys::stringToNode(tree.as_ptr()) as *mut pg_sys::Node)?;
        if is_null_constant(value) {
            return Some(None);
        }
        let relname = std::ffi::CString::new(relname).ok()?;
        let context = pg_sys::deparse_context_for(relname.as_ptr(), relid);
        Some(Some(CStr::from_ptr(pg_sys::deparse_expression(value, context, false, false)).to_string_lossy().into_owned()))
    }
}

/// `NULL::type`, through the casts and domain checks around it.
unsafe fn is_null_constant(mut node: *mut pg_sys::Node) -> bool {
    unsafe {
        loop {
            if node.is_null() {
                return false;
            }
            node = match (*node).type_ {
                pg_sys::NodeTag::T_Const => return (*(node as *mut pg_sys::Const)).constisnull,
                pg_sys::NodeTag::T_RelabelType => (*(node as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node,
                pg_sys::NodeTag::T_CoerceToDomain => (*(node as *mut pg_sys::CoerceToDomain)).arg as *mut pg_sys::Node,
                pg_sys::NodeTag::T_CoerceViaIO => (*(node as *mut pg_sys::CoerceViaIO)).arg as *mut pg_sys::Node,
                _ => return false,
            };
        }
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
        assert_eq!(on_insert(Some(false), Some(true), false, true), Action::NewToOld);
        assert_eq!(on_insert(Some(false), None, false, true), Action::NewToOld);
        assert_eq!(on_insert(Some(false), Some(false), false, true), Action::OldToNew);
        assert_eq!(on_insert(Some(false), Some(false), false, false), Action::NewToOld);
        assert_eq!(on_insert(Some(true), Some(false), false, false), Action::OldToNew);
        assert_eq!(on_insert(None, None, false, true), Action::OldToNew);
    }
}
