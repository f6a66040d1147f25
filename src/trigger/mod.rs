//! The sync triggers, plain C-ABI trigger functions (no SPI, no name lookups
//! per row). This file: a rename's trigger, which keeps the old and the new
//! column equal on every row written while old and new application versions
//! run side by side. `convert`: a type change's trigger, which computes the
//! new column from the old one with the conversion expression. `fill`: an
//! added column's trigger, which fills it from the row.
//!
//! Which column wins is decided from what the statement wrote — the UPDATE's
//! SET list, whether an INSERT left the new column out — never from values
//! alone: `written` holds that decision table. Values only settle that a row
//! already holds the same value in both columns (nothing to do).
//!
//! Attribute numbers, the row layout and the buffer a changed row is formed
//! in are resolved once per statement (`resolved`, kept in fn_extra); the
//! two columns are read off the row's bytes (`locate`) and a changed row is
//! spliced from them (`splice`). Since it runs no SQL, search_path cannot
//! influence it; it is installed schema-qualified.

pub mod bypass;
mod compare;
pub mod convert;
pub mod fill;
pub(crate) mod locate;
pub(crate) mod splice;
pub(crate) mod written;

pub(crate) use compare::{raw_same, same, value_same};
use crate::errors::{raise, Code};
use pgrx::pg_sys;
use std::ffi::CStr;

/// What is wrong with a migration's sync trigger, if anything: it must be
/// there under its name, run zdm's own function, BEFORE INSERT OR UPDATE
/// FOR EACH ROW with no WHEN condition or column list, enabled ALWAYS (so
/// that replication apply fires it too). The guard refuses the DDL that
/// would change any of that; this is the check before trusting it.
pub fn sync_trigger_fault(relid: pg_sys::Oid, name: &str) -> Option<&'static str> {
    // On a partitioned table: on every relation of the tree (PostgreSQL
    // clones it to each partition; a clone can be disabled on its own).
    let row = crate::spi::first_row(
        &format!(
            "SELECT pg_catalog.bool_and(t.tgfoid IN ('zdm.sync_trigger()'::pg_catalog.regprocedure, 'zdm.convert_trigger()'::pg_catalog.regprocedure, 'zdm.fill_trigger()'::pg_catalog.regprocedure)), \
                    pg_catalog.bool_and(t.tgenabled = 'A'), \
                    pg_catalog.bool_and(t.tgtype::int = 23 AND t.tgqual IS NULL AND pg_catalog.cardinality(t.tgattr::int2[]) = 0), \
                    pg_catalog.bool_and(t.oid IS NOT NULL) \
               FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND t.tgname = $2 \
              WHERE c.oid IN {} AND c.relkind IN ('r', 'p')",
            crate::tree::self_and_descendants_sql(1)
        ),
        &[relid.into(), name.into()],
        |r| {
            Ok(r.get::<bool>(4)?.unwrap_or(false).then_some((
                r.get::<bool>(1)?.unwrap_or(false),
                r.get::<bool>(2)?.unwrap_or(false),
                r.get::<bool>(3)?.unwrap_or(false),
            )))
        },
    )
    .flatten();
    match row {
        None => Some("is missing"),
        Some((false, _, _)) => Some("no longer runs zdm's function"),
        Some((_, _, false)) => Some("no longer fires BEFORE INSERT OR UPDATE FOR EACH ROW on every row"),
        Some((_, false, _)) => Some("is no longer enabled ALWAYS"),
        Some(_) => None,
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_zdm_sync_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `zdm.sync_trigger(old_column, new_column)`, BEFORE INSERT OR UPDATE FOR EACH ROW.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn zdm_sync_trigger(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe { pg_sys::submodules::panic::pgrx_extern_c_guard(move || sync_row(fcinfo)) }
}

use written::Action;

unsafe fn sync_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "zdm.sync_trigger() can only be called as a trigger",
                "zdm installs this trigger itself; do not call it directly.",
            );
        }
        let td = context as *mut pg_sys::TriggerData;
        let event = (*td).tg_event;
        let is_row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
        let is_before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let is_insert = op == pg_sys::TRIGGER_EVENT_INSERT;
        let is_update = op == pg_sys::TRIGGER_EVENT_UPDATE;
        if !is_row || !is_before || !(is_insert || is_update) {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "zdm.sync_trigger() must run BEFORE INSERT OR UPDATE FOR EACH ROW",
                "zdm installs this trigger itself; do not create it by hand.",
            );
        }
        let rel = (*td).tg_relation;
        let row = if is_update { (*td).tg_newtuple } else { (*td).tg_trigtuple };
        let tupdesc = (*rel).rd_att;
        let (old_att, new_att, buffer, no_earlier_trigger, layout, marked) = resolved(fcinfo, (*td).tg_trigger, rel);
        // The mark an INSERT leaving the new column out left (an UPDATE
        // setting it to DEFAULT leaves one too): taken for every row, so
        // none is left over for a later row.
        let (new_left_out, old_left_out) = match marked {
            Some((migration, old_marked)) => {
                let (new, old) = written::take_marks(migration, old_marked);
                (Some(new), old)
            }
            None => (None, None),
        };
        // An UPDATE that names neither column, with no BEFORE trigger ahead
        // of this one: both carry the old row's values unchanged. Nothing to
        // do unless the row still waits for its backfill — decided from the
        // null bitmap, without deforming anything.
        if is_update && no_earlier_trigger && outside_set_list(td, old_att, new_att) {
            let waiting = is_null(row, new_att, tupdesc) && !is_null(row, old_att, tupdesc);
            if !waiting {
                return pg_sys::Datum::from(row);
            }
        }
        let att = crate::compat::attr(tupdesc, (old_att - 1) as usize);

        // Values from the executor's slots, deformed at most once per row up
        // to the later of the two columns (an UPDATE's new slot usually holds
        // every value already).
        let last = old_att.max(new_att);
        let row_slot = if is_update { (*td).tg_newslot } else { (*td).tg_trigslot };
        // The two columns and those after them read from the row's bytes
        // (locate.rs): a new column is the table's last, so this is usually
        // all a changed row needs. Else the executor's slot, deformed.
        let mut tail_read = locate::Tail::EMPTY;
        let tail = locate::read_tail_with(row, tupdesc, &layout, &mut tail_read).then_some(&tail_read);
        let ((old_val, old_null), (new_val, new_null)) = match tail {
            Some(tail) => {
                let found = (tail.value((old_att - 1) as usize), tail.value((new_att - 1) as usize));
                #[cfg(debug_assertions)]
                locate::check(found, row_slot, tupdesc, old_att, new_att, last);
                found
            }
            None => (slot_value(row_slot, old_att, last), slot_value(row_slot, new_att, last)),
        };
        // The row as written already holds the same value in both columns:
        // whatever happened, there is nothing to sync (every action below
        // would copy an equal value). This is the common case — application
        // writes to other columns of rows already in sync (a rename's own
        // backfill UPDATE runs without this trigger: `bypass`) — so it is
        // decided from the new row alone,
        // first by the stored bytes (no detoasting).
        if raw_same(att, old_null, old_val, new_null, new_val) {
            return pg_sys::Datum::from(row);
        }
        // Each pair's bytes are compared once; its values only when the
        // decision needs them (`value_same`: only for TOASTed, compressed or
        // differently headed copies can it differ from the bytes).
        let now_same = || value_same(att, old_null, old_val, new_null, new_val);
        // An UPDATE's old row, read once: every path below needs it.
        let action = if is_update {
            if now_same() {
                return pg_sys::Datum::from(row);
            }
            let waiting = new_null && !old_null; // not yet backfilled
            let (in_old, in_new) = (in_set_list(td, old_att), in_set_list(td, new_att));
            if no_earlier_trigger && in_old != in_new {
                // One column in the SET list and no earlier trigger: the
                // statement alone decides; the old row need not be read.
                written::on_update(written::Update { old_written: in_old, new_written: in_new, old_changed: false, new_changed: false, waiting })
            } else {
                let ((was_old, was_old_null), (was_new, was_new_null)) = old_values(td, row_slot, tail, tupdesc, old_att, new_att, last);
                // Each pair's bytes first; values only where bytes differ.
                let old_changed = || !raw_same(att, was_old_null, was_old, old_null, old_val) && !value_same(att, was_old_null, was_old, old_null, old_val);
                let new_changed = || !raw_same(att, was_new_null, was_new, new_null, new_val) && !value_same(att, was_new_null, was_new, new_null, new_val);
                // Behind an earlier BEFORE trigger, what it changed counts as written.
                let old_written = in_old || (!no_earlier_trigger && old_changed());
                let new_written = in_new || (!no_earlier_trigger && new_changed());
                let both = old_written && new_written;
                written::on_update(written::Update {
                    old_written,
                    new_written,
                    old_changed: both && old_changed(),
                    new_changed: both && new_changed(),
                    waiting,
                })
            }
        } else if now_same() {
            return pg_sys::Datum::from(row);
        } else {
            written::on_insert(new_left_out, old_left_out, old_null, new_null)
        };

        let (target, value, is_null) = match action {
            Action::Keep => return pg_sys::Datum::from(row),
            Action::OldToNew => (new_att, old_val, old_null),
            Action::NewToOld => (old_att, new_val, new_null),
        };
        pg_sys::Datum::from(with_value(row, row_slot, tupdesc, target, value, is_null, buffer, tail))
    }
}

/// An UPDATE's old row's values of the two columns: walked from where the
/// old and the new row stop sharing their bytes (`locate`), or else read
/// from the old row's slot, deformed up to `last`.
unsafe fn old_values(
    td: *const pg_sys::TriggerData,
    new_slot: *mut pg_sys::TupleTableSlot,
    new_tail: Option<&locate::Tail>,
    tupdesc: pg_sys::TupleDesc,
    old_att: i32,
    new_att: i32,
    last: i32,
) -> ((pg_sys::Datum, bool), (pg_sys::Datum, bool)) {
    unsafe {
        let first = old_att.min(new_att);
        let mut tail = [(pg_sys::Datum::from(0usize), false); locate::MAX_TAIL];
        let (old, new) = ((*td).tg_trigtuple, (*td).tg_newtuple);
        let found = match new_tail {
            Some(t) => locate::trailing_values(old, new, tupdesc, first, last, t.from[(first - 1) as usize - t.first], &mut tail),
            None => locate::trailing_values_by_slot(old, new, new_slot, tupdesc, first, last, &mut tail),
        };
        if found {
            let found = (tail[(old_att - first) as usize], tail[(new_att - first) as usize]);
            #[cfg(debug_assertions)]
            locate::check(found, (*td).tg_trigslot, tupdesc, old_att, new_att, last);
            return found;
        }
        let slot = (*td).tg_trigslot;
        (slot_value(slot, old_att, last), slot_value(slot, new_att, last))
    }
}

/// Room for one row's values and null flags, allocated once per statement
/// (or per compiled conversion) instead of for every row written.
#[derive(Clone, Copy)]
pub(crate) struct RowBuffer {
    values: *mut pg_sys::Datum,
    nulls: *mut bool,
    natts: i32,
}

impl RowBuffer {
    pub(crate) unsafe fn new_in(context: pg_sys::MemoryContext, natts: i32) -> RowBuffer {
        unsafe {
            let n = natts.max(1) as usize;
            RowBuffer {
                values: pg_sys::MemoryContextAlloc(context, n * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum,
                nulls: pg_sys::MemoryContextAlloc(context, n * std::mem::size_of::<bool>()) as *mut bool,
                natts,
            }
        }
    }
}

/// `row` with attribute `att` set to `value`: a new heap tuple, spliced
/// from the row's bytes (`splice`) and its `tail` when the caller read one
/// (`locate`) or the executor's slot, or else formed from the values the
/// executor's slot already holds (heap_modify_tuple_by_cols would deform the
/// whole row again first), copied into `buffer` so the slot itself is never
/// touched. The identity of the row (ctid, table) is carried over.
pub(crate) unsafe fn with_value(
    row: pg_sys::HeapTuple,
    slot: *mut pg_sys::TupleTableSlot,
    tupdesc: pg_sys::TupleDesc,
    att: i32,
    value: pg_sys::Datum,
    is_null: bool,
    buffer: RowBuffer,
    tail: Option<&locate::Tail>,
) -> pg_sys::HeapTuple {
    unsafe {
        if let Some(tuple) = tail.and_then(|tail| splice::spliced_from_tail(row, tupdesc, tail, att, value, is_null)) {
            #[cfg(debug_assertions)]
            splice::check(tuple, row, tupdesc, att, value, is_null);
            return tuple;
        }
        let natts = (*tupdesc).natts;
        // The caches that own the buffer are keyed by this descriptor, so
        // this holds; if not, a buffer for this row only.
        let buffer = if natts == buffer.natts { buffer } else { RowBuffer::new_in(pg_sys::CurrentMemoryContext, natts) };
        if i32::from((*slot).tts_nvalid) < natts {
            pg_sys::slot_getsomeattrs_int(slot, natts);
        }
        if let Some(tuple) = splice::spliced(row, slot, tupdesc, att, value, is_null) {
            #[cfg(debug_assertions)]
            splice::check(tuple, row, tupdesc, att, value, is_null);
            return tuple;
        }
        let n = natts as usize;
        std::ptr::copy_nonoverlapping((*slot).tts_values, buffer.values, n);
        std::ptr::copy_nonoverlapping((*slot).tts_isnull, buffer.nulls, n);
        *buffer.values.add((att - 1) as usize) = value;
        *buffer.nulls.add((att - 1) as usize) = is_null;
        let formed = pg_sys::heap_form_tuple(tupdesc, buffer.values, buffer.nulls);
        (*(*formed).t_data).t_ctid = (*(*row).t_data).t_ctid;
        (*formed).t_self = (*row).t_self;
        (*formed).t_tableOid = (*row).t_tableOid;
        formed
    }
}

/// Attribute `a` is in the UPDATE's SET list.
#[inline]
pub(crate) unsafe fn in_set_list(td: *const pg_sys::TriggerData, a: i32) -> bool {
    unsafe { in_set(a - pg_sys::FirstLowInvalidHeapAttributeNumber, (*td).tg_updatedcols) }
}

/// Neither attribute is in the UPDATE's SET list (what the statement
/// assigns; a BEFORE trigger's changes are not in it).
pub(crate) unsafe fn outside_set_list(td: *const pg_sys::TriggerData, a: i32, b: i32) -> bool {
    unsafe {
        let set = (*td).tg_updatedcols;
        let offset = pg_sys::FirstLowInvalidHeapAttributeNumber;
        !in_set(a - offset, set) && !in_set(b - offset, set)
    }
}

/// bms_is_member, read in place: two calls per row through pgrx's FFI guard
/// (a sigsetjmp each) cost more than the bit test itself.
#[inline]
unsafe fn in_set(x: i32, set: *const pg_sys::Bitmapset) -> bool {
    unsafe {
        if set.is_null() || x < 0 {
            return false;
        }
        let bits = 8 * std::mem::size_of::<pg_sys::bitmapword>() as i32;
        let word = x / bits;
        word < (*set).nwords && *(*set).words.as_ptr().add(word as usize) & (1 << (x % bits)) != 0
    }
}

/// heap_attisnull for a user attribute, read in place (see `in_set`): an
/// attribute past the tuple's own count is NULL unless it has a missing
/// value (ADD COLUMN … DEFAULT).
#[inline]
pub(crate) unsafe fn is_null(row: pg_sys::HeapTuple, att: i32, tupdesc: pg_sys::TupleDesc) -> bool {
    unsafe {
        let header = (*row).t_data;
        if att > ((*header).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as i32 {
            return !crate::compat::attr(tupdesc, (att - 1) as usize).atthasmissing;
        }
        if (*header).t_infomask as u32 & pg_sys::HEAP_HASNULL == 0 {
            return false;
        }
        let i = (att - 1) as usize;
        *(*header).t_bits.as_ptr().add(i >> 3) & (1 << (i & 7)) == 0
    }
}

/// No BEFORE ROW UPDATE trigger on `rel` fires ahead of trigger `tgoid`
/// (triggers fire in name order), so the row this trigger gets is the row
/// the statement formed. False when `tgoid` is not in the relation's list.
/// Read once per statement, at its first row, when the executor's own copy
/// of the list (taken at its start) is the same; a trigger dropped, renamed
/// or replaced (DROP TRIGGER, ALTER TRIGGER … RENAME, CREATE OR REPLACE
/// TRIGGER do not check the table is in use) by code the statement itself
/// runs before its first row could differ — a row that leaves out of sync
/// then is what contract's verification refuses.
pub(crate) unsafe fn no_earlier_before_update(rel: pg_sys::Relation, tgoid: pg_sys::Oid) -> bool {
    unsafe {
        let desc = (*rel).trigdesc;
        if desc.is_null() {
            return false;
        }
        let before_update = (pg_sys::TRIGGER_TYPE_ROW | pg_sys::TRIGGER_TYPE_BEFORE | pg_sys::TRIGGER_TYPE_UPDATE) as i16;
        for i in 0..(*desc).numtriggers as usize {
            let t = &*(*desc).triggers.add(i);
            if t.tgoid == tgoid {
                return true;
            }
            if t.tgtype & before_update == before_update {
                return false;
            }
        }
        false
    }
}

/// Value and null flag of attribute `att` in `slot`, deforming the slot up
/// to `upto` first if it has not got that far.
#[inline]
pub(crate) unsafe fn slot_value(slot: *mut pg_sys::TupleTableSlot, att: i32, upto: i32) -> (pg_sys::Datum, bool) {
    unsafe {
        if i32::from((*slot).tts_nvalid) < upto {
            pg_sys::slot_getsomeattrs_int(slot, upto);
        }
        let i = (att - 1) as usize;
        (*(*slot).tts_values.add(i), *(*slot).tts_isnull.add(i))
    }
}

/// The two attribute numbers, resolved once per statement: kept in the
/// trigger call's `fn_extra` (per-query memory) together with the tuple
/// descriptor and trigger they were checked against, and the buffer a
/// changed row is formed in. Within a statement the
/// table is locked against DDL, so the descriptor cannot change under it; a
/// different one (a new statement, a rebuilt relcache entry) is checked again.
#[repr(C)]
struct Resolved {
    tupdesc: pg_sys::TupleDesc,
    natts: i32,
    tgoid: pg_sys::Oid,
    old_att: i32,
    new_att: i32,
    buffer: RowBuffer,
    /// no BEFORE UPDATE trigger fires ahead of this one
    no_earlier_trigger: bool,
    /// how the attributes before the two columns are laid out
    layout: locate::Layout,
    /// the migration whose mark tells an INSERT that left the new column
    /// out (`written`), and whether the old column's default carries a mark
    /// too; None: the new column's default carries no mark
    marked: Option<(i64, bool)>,
}

type ResolvedParts = (i32, i32, RowBuffer, bool, locate::Layout, Option<(i64, bool)>);

unsafe fn resolved(fcinfo: pg_sys::FunctionCallInfo, trigger: *const pg_sys::Trigger, rel: pg_sys::Relation) -> ResolvedParts {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let tupdesc = (*rel).rd_att;
        let cached = (*flinfo).fn_extra as *mut Resolved;
        if !cached.is_null()
            && (*cached).tupdesc == tupdesc
            && (*cached).natts == (*tupdesc).natts
            && (*cached).tgoid == (*trigger).tgoid
        {
            return ((*cached).old_att, (*cached).new_att, (*cached).buffer, (*cached).no_earlier_trigger, (*cached).layout, (*cached).marked);
        }
        let (old_att, new_att) = attnums(trigger, rel);
        let natts = (*tupdesc).natts;
        let (slot, buffer) = if cached.is_null() {
            let slot = pg_sys::MemoryContextAlloc((*flinfo).fn_mcxt, std::mem::size_of::<Resolved>()) as *mut Resolved;
            (slot, RowBuffer::new_in((*flinfo).fn_mcxt, natts))
        } else if (*cached).buffer.natts == natts {
            (cached, (*cached).buffer)
        } else {
            // Rare (a descriptor rebuilt with another column count): the old
            // buffer stays in the per-query context until the query ends.
            (cached, RowBuffer::new_in((*flinfo).fn_mcxt, natts))
        };
        // Kept from the statement's first row (see no_earlier_before_update).
        let no_earlier_trigger = if !cached.is_null() && (*cached).tgoid == (*trigger).tgoid { (*cached).no_earlier_trigger } else { no_earlier_before_update(rel, (*trigger).tgoid) };
        let layout = locate::Layout::new(tupdesc, old_att.min(new_att), (*flinfo).fn_mcxt);
        // The guard lets nobody change either column's default.
        let migration = written::migration_of(trigger);
        let marked = (migration > 0 && written::marked_default(tupdesc, new_att) == Some(migration))
            .then(|| (migration, written::marked_default(tupdesc, old_att) == Some(-migration)));
        slot.write(Resolved { tupdesc, natts, tgoid: (*trigger).tgoid, old_att, new_att, buffer, no_earlier_trigger, layout, marked });
        (*flinfo).fn_extra = slot as *mut std::ffi::c_void;
        (old_att, new_att, buffer, no_earlier_trigger, layout, marked)
    }
}

/// Resolve the attribute numbers named by the trigger's two arguments,
/// checking them against the current tuple descriptor.
unsafe fn attnums(trigger: *const pg_sys::Trigger, rel: pg_sys::Relation) -> (i32, i32) {
    unsafe {
        let tupdesc = (*rel).rd_att;
        if (*trigger).tgnargs != 2 {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "zdm.sync_trigger() needs two arguments: the old and the new column name",
                "zdm installs this trigger itself; do not create it by hand.",
            );
        }
        let old_name = CStr::from_ptr(*(*trigger).tgargs);
        let new_name = CStr::from_ptr(*(*trigger).tgargs.add(1));
        let natts = (*tupdesc).natts;
        let name_at = |attnum: i32| -> Option<&CStr> {
            if attnum < 1 || attnum > natts {
                return None;
            }
            let a = crate::compat::attr(tupdesc, (attnum - 1) as usize);
            if a.attisdropped { None } else { Some(CStr::from_ptr(a.attname.data.as_ptr())) }
        };
        let find = |name: &CStr| (1..=natts).find(|&i| name_at(i) == Some(name));
        let relname = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy();
        let (Some(o), Some(n)) = (find(old_name), find(new_name)) else {
            raise(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "zdm sync trigger on table {}: column {} or {} no longer exists",
                    crate::spi::ident(&relname),
                    crate::spi::ident(&old_name.to_string_lossy()),
                    crate::spi::ident(&new_name.to_string_lossy())
                ),
                "A column under migration was dropped by hand. Call zdm.abort() for this migration.",
            );
        };
        if !same_type(tupdesc, o, n) {
            raise(
                Code::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "zdm sync trigger on table {}: columns {} and {} no longer have the same type",
                    crate::spi::ident(&relname),
                    crate::spi::ident(&old_name.to_string_lossy()),
                    crate::spi::ident(&new_name.to_string_lossy())
                ),
                "A column under migration was altered by hand. Call zdm.abort() for this migration.",
            );
        }
        (o, n)
    }
}

unsafe fn same_type(tupdesc: pg_sys::TupleDesc, a: i32, b: i32) -> bool {
    unsafe {
        let a = crate::compat::attr(tupdesc, (a - 1) as usize);
        let b = crate::compat::attr(tupdesc, (b - 1) as usize);
        a.atttypid == b.atttypid && a.atttypmod == b.atttypmod
    }
}

/// The call of a trigger that computes a column (`convert`, `fill`), checked:
/// it must be a trigger call BEFORE INSERT OR UPDATE FOR EACH ROW, else
/// 39P01 naming `function`. Returns (trigger data, is INSERT, is UPDATE).
pub(crate) unsafe fn before_row_write(fcinfo: pg_sys::FunctionCallInfo, function: &str) -> (*mut pg_sys::TriggerData, bool, bool) {
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                format!("{function} can only be called as a trigger"),
                "zdm installs this trigger itself; do not call it directly.",
            );
        }
        let td = context as *mut pg_sys::TriggerData;
        let event = (*td).tg_event;
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let (is_insert, is_update) = (op == pg_sys::TRIGGER_EVENT_INSERT, op == pg_sys::TRIGGER_EVENT_UPDATE);
        if event & pg_sys::TRIGGER_EVENT_ROW == 0
            || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
            || !(is_insert || is_update)
        {
            raise(
                Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                format!("{function} must run BEFORE INSERT OR UPDATE FOR EACH ROW"),
                "zdm installs this trigger itself; do not create it by hand.",
            );
        }
        (td, is_insert, is_update)
    }
}

/// The row a trigger call is about, for an error message: an UPDATE's old
/// row by its ctid, `row (block,offset)`, or `a new row`.
pub(crate) unsafe fn row_name(td: *const pg_sys::TriggerData, is_update: bool) -> String {
    unsafe {
        if !is_update {
            return "a new row".to_string();
        }
        let tid = (*(*td).tg_trigtuple).t_self;
        let block = ((tid.ip_blkid.bi_hi as u32) << 16) | tid.ip_blkid.bi_lo as u32;
        format!("row ({block},{})", tid.ip_posid)
    }
}
