//! A type change's trigger, `zdm.convert_trigger(old_column, new_column,
//! expression)`, BEFORE INSERT OR UPDATE FOR EACH ROW: on every write that
//! reaches the old column the new column is set to the conversion of the
//! row's old column — the way PostgreSQL computes a stored generated
//! column. The expression arrives as the node tree expand analysed (and
//! checked immutable), is planned once per trigger and backend, and is
//! evaluated per row by the executor: no SPI, no SQL text per row. The old
//! column is read off the row's bytes into a private slot the expression
//! reads (`locate`), and the result is spliced into the row (`with_value`);
//! the executor's slot is never written. An UPDATE
//! that reaches neither column (not in its SET list, and no BEFORE trigger
//! ahead changed their stored bytes) keeps the value an earlier write or
//! the backfill converted.
//!
//! The expression tree comes from zdm's catalog (the migration whose
//! trigger this is), never from the trigger's arguments. The compiled form
//! is cached per trigger in its own memory context and rebuilt after any
//! relcache invalidation of the table or any pg_proc change, so a replaced
//! function is never run from a stale plan; a conversion that re-enters
//! itself is refused. An error converting a row names the row.

use super::{no_earlier_before_update, is_null, locate, outside_set_list, raw_same, same, slot_value, with_value, RowBuffer};
use crate::errors::{raise, raise_with_detail, Code};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::collections::HashMap;
use std::ffi::{CStr, CString};

struct Compiled {
    relid: pg_sys::Oid,
    /// the relation's tuple descriptor it was built for
    tupdesc: pg_sys::TupleDesc,
    old_att: i32,
    new_att: i32,
    context: pg_sys::MemoryContext,
    state: *mut pg_sys::ExprState,
    econtext: *mut pg_sys::ExprContext,
    /// where a converted row is formed
    buffer: RowBuffer,
    /// how the attributes before the two columns are laid out
    layout: locate::Layout,
    /// a virtual slot (on a copy of the descriptor, so nothing pins the
    /// relation's) holding just the old column's value, read off the row's
    /// bytes: the expression reads nothing else, and the row is not deformed
    scan: *mut pg_sys::TupleTableSlot,
    /// the conversion's output depends on a setting (`pinned_settings`)
    pinned: bool,
}

thread_local! {
    static COMPILED: RefCell<HashMap<u32, Compiled>> = RefCell::new(HashMap::new());
}
// Per-row state as plain statics, not thread_locals (each access to one of
// those is a call in a shared library): a backend runs one thread.
/// A function definition or a table with a compiled conversion changed
/// since the cache was filled.
static STALE: AtomicBool = AtomicBool::new(false);
static CALLBACK: AtomicBool = AtomicBool::new(false);
/// Conversions being evaluated right now.
static DEPTH: AtomicU32 = AtomicU32::new(0);
/// Bumped whenever compiled entries are freed: a statement's cached
/// reference (in fn_extra) from an earlier generation is not used.
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[pg_guard]
unsafe extern "C-unwind" fn proc_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    STALE.store(true, Relaxed);
}

/// Any change to a table with a compiled conversion (its descriptor may be
/// rebuilt at the same address, so the pointer alone cannot tell).
#[pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = relid == pg_sys::InvalidOid || COMPILED.with(|m| m.try_borrow().map(|m| m.values().any(|c| c.relid == relid)).unwrap_or(true));
    if ours {
        STALE.store(true, Relaxed);
    }
}

/// Conversions being evaluated right now in this backend. A conversion
/// whose functions write to a table with another conversion would re-enter
/// the shared compiled state: refused.
struct Depth;
impl Depth {
    fn enter() -> Depth {
        if DEPTH.fetch_add(1, Relaxed) > 0 {
            DEPTH.fetch_sub(1, Relaxed);
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                "a zdm type change conversion wrote to a table that is itself under a zdm type change",
                "The conversion must be immutable: it may not write to any table.",
            );
        }
        Depth
    }
}
impl Drop for Depth {
    fn drop(&mut self) {
        let _ = DEPTH.fetch_update(Relaxed, Relaxed, |d| Some(d.saturating_sub(1)));
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_zdm_convert_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn zdm_convert_trigger(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe { pg_sys::submodules::panic::pgrx_extern_c_guard(move || convert_row(fcinfo)) }
}

unsafe fn convert_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let (td, _, is_update) = super::before_row_write(fcinfo, "zdm.convert_trigger()");
        let rel = (*td).tg_relation;
        let row = if is_update { (*td).tg_newtuple } else { (*td).tg_trigtuple };
        let row_slot = if is_update { (*td).tg_newslot } else { (*td).tg_trigslot };
        let tupdesc = (*rel).rd_att;
        let _depth = Depth::enter();
        let (c, no_earlier_trigger) = compiled(fcinfo, (*td).tg_trigger, rel);
        let att = crate::compat::attr(tupdesc, (c.new_att - 1) as usize);
        let last = c.old_att.max(c.new_att);
        // An UPDATE that wrote neither column keeps a converted value: it
        // was computed from this old value by an earlier write or by the
        // backfill. Decided by the statement's SET list and, when a BEFORE
        // trigger runs ahead of this one (it may have changed either
        // column), the stored bytes; without evaluating anything. A shadow
        // column still NULL is converted: the backfill's own UPDATE sets it
        // to NULL.
        if is_update && outside_set_list(td, c.old_att, c.new_att) && !is_null(row, c.new_att, tupdesc) {
            if no_earlier_trigger || unchanged(td, c.old_att, c.new_att, last) {
                return pg_sys::Datum::from(row);
            }
        }
        // The two columns read off the row's bytes (locate.rs), and the old
        // one handed to the expression in the private slot; else the
        // executor's own slot, deformed (once, for the conversion and the
        // executor alike).
        let mut tail_read = locate::Tail::EMPTY;
        let tail = locate::read_tail_with(row, tupdesc, &c.layout, &mut tail_read).then_some(&tail_read);
        let ((current, current_null), scan) = match tail {
            Some(tail) => {
                let (old, old_null) = tail.value((c.old_att - 1) as usize);
                #[cfg(debug_assertions)]
                locate::check(((old, old_null), tail.value((c.new_att - 1) as usize)), row_slot, tupdesc, c.old_att, c.new_att, last);
                let i = (c.old_att - 1) as usize;
                *(*c.scan).tts_values.add(i) = old;
                *(*c.scan).tts_isnull.add(i) = old_null;
                (*c.scan).tts_nvalid = c.old_att as i16;
                (*c.scan).tts_flags &= !(pg_sys::TTS_FLAG_EMPTY as u16);
                (tail.value((c.new_att - 1) as usize), c.scan)
            }
            None => (slot_value(row_slot, c.new_att, last), row_slot),
        };
        let per_tuple = (*c.econtext).ecxt_per_tuple_memory;
        if !(*per_tuple).isReset {
            pg_sys::MemoryContextReset(per_tuple);
        }
        (*c.econtext).ecxt_scantuple = scan;
        let (state, econtext) = (c.state, c.econtext);
        let evaluate = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut is_null = false;
                let value = pg_sys::ExecEvalExprSwitchContext(state, econtext, &mut is_null);
                (value, is_null)
            }))
        };
        let evaluated = if c.pinned { crate::security::with_guc_nest_level(&PINNED_SETTINGS, evaluate) } else { evaluate() };
        (*c.econtext).ecxt_scantuple = std::ptr::null_mut();
        let (value, is_null) = match evaluated {
            Ok(v) => v,
            Err(payload) => match payload.downcast::<pg_sys::panic::CaughtError>() {
                Ok(e) => conversion_failed(*e, td, rel, c.old_att, is_update),
                Err(other) => std::panic::resume_unwind(other),
            },
        };
        // A write that already carries the converted value needs no copy.
        if same(att, current_null, current, is_null, value) {
            return pg_sys::Datum::from(row);
        }
        pg_sys::Datum::from(with_value(row, row_slot, tupdesc, c.new_att, value, is_null, c.buffer, tail))
    }
}

/// Both columns hold the bytes the old row held.
unsafe fn unchanged(td: *mut pg_sys::TriggerData, old_att: i32, new_att: i32, last: i32) -> bool {
    unsafe {
        let tupdesc = (*(*td).tg_relation).rd_att;
        let (before, after) = ((*td).tg_trigslot, (*td).tg_newslot);
        [old_att, new_att].iter().all(|&a| {
            let attr = crate::compat::attr(tupdesc, (a - 1) as usize);
            let (was, was_null) = slot_value(before, a, last);
            let (is, is_null) = slot_value(after, a, last);
            raw_same(attr, was_null, was, is_null, is)
        })
    }
}

/// Re-raise a conversion error naming the row (the backfill's failures end
/// up in zdm.status with it), keeping its SQLSTATE.
unsafe fn conversion_failed(e: pg_sys::panic::CaughtError, td: *mut pg_sys::TriggerData, rel: pg_sys::Relation, old_att: i32, is_update: bool) -> ! {
    unsafe {
        let (code, message) = (crate::errors::code_of(&e), crate::errors::message_of(&e));
        let which = super::row_name(td, is_update);
        let tupdesc = (*rel).rd_att;
        let att = crate::compat::attr(tupdesc, (old_att - 1) as usize);
        raise_with_detail(
            code,
            format!(
                "zdm type change ({}): cannot convert column {} of {which} of table {}: {message}",
                CStr::from_ptr((*(*td).tg_trigger).tgname).to_string_lossy(),
                crate::spi::ident(&CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy()),
                crate::spi::ident(&CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy()),
            ),
            "Every write to the old column, and the backfill, converts it with the migration's expression.",
            "Fix the value (or the expression: zdm.abort the migration and start it with another using_expr).",
        )
    }
}

/// The compiled expression for this trigger, built (again) if needed, and
/// kept for the statement in the trigger call's `fn_extra` (per-query
/// memory) with the descriptor and generation it belongs to.
unsafe fn compiled(fcinfo: pg_sys::FunctionCallInfo, trigger: *const pg_sys::Trigger, rel: pg_sys::Relation) -> (CompiledRef, bool) {
    unsafe {
        if !CALLBACK.swap(true, Relaxed) {
            pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::PROCOID as i32, Some(proc_changed), pg_sys::Datum::from(0));
            pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        }
        if STALE.swap(false, Relaxed) {
            GENERATION.fetch_add(1, Relaxed);
            COMPILED.with(|m| {
                for (_, c) in m.borrow_mut().drain() {
                    pg_sys::MemoryContextDelete(c.context);
                }
            });
        }
        let tgoid = (*trigger).tgoid.to_u32();
        let tupdesc = (*rel).rd_att;
        let flinfo = (*fcinfo).flinfo;
        let cached = (*flinfo).fn_extra as *mut StatementCache;
        // The common case: the same trigger and descriptor as the last row.
        if !cached.is_null()
            && (*cached).generation == GENERATION.load(Relaxed)
            && (*cached).tgoid == tgoid
            && (*cached).tupdesc == tupdesc
        {
            return ((*cached).compiled, (*cached).no_earlier_trigger);
        }
        let fresh = COMPILED.with(|m| m.borrow().get(&tgoid).map(|c| c.tupdesc == tupdesc).unwrap_or(false));
        if !fresh {
            let built = build(trigger, rel);
            COMPILED.with(|m| {
                if let Some(old) = m.borrow_mut().insert(tgoid, built) {
                    GENERATION.fetch_add(1, Relaxed);
                    pg_sys::MemoryContextDelete(old.context);
                }
            });
        }
        let c = COMPILED.with(|m| {
            let m = m.borrow();
            let c = &m[&tgoid];
            CompiledRef {
                old_att: c.old_att,
                new_att: c.new_att,
                state: c.state,
                econtext: c.econtext,
                buffer: c.buffer,
                layout: c.layout,
                scan: c.scan,
                pinned: c.pinned,
            }
        });
        let slot = if cached.is_null() {
            pg_sys::MemoryContextAlloc((*flinfo).fn_mcxt, std::mem::size_of::<StatementCache>()) as *mut StatementCache
        } else {
            cached
        };
        // Decided at the statement's first row, and kept: the executor fires
        // the trigger list it copied at its start, so a later change to the
        // relation's list (DDL run by the statement itself) must not count.
        let no_earlier_trigger = if !cached.is_null() && (*cached).tgoid == tgoid { (*cached).no_earlier_trigger } else { no_earlier_before_update(rel, (*trigger).tgoid) };
        slot.write(StatementCache { generation: GENERATION.load(Relaxed), tgoid, tupdesc, compiled: c, no_earlier_trigger });
        (*flinfo).fn_extra = slot as *mut std::ffi::c_void;
        (c, no_earlier_trigger)
    }
}

/// Types whose text form depends on a session setting although their output
/// functions are marked immutable: float4/float8 (`extra_float_digits`) and
/// bytea (`bytea_output`). A conversion from one of them runs with
/// `PINNED_SETTINGS`, in every writer's session and the backfill alike, so
/// each row converts the same way whoever writes it (contract's verify uses
/// the same settings).
const PINNED_SOURCES: [pg_sys::Oid; 3] = [pg_sys::FLOAT4OID, pg_sys::FLOAT8OID, pg_sys::BYTEAOID];
pub const PINNED_SETTINGS: [(&CStr, &CStr); 2] = [(c"extra_float_digits", c"1"), (c"bytea_output", c"hex")];

/// Whether a conversion from `source` runs with `PINNED_SETTINGS`.
pub fn pins_settings(source: pg_sys::Oid) -> bool {
    PINNED_SOURCES.contains(&unsafe { pg_sys::getBaseType(source) })
}

/// What `compiled` keeps in `fn_extra`.
struct StatementCache {
    generation: u64,
    tgoid: u32,
    tupdesc: pg_sys::TupleDesc,
    compiled: CompiledRef,
    /// no BEFORE UPDATE trigger fires ahead of this one
    no_earlier_trigger: bool,
}

#[derive(Clone, Copy)]
struct CompiledRef {
    old_att: i32,
    new_att: i32,
    state: *mut pg_sys::ExprState,
    econtext: *mut pg_sys::ExprContext,
    buffer: RowBuffer,
    layout: locate::Layout,
    scan: *mut pg_sys::TupleTableSlot,
    pinned: bool,
}

unsafe fn build(trigger: *const pg_sys::Trigger, rel: pg_sys::Relation) -> Compiled {
    unsafe {
        // The conversion comes from zdm's catalog, never from the trigger's
        // arguments: anyone may attach this function to a table of theirs,
        // and a node tree is not something to take from a user.
        let tgname = CStr::from_ptr((*trigger).tgname).to_string_lossy().into_owned();
        let relid = (*rel).rd_id;
        let recorded = crate::catalog::as_catalog_owner_any_version(|| {
            // A leaf partition's clone of the trigger: its root's migration.
            crate::spi::first_row(
                &format!(
                    "SELECT old_column::text, new_column::text, using_tree, using_expr FROM zdm.migrations \
                      WHERE relid::pg_catalog.oid IN {} AND trigger_name = $2 AND kind = 'change_type' \
                        AND phase IN ('expanded', 'backfilling', 'backfilled') AND using_tree IS NOT NULL",
                    crate::tree::self_and_ancestors_sql(1)
                ),
                &[relid.into(), tgname.as_str().into()],
                |r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<String>(3)?.unwrap_or_default(),
                        r.get::<String>(4)?.unwrap_or_default(),
                    ))
                },
            )
        });
        let Some((old_name, new_name, tree, recorded)) = recorded else {
            raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("trigger {} is not a zdm type change in flight", crate::spi::ident(&tgname)),
                "zdm.convert_trigger() runs only as the trigger zdm.expand_change_type installs.",
            );
        };
        let (old_c, new_c) = (CString::new(old_name).unwrap_or_default(), CString::new(new_name).unwrap_or_default());
        let arg = |i: usize| if i == 0 { old_c.as_c_str() } else { new_c.as_c_str() };
        let tupdesc = (*rel).rd_att;
        let find = |name: &CStr| {
            (1..=(*tupdesc).natts).find(|&i| {
                let a = crate::compat::attr(tupdesc, (i - 1) as usize);
                !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name
            })
        };
        let relname = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy().into_owned();
        let (Some(old_att), Some(new_att)) = (find(arg(0)), find(arg(1))) else {
            raise(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "zdm type change trigger on table {}: column {} or {} no longer exists",
                    crate::spi::ident(&relname),
                    crate::spi::ident(&arg(0).to_string_lossy()),
                    crate::spi::ident(&arg(1).to_string_lossy())
                ),
                "A column under migration was dropped by hand. Call zdm.abort() for this migration.",
            );
        };
        let name = CString::new("zdm convert trigger").unwrap_or_default();
        let context = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CacheMemoryContext,
            name.as_ptr(),
            pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
        );
        let previous = pg_sys::MemoryContextSwitchTo(context);
        let tree_c = CString::new(tree).unwrap_or_default();
        let expr = pg_sys::stringToNode(tree_c.as_ptr()) as *mut pg_sys::Expr;
        // The tree reads the old column by its number in the migrated table;
        // a leaf partition may number it otherwise (another column order,
        // dropped columns): point it at this relation's own.
        crate::parse::retarget(expr as *mut pg_sys::Node, None, old_att as i16);
        let new_type = crate::compat::attr(tupdesc, (new_att - 1) as usize).atttypid;
        if expr.is_null() || pg_sys::exprType(expr as *const pg_sys::Node) != new_type {
            pg_sys::MemoryContextSwitchTo(previous);
            pg_sys::MemoryContextDelete(context);
            raise(
                Code::ERRCODE_DATATYPE_MISMATCH,
                format!("zdm type change trigger on table {}: the expression does not produce the new column's type", crate::spi::ident(&relname)),
                "A column under migration was altered by hand. Call zdm.abort() for this migration.",
            );
        }
        // The tree refers to functions and types by OID. If they no longer
        // deparse to the SQL recorded beside it (a dump restored into
        // another cluster, an object dropped and recreated), stop rather
        // than run something else.
        let relname_c = CString::new(relname.as_str()).unwrap_or_default();
        // Deparsed under zdm's pinned search_path, as at expand (names it
        // does not see are schema-qualified in both).
        let deparsed = PgTryBuilder::new(|| {
            crate::security::deparse_pinned(|| {
                let dpcontext = pg_sys::deparse_context_for(relname_c.as_ptr(), (*rel).rd_id);
                Some(CStr::from_ptr(pg_sys::deparse_expression(expr as *mut pg_sys::Node, dpcontext, false, true)).to_string_lossy().into_owned())
            })
        })
        .catch_others(|_| None)
        .execute();
        if deparsed.as_deref() != Some(recorded.as_str()) {
            pg_sys::MemoryContextSwitchTo(previous);
            pg_sys::MemoryContextDelete(context);
            raise_with_detail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm type change trigger on table {}: its conversion no longer refers to the same objects", crate::spi::ident(&relname)),
                format!("Recorded: {recorded}; now: {}.", deparsed.as_deref().unwrap_or("(references objects that no longer exist)")),
                "The database was restored from a dump, or a function or type the conversion uses was recreated. Call zdm.abort() for this migration and start it again.",
            );
        }
        let planned = pg_sys::expression_planner(expr);
        let state = pg_sys::ExecInitExpr(planned, std::ptr::null_mut());
        let econtext = pg_sys::CreateStandaloneExprContext();
        let buffer = RowBuffer::new_in(context, (*tupdesc).natts);
        let layout = locate::Layout::new(tupdesc, old_att.min(new_att), context);
        // Freed with the context: a copied descriptor is not reference
        // counted, so the slot pins nothing a resource owner would track.
        let scan = pg_sys::MakeSingleTupleTableSlot(pg_sys::CreateTupleDescCopy(tupdesc), &raw const pg_sys::TTSOpsVirtual);
        for i in 0..(*tupdesc).natts as usize {
            *(*scan).tts_isnull.add(i) = true;
        }
        pg_sys::MemoryContextSwitchTo(previous);
        let source = pg_sys::getBaseType(crate::compat::attr(tupdesc, (old_att - 1) as usize).atttypid);
        let pinned = PINNED_SOURCES.contains(&source);
        Compiled { relid, tupdesc, old_att, new_att, context, state, econtext, buffer, layout, scan, pinned }
    }
}
