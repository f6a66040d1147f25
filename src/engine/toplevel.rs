//! Statements that PostgreSQL only runs at top level, outside any
//! transaction block or function — `CREATE INDEX CONCURRENTLY`, `DROP INDEX
//! CONCURRENTLY` — executed by a background worker the way postgres.c's
//! `exec_simple_query` runs them: parsed and planned in a memory context
//! that outlives the transactions the command commits itself, then run
//! through an unnamed portal as a top-level statement.
//!
//! They run as the migration's owner with the caller's search_path (names
//! in an index definition resolve as they did for the caller) and a
//! lock_timeout, all restored afterwards; PostgreSQL itself evaluates index
//! expressions as the table owner, security-restricted. On error the
//! transaction is aborted and the worker's identity restored.

use crate::security::{set_session_guc, Identity};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::ffi::CString;

/// Run `sql` (one statement) at top level as `role`. `edit` may adjust the
/// raw parse tree first (e.g. force `concurrent`). Starts and ends its own
/// transactions: call it outside `worker::transaction`.
pub fn run(
    sql: &str,
    role: pg_sys::Oid,
    search_path: &str,
    lock_timeout_ms: i32,
    edit: impl FnOnce(*mut pg_sys::Node),
) -> Result<(), CaughtError> {
    let query = CString::new(sql).unwrap_or_default();
    let worker = Identity::current();
    // Parse trees must survive the commits the command makes itself.
    let context = unsafe {
        pg_sys::AllocSetContextCreateExtended(
            pg_sys::TopMemoryContext,
            c"zdm top-level statement".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        )
    };
    let body = std::panic::AssertUnwindSafe(|| unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        set_session_guc(c"search_path", search_path);
        set_session_guc(c"lock_timeout", &format!("{lock_timeout_ms}ms"));
        Identity::switch_to(role, false);
        // Stay in `context` through ProcessUtility: the transaction contexts
        // the command commits are gone when it returns or fails (pgrx copies
        // an error into the context current at the call).
        pg_sys::MemoryContextSwitchTo(context);
        let parsed = pg_sys::pg_parse_query(query.as_ptr());
        let raw = (*(*parsed).elements).ptr_value as *mut pg_sys::RawStmt;
        edit((*raw).stmt);
        let analysed = pg_sys::pg_analyze_and_rewrite_fixedparams(raw, query.as_ptr(), std::ptr::null_mut(), 0, std::ptr::null_mut());
        let planned = pg_sys::pg_plan_queries(analysed, query.as_ptr(), pg_sys::CURSOR_OPT_PARALLEL_OK as i32, std::ptr::null_mut());
        // An unnamed portal, as exec_simple_query uses: PortalRunUtility
        // provides the snapshot (and lets a concurrent build pop it), and
        // SPI in event triggers fired by the command finds its portal.
        let tag = pg_sys::CreateCommandTag((*raw).stmt);
        let portal = pg_sys::CreatePortal(c"".as_ptr(), true, true);
        (*portal).visible = false;
        pg_sys::PortalDefineQuery(portal, std::ptr::null(), query.as_ptr(), tag, planned, std::ptr::null_mut());
        pg_sys::PortalStart(portal, std::ptr::null_mut(), 0, std::ptr::null_mut());
        let receiver = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestNone);
        let mut qc: pg_sys::QueryCompletion = std::mem::zeroed();
        crate::compat::portal_run(portal, receiver, &mut qc);
        if let Some(destroy) = (*receiver).rDestroy {
            destroy(receiver);
        }
        pg_sys::PortalDrop(portal, false);
        pg_sys::CommitTransactionCommand();
        Ok(())
    });
    let result = PgTryBuilder::new(body).catch_others(Err).execute();
    unsafe {
        if result.is_err() {
            pg_sys::AbortCurrentTransaction();
        }
        // The command's own transactions started while we acted as `role`:
        // restore the worker's identity and settings explicitly.
        worker.restore();
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        pg_sys::MemoryContextDelete(context);
        pg_sys::StartTransactionCommand();
        set_session_guc(c"search_path", "pg_catalog, pg_temp");
        set_session_guc(c"lock_timeout", "0");
        pg_sys::CommitTransactionCommand();
    }
    result
}
