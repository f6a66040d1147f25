//! An added column's trigger, `zdm.fill_trigger()`, BEFORE INSERT OR UPDATE
//! FOR EACH ROW: while old and new application code run side by side it
//! keeps the column zdm.add_column added right. The fill (or a volatile
//! default) arrives as the node tree add_column analysed, from zdm's
//! catalog, never from the trigger's arguments; it is planned once per
//! trigger and descriptor and evaluated per row by the executor over the
//! row's own slot.
//!
//! During the migration a NULL in the column means "not filled yet":
//!
//! | write                                         | the column gets          |
//! |-----------------------------------------------|--------------------------|
//! | INSERT leaving it NULL (old code)             | fill(row)                |
//! | INSERT writing a value (new code)             | what it wrote            |
//! | UPDATE leaving it NULL                        | fill(row)                |
//! | UPDATE setting it (SET list, or its bytes changed) | what it wrote       |
//! | UPDATE changing a column the fill reads       | fill(row), recomputed    |
//! | UPDATE changing nothing the fill reads        | unchanged                |
//!
//! The backfill's own UPDATE sets the column to NULL: the trigger fills it,
//! so a failing fill names the row in the backfill and in a writer alike.
//! On a leaf partition the tree's column numbers are mapped to the leaf's
//! own by name (another column order, dropped columns).

use super::{is_null, outside_set_list, raw_same, same, slot_value};
use crate::errors::{raise, raise_with_detail, Code};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

struct Compiled {
    /// the relation's tuple descriptor it was built for
    tupdesc: pg_sys::TupleDesc,
    relid: pg_sys::Oid,
    new_att: i32,
    /// the attributes the expression reads, in this relation's numbering
    sources: Vec<i32>,
    /// the highest of them and `new_att`: how far a row is deformed
    last: i32,
    context: pg_sys::MemoryContext,
    state: *mut pg_sys::ExprState,
    econtext: *mut pg_sys::ExprContext,
    /// it reads a column whose text form depends on a setting
    pinned: bool,
}

thread_local! {
    static COMPILED: RefCell<HashMap<u32, Compiled>> = RefCell::new(HashMap::new());
}
static STALE: AtomicBool = AtomicBool::new(false);
static CALLBACK: AtomicBool = AtomicBool::new(false);
static DEPTH: AtomicU32 = AtomicU32::new(0);

#[pg_guard]
unsafe extern "C-unwind" fn proc_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    STALE.store(true, Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = relid == pg_sys::InvalidOid || COMPILED.with(|m| m.try_borrow().map(|m| m.values().any(|c| c.relid == relid)).unwrap_or(true));
    if ours {
        STALE.store(true, Relaxed);
    }
}

/// A fill whose functions write to a table with another fill would re-enter
/// the compiled state: refused (a fill is immutable; a volatile default
/// that writes is not something to run per row).
struct Depth;
impl Depth {
    fn enter() -> Depth {
        if DEPTH.fetch_add(1, Relaxed) > 0 {
            DEPTH.fetch_sub(1, Relaxed);
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                "a zdm fill wrote to a table that is itself being filled by zdm",
                "A fill may not write to any table.",
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
pub extern "C" fn pg_finfo_zdm_fill_trigger() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn zdm_fill_trigger(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe { pg_sys::submodules::panic::pgrx_extern_c_guard(move || fill_row(fcinfo)) }
}

unsafe fn fill_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let (td, is_insert, is_update) = super::before_row_write(fcinfo, "zdm.fill_trigger()");
        let rel = (*td).tg_relation;
        let tupdesc = (*rel).rd_att;
        let row = if is_update { (*td).tg_newtuple } else { (*td).tg_trigtuple };
        let row_slot = if is_update { (*td).tg_newslot } else { (*td).tg_trigslot };
        let _depth = Depth::enter();
        let c = compiled((*td).tg_trigger, rel);
        if !is_null(row, c.new_att, tupdesc) {
            if is_insert {
                return pg_sys::Datum::from(row); // new code wrote it
            }
            let (before, after) = ((*td).tg_trigslot, (*td).tg_newslot);
            let changed = |a: i32| {
                let attr = crate::compat::attr(tupdesc, (a - 1) as usize);
                let (was, was_null) = slot_value(before, a, c.last);
                let (is, is_null) = slot_value(after, a, c.last);
                !raw_same(attr, was_null, was, is_null, is)
            };
            let written = !outside_set_list(td, c.new_att, c.new_att) || changed(c.new_att);
            if written || !c.sources.iter().any(|&a| changed(a)) {
                return pg_sys::Datum::from(row);
            }
        }
        let per_tuple = (*c.econtext).ecxt_per_tuple_memory;
        if !(*per_tuple).isReset {
            pg_sys::MemoryContextReset(per_tuple);
        }
        (*c.econtext).ecxt_scantuple = row_slot;
        let (state, econtext) = (c.state, c.econtext);
        let evaluate = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut is_null = false;
                let value = pg_sys::ExecEvalExprSwitchContext(state, econtext, &mut is_null);
                (value, is_null)
            }))
        };
        let evaluated = if c.pinned { crate::security::with_guc_nest_level(&super::convert::PINNED_SETTINGS, evaluate) } else { evaluate() };
        (*c.econtext).ecxt_scantuple = std::ptr::null_mut();
        let (mut value, mut value_null) = match evaluated {
            Ok(v) => v,
            Err(payload) => match payload.downcast::<pg_sys::panic::CaughtError>() {
                Ok(e) => fill_failed(*e, td, rel, c.new_att, is_update),
                Err(other) => std::panic::resume_unwind(other),
            },
        };
        let att = crate::compat::attr(tupdesc, (c.new_att - 1) as usize);
        let (current, current_null) = slot_value(row_slot, c.new_att, c.new_att);
        if same(att, current_null, current, value_null, value) {
            return pg_sys::Datum::from(row);
        }
        let mut column = c.new_att;
        let tuple = pg_sys::heap_modify_tuple_by_cols(row, tupdesc, 1, &mut column, &mut value, &mut value_null);
        pg_sys::Datum::from(tuple)
    }
}

/// Re-raise a fill's error naming the row, keeping its SQLSTATE.
unsafe fn fill_failed(e: pg_sys::panic::CaughtError, td: *mut pg_sys::TriggerData, rel: pg_sys::Relation, new_att: i32, is_update: bool) -> ! {
    unsafe {
        let (code, message) = (crate::errors::code_of(&e), crate::errors::message_of(&e));
        let which = super::row_name(td, is_update);
        let att = crate::compat::attr((*rel).rd_att, (new_att - 1) as usize);
        raise_with_detail(
            code,
            format!(
                "zdm add_column ({}): cannot fill column {} of {which} of table {}: {message}",
                CStr::from_ptr((*(*td).tg_trigger).tgname).to_string_lossy(),
                crate::spi::ident(&CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy()),
                crate::spi::ident(&CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy()),
            ),
            "Every write that leaves the column NULL or changes what the fill reads, and the backfill, fill it with the migration's expression.",
            "Fix the row, or write the column yourself; or zdm.abort the migration and start it with another fill.",
        )
    }
}

/// What a row needs of the compiled entry (copied out of the cache).
#[derive(Clone)]
struct CompiledRef {
    new_att: i32,
    sources: Vec<i32>,
    last: i32,
    state: *mut pg_sys::ExprState,
    econtext: *mut pg_sys::ExprContext,
    pinned: bool,
}

unsafe fn compiled(trigger: *const pg_sys::Trigger, rel: pg_sys::Relation) -> CompiledRef {
    unsafe {
        if !CALLBACK.swap(true, Relaxed) {
            pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::PROCOID as i32, Some(proc_changed), pg_sys::Datum::from(0));
            pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        }
        if STALE.swap(false, Relaxed) {
            COMPILED.with(|m| {
                for (_, c) in m.borrow_mut().drain() {
                    pg_sys::MemoryContextDelete(c.context);
                }
            });
        }
        let tgoid = (*trigger).tgoid.to_u32();
        let tupdesc = (*rel).rd_att;
        let fresh = COMPILED.with(|m| m.borrow().get(&tgoid).map(|c| c.tupdesc == tupdesc).unwrap_or(false));
        if !fresh {
            let built = build(trigger, rel);
            COMPILED.with(|m| {
                if let Some(old) = m.borrow_mut().insert(tgoid, built) {
                    pg_sys::MemoryContextDelete(old.context);
                }
            });
        }
        COMPILED.with(|m| {
            let m = m.borrow();
            let c = &m[&tgoid];
            CompiledRef { new_att: c.new_att, sources: c.sources.clone(), last: c.last, state: c.state, econtext: c.econtext, pinned: c.pinned }
        })
    }
}

unsafe fn build(trigger: *const pg_sys::Trigger, rel: pg_sys::Relation) -> Compiled {
    unsafe {
        let tgname = CStr::from_ptr((*trigger).tgname).to_string_lossy().into_owned();
        let relid = (*rel).rd_id;
        let relname = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy().into_owned();
        let recorded = crate::catalog::as_catalog_owner_any_version(|| {
            // A leaf partition's clone of the trigger: its root's migration.
            crate::spi::first_row(
                &format!(
                    "SELECT relid::pg_catalog.oid, new_column::text, using_tree, using_expr FROM zdm.migrations \
                      WHERE relid::pg_catalog.oid IN {} AND trigger_name = $2 AND kind = 'add_column' \
                        AND phase IN ('expanded', 'backfilling', 'backfilled') AND using_tree IS NOT NULL",
                    crate::tree::self_and_ancestors_sql(1)
                ),
                &[relid.into(), tgname.as_str().into()],
                |r| {
                    Ok((
                        r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<String>(3)?.unwrap_or_default(),
                        r.get::<String>(4)?.unwrap_or_default(),
                    ))
                },
            )
        });
        let Some((table, new_name, tree, recorded)) = recorded else {
            raise(
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("trigger {} is not a zdm add_column in flight", crate::spi::ident(&tgname)),
                "zdm.fill_trigger() runs only as the trigger zdm.add_column installs.",
            );
        };
        let tupdesc = (*rel).rd_att;
        let new_c = CString::new(new_name.as_str()).unwrap_or_default();
        let new_att = (1..=(*tupdesc).natts).find(|&i| {
            let a = crate::compat::attr(tupdesc, (i - 1) as usize);
            !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == new_c.as_c_str()
        });
        let Some(new_att) = new_att else {
            raise(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!("zdm add_column trigger on table {}: column {} no longer exists", crate::spi::ident(&relname), crate::spi::ident(&new_name)),
                "The column under migration was dropped by hand. Call zdm.abort() for this migration.",
            );
        };
        let name = CString::new("zdm fill trigger").unwrap_or_default();
        let context = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CacheMemoryContext,
            name.as_ptr(),
            pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
        );
        let previous = pg_sys::MemoryContextSwitchTo(context);
        // Whatever fails while building (a refusal below, or an error from
        // PostgreSQL) frees the context and restores the caller's.
        let built = PgTryBuilder::new(|| build_in(rel, relid, &relname, table, new_att, &tree, &recorded))
            .catch_others(|e| {
                pg_sys::MemoryContextSwitchTo(previous);
                pg_sys::MemoryContextDelete(context);
                e.rethrow()
            })
            .execute();
        pg_sys::MemoryContextSwitchTo(previous);
        let (sources, last, state, econtext, pinned) = built;
        Compiled { tupdesc, relid, new_att, sources, last, context, state, econtext, pinned }
    }
}

/// The compiled expression, built in the current (the entry's) memory
/// context: (sources, last, state, econtext, pinned).
#[allow(clippy::type_complexity)]
unsafe fn build_in(
    rel: pg_sys::Relation,
    relid: pg_sys::Oid,
    relname: &str,
    table: pg_sys::Oid,
    new_att: i32,
    tree: &str,
    recorded: &str,
) -> (Vec<i32>, i32, *mut pg_sys::ExprState, *mut pg_sys::ExprContext, bool) {
    unsafe {
        let tupdesc = (*rel).rd_att;
        let tree_c = CString::new(tree).unwrap_or_default();
        let mut expr = pg_sys::stringToNode(tree_c.as_ptr()) as *mut pg_sys::Node;
        // The tree numbers columns as the migrated table does; a leaf may
        // number them otherwise: mapped by name.
        if table != relid {
            let parent = pg_sys::relation_open(table, pg_sys::AccessShareLock as i32);
            let map = crate::compat::attrmap_by_name(tupdesc, (*parent).rd_att);
            let mut whole_row = false;
            expr = pg_sys::map_variable_attnos(expr, 1, 0, map, pg_sys::InvalidOid, &mut whole_row);
            pg_sys::relation_close(parent, pg_sys::AccessShareLock as i32);
            if whole_row {
                raise(Code::ERRCODE_FEATURE_NOT_SUPPORTED, "a zdm fill reads the whole row", "Call zdm.abort() for this migration.");
            }
        }
        let new_type = crate::compat::attr(tupdesc, (new_att - 1) as usize).atttypid;
        if expr.is_null() || pg_sys::exprType(expr) != new_type {
            raise(
                Code::ERRCODE_DATATYPE_MISMATCH,
                format!("zdm add_column trigger on table {}: the fill does not produce the column's type", crate::spi::ident(&relname)),
                "The column under migration was altered by hand. Call zdm.abort() for this migration.",
            );
        }
        // The tree refers to functions and types by OID: if they no longer
        // deparse to the SQL recorded beside it (a dump restored elsewhere,
        // a function recreated), stop rather than run something else.
        let relname_c = CString::new(relname).unwrap_or_default();
        let deparsed = PgTryBuilder::new(|| {
            crate::security::deparse_pinned(|| {
                let dpcontext = pg_sys::deparse_context_for(relname_c.as_ptr(), relid);
                Some(CStr::from_ptr(pg_sys::deparse_expression(expr, dpcontext, false, true)).to_string_lossy().into_owned())
            })
        })
        .catch_others(|_| None)
        .execute();
        if deparsed.as_deref() != Some(recorded) {
            raise_with_detail(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("zdm add_column trigger on table {}: its fill no longer refers to the same objects", crate::spi::ident(&relname)),
                format!("Recorded: {recorded}; now: {}.", deparsed.as_deref().unwrap_or("(references objects that no longer exist)")),
                "The database was restored from a dump, or a function or type the fill uses was recreated. Call zdm.abort() for this migration and start it again.",
            );
        }
        let sources: Vec<i32> = crate::parse::var_attnos(expr).into_iter().map(i32::from).filter(|&a| a > 0).collect();
        let last = sources.iter().copied().chain([new_att]).max().unwrap_or(new_att);
        let pinned = sources.iter().any(|&a| super::convert::pins_settings(crate::compat::attr(tupdesc, (a - 1) as usize).atttypid));
        let planned = pg_sys::expression_planner(expr as *mut pg_sys::Expr);
        let state = pg_sys::ExecInitExpr(planned, std::ptr::null_mut());
        let econtext = pg_sys::CreateStandaloneExprContext();
        (sources, last, state, econtext, pinned)
    }
}
