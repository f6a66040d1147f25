//! One statement of zdm's own that runs without its migration's sync
//! trigger: a rename's backfill batch, whose `SET new = old` leaves every
//! row exactly as the trigger would (it finds the row in sync and returns).
//!
//! Why: before PostgreSQL calls any BEFORE ROW UPDATE trigger it locks the
//! row (`GetTupleForTrigger` → `heap_lock_tuple`, one WAL record per row),
//! whatever the trigger then does. For the backfill that is ~11% more WAL
//! and the largest part of the gap to a plain UPDATE (bench/README, "Where a
//! worker's time goes"). Only that one trigger is left out, only for the
//! armed statement's own result relation, and only when it is the table's
//! one BEFORE ROW UPDATE trigger (another could change the row after the
//! SET formed it, which the sync trigger would mend): every other trigger,
//! AFTER ROW and statement triggers included, fires as before.
//!
//! How: an ExecutorStart hook. `without` arms it for one statement: the
//! UPDATE of the given table with the given text that sets the command tag
//! (not a rule's action, which comes from the same text), on a table without
//! rules (an INSTEAD rule's UPDATE would stand in for it), whose trigger of
//! that name runs the given function. After PostgreSQL has initialised that
//! statement — before any row or any trigger ran, statement triggers
//! included — its result relation gets a copy of its trigger list without
//! that trigger. Nothing in the relcache changes; the copy lives in the
//! statement's memory. Any other statement, one the batch runs inside (a
//! user trigger's SQL) or one before it (a rule's action, a function the
//! planner calls), keeps every trigger. Unarmed, the hook costs one
//! thread-local read per statement.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::CStr;

static mut PREV: pg_sys::ExecutorStart_hook_type = None;

/// The statement a trigger is left out of, and which trigger.
struct Armed {
    relid: pg_sys::Oid,
    sql: String,
    trigger: String,
    function: pg_sys::Oid,
}

thread_local! {
    static ARMED: RefCell<Option<Armed>> = const { RefCell::new(None) };
}

unsafe extern "C-unwind" {
    /// PostgreSQL's own, unwrapped: its errors pass through as they are.
    #[link_name = "standard_ExecutorStart"]
    fn standard_executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int);
}

pub fn install() {
    unsafe {
        PREV = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
}

/// Run `f`, which runs the UPDATE `sql` of `relid`, without `relid`'s
/// trigger `trigger` (calling `function`). Disarmed afterwards whatever
/// happened, an error included.
pub fn without<R>(relid: pg_sys::Oid, sql: &str, trigger: &str, function: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            ARMED.with(|a| a.borrow_mut().take());
        }
    }
    ARMED.with(|a| *a.borrow_mut() = Some(Armed { relid, sql: sql.to_string(), trigger: trigger.to_string(), function }));
    let _disarm = Disarm;
    f()
}

unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    unsafe {
        match PREV {
            Some(prev) => prev(query, eflags),
            None => standard_executor_start(query, eflags),
        }
        if ARMED.with(|a| a.borrow().is_none()) || (*query).operation != pg_sys::CmdType::CMD_UPDATE {
            return;
        }
        pg_sys::submodules::panic::pgrx_extern_c_guard(|| leave_out(query));
    }
}

/// On the armed UPDATE: its result relation's triggers, less the armed one.
unsafe fn leave_out(query: *mut pg_sys::QueryDesc) {
    unsafe {
        let estate = (*query).estate;
        let rels = (*estate).es_opened_result_relations;
        if rels.is_null() || (*query).sourceText.is_null() || !(*(*query).plannedstmt).canSetTag {
            return;
        }
        let text = CStr::from_ptr((*query).sourceText).to_bytes();
        for i in 0..(*rels).length as usize {
            let rri = (*(*rels).elements.add(i)).ptr_value as *mut pg_sys::ResultRelInfo;
            let rel = (*rri).ri_RelationDesc;
            let Some(armed) = ARMED.with(|a| a.borrow_mut().take_if(|a| a.relid == (*rel).rd_id && a.sql.as_bytes() == text)) else {
                continue;
            };
            if !(*(*rel).rd_rel).relhasrules && !(*rri).ri_TrigDesc.is_null() {
                (*rri).ri_TrigDesc = without_trigger((*rri).ri_TrigDesc, &armed, (*estate).es_query_cxt);
            }
            return;
        }
    }
}

/// A copy of `desc` (in the statement's memory) without the armed BEFORE
/// ROW trigger, its flags recomputed from what is left. The executor's
/// per-trigger caches (functions, WHEN states) are indexed like the list
/// but filled at a trigger's first call: none has been called yet.
unsafe fn without_trigger(desc: *mut pg_sys::TriggerDesc, armed: &Armed, cxt: pg_sys::MemoryContext) -> *mut pg_sys::TriggerDesc {
    unsafe {
        let all = std::slice::from_raw_parts((*desc).triggers, (*desc).numtriggers.max(0) as usize);
        let before_row = (pg_sys::TRIGGER_TYPE_ROW | pg_sys::TRIGGER_TYPE_BEFORE) as i16;
        let is_it = |t: &pg_sys::Trigger| {
            t.tgtype & (before_row | pg_sys::TRIGGER_TYPE_INSTEAD as i16) == before_row
                && t.tgfoid == armed.function
                && CStr::from_ptr(t.tgname).to_bytes() == armed.trigger.as_bytes()
        };
        if !all.iter().any(is_it) {
            return desc;
        }
        let kept: Vec<pg_sys::Trigger> = all.iter().filter(|t| !is_it(t)).copied().collect();
        let any = |event: u32| {
            kept.iter().any(|t| t.tgtype & (before_row | pg_sys::TRIGGER_TYPE_INSTEAD as i16 | event as i16) == before_row | event as i16)
        };
        // Another BEFORE ROW UPDATE trigger (the user's, another
        // migration's) may change the row after the SET formed it — the
        // sync trigger, firing after it, would mend that. PostgreSQL locks
        // the rows for it anyway: nothing to gain, the statement keeps all.
        if any(pg_sys::TRIGGER_TYPE_UPDATE) {
            return desc;
        }
        let copy = pg_sys::MemoryContextAlloc(cxt, std::mem::size_of::<pg_sys::TriggerDesc>()) as *mut pg_sys::TriggerDesc;
        std::ptr::copy_nonoverlapping(desc, copy, 1);
        let triggers = pg_sys::MemoryContextAlloc(cxt, std::mem::size_of::<pg_sys::Trigger>() * kept.len().max(1)) as *mut pg_sys::Trigger;
        std::ptr::copy_nonoverlapping(kept.as_ptr(), triggers, kept.len());
        (*copy).triggers = triggers;
        (*copy).numtriggers = kept.len() as i32;
        // Only BEFORE ROW flags can change: the trigger left out is one.
        (*copy).trig_insert_before_row = any(pg_sys::TRIGGER_TYPE_INSERT);
        (*copy).trig_update_before_row = false;
        (*copy).trig_delete_before_row = any(pg_sys::TRIGGER_TYPE_DELETE);
        copy
    }
}
