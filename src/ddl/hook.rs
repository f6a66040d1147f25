//! `zdm.safe_ddl`: a ProcessUtility hook that applies the analysis to every
//! DDL statement, from any tool.
//!
//! * **Large tables**: a step that rewrites, scans or builds an index under
//!   a lock that stops writes, on a table above `zdm.large_table`, is
//!   refused (`on`, 54000) or warned about (`warn`), with the zdm call that
//!   does it online in the hint. Temporary tables, tables created in this
//!   transaction, extension scripts, binary upgrade and zdm's own DDL are
//!   exempt.
//! * **Bounded lock waits**: when the statement needs a lock that stops
//!   reads or writes and the session has no `lock_timeout` of its own, the
//!   locks are taken first under zdm's lock policy
//!   (`engine::locking::lock_relations`: one attempt of `zdm.lock_timeout`
//!   in a subtransaction, jittered backoff, `zdm.lock_retries`, 55P03 naming
//!   the blockers), so nobody queues behind it longer than one attempt and a
//!   migration tool's transaction survives a timed-out attempt. The
//!   statement then finds its locks held. VACUUM FULL, and statements on
//!   relations the user does not own (PostgreSQL refuses those before
//!   locking), are left to PostgreSQL.
//!
//! Statements that are not DDL on a table never get past the first test
//! (a node tag), and queries do not pass through ProcessUtility at all.
//! PostgreSQL's own errors pass through this hook untouched (it calls the
//! next hook outside any Rust frame that catches).

use super::{Statement, Step, analyse, is_candidate, live, owned};
use crate::engine::locking;
use crate::errors::Code;
use crate::guc::{self, SafeDdl};
use crate::locks;
use pgrx::prelude::*;

static mut PREV: pg_sys::ProcessUtility_hook_type = None;

unsafe extern "C-unwind" {
    /// PostgreSQL's own, unwrapped: its errors must reach the caller as they
    /// are (every field, the cursor position), not re-raised by pgrx.
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

pub fn install() {
    unsafe {
        PREV = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        // DROP DATABASE, ALTER DATABASE … RENAME / SET TABLESPACE and CREATE
        // DATABASE … TEMPLATE wait for no zdm process.
        pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
            if let Some(db) = database_statement((*pstmt).utilityStmt) {
                crate::engine::supervisor::stop_database_workers(&db);
            }
        });
        if guc::SAFE_DDL.get() != SafeDdl::Off
            && is_candidate((*pstmt).utilityStmt)
            && !pg_sys::creating_extension
            && !pg_sys::IsBinaryUpgrade
            && !crate::spi::in_zdm_sql()
        {
            pg_sys::submodules::panic::pgrx_extern_c_guard(|| check(pstmt, query));
        }
        // No Rust value needing a destructor is alive here: an error from
        // PostgreSQL may jump straight over this frame.
        match PREV {
            Some(prev) => prev(pstmt, query, read_only_tree, context, params, env, dest, qc),
            None => standard_process_utility(
                pstmt,
                query,
                read_only_tree,
                context,
                params,
                env,
                dest,
                qc,
            ),
        }
    }
}

/// The database a DROP DATABASE, ALTER DATABASE … RENAME or SET TABLESPACE,
/// or CREATE DATABASE … TEMPLATE needs free of other sessions.
fn database_statement(node: *mut pg_sys::Node) -> Option<String> {
    unsafe {
        // (inside a transaction block PostgreSQL refuses them all)
        if node.is_null() || pg_sys::IsTransactionBlock() {
            return None;
        }
        let name = match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => (*(node as *mut pg_sys::DropdbStmt)).dbname,
            pg_sys::NodeTag::T_RenameStmt if (*(node as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_DATABASE => {
                (*(node as *mut pg_sys::RenameStmt)).subname
            }
            // CREATE DATABASE … TEMPLATE db copies a database nobody else is
            // connected to; so does ALTER DATABASE db SET TABLESPACE move one.
            pg_sys::NodeTag::T_CreatedbStmt => option_string((*(node as *mut pg_sys::CreatedbStmt)).options, c"template")?,
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let stmt = node as *mut pg_sys::AlterDatabaseStmt;
                option_string((*stmt).options, c"tablespace")?;
                (*stmt).dbname
            }
            _ => return None,
        };
        (!name.is_null()).then(|| std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// The string value of option `name` in a statement's DefElem list.
unsafe fn option_string(options: *mut pg_sys::List, name: &std::ffi::CStr) -> Option<*mut std::ffi::c_char> {
    unsafe {
        let list = pgrx::PgList::<pg_sys::DefElem>::from_pg(options);
        let found = list.iter_ptr().find(|d| !(**d).defname.is_null() && std::ffi::CStr::from_ptr((**d).defname) == name)?;
        // (no argument, or DEFAULT: nothing to wait for)
        if (*found).arg.is_null() {
            return None;
        }
        Some(pg_sys::defGetString(found))
    }
}

/// The statement's own text out of a multi-statement query string.
pub fn statement_text(query: &str, location: i32, len: i32) -> &str {
    let start = (location.max(0) as usize).min(query.len());
    let end = if len <= 0 {
        query.len()
    } else {
        (start + len as usize).min(query.len())
    };
    query.get(start..end).unwrap_or(query)
}

fn check(pstmt: *mut pg_sys::PlannedStmt, query: *const std::ffi::c_char) {
    unsafe {
        // A statement PostgreSQL will refuse anyway (read-only transaction,
        // standby) is left to it; so is a database without zdm.
        if pg_sys::XactReadOnly || pg_sys::RecoveryInProgress() {
            return;
        }
        if pg_sys::get_extension_oid(c"zdm".as_ptr(), true) == pg_sys::InvalidOid {
            return;
        }
    }
    let full = if query.is_null() {
        String::new()
    } else {
        unsafe { std::ffi::CStr::from_ptr(query) }.to_string_lossy().into_owned()
    };
    let text = unsafe { statement_text(&full, (*pstmt).stmt_location, (*pstmt).stmt_len) }.to_string();
    // The statement's names resolve with the session's search_path, as they
    // will for PostgreSQL; zdm's own queries pin theirs (spi::read_*).
    let steps = analyse(&Statement { node: unsafe { (*pstmt).utilityStmt }, text: &text });
    police(&steps);
    if unsafe { pg_sys::LockTimeout } == 0 && unsafe { (*(*pstmt).utilityStmt).type_ } != pg_sys::NodeTag::T_VacuumStmt {
        bound_lock_waits(&steps);
    }
}


/// Refuse or warn about heavy work under a blocking lock on a large table.
fn police(steps: &[Step]) {
    let limit = live::large_table_bytes();
    for step in steps.iter().filter(|s| s.blocking_work() && s.relid != pg_sys::InvalidOid) {
        // Temporary, or created in this transaction: nobody else uses it. Not
        // the user's: PostgreSQL refuses it with its own error.
        if live::private(step.relid) || !owned(step.relid) {
            continue;
        }
        let size = live::size(step.relid);
        if size.bytes <= limit {
            continue;
        }
        let table = super::relation_sql(step.relid);
        let rows = size
            .rows
            .map(|r| format!(", about {r} rows"))
            .unwrap_or_default();
        let message = format!(
            "zdm.safe_ddl: {} on {table} holds {} (blocking {}) through a {} of {:.1} MB{rows}",
            step.action,
            locks::sql_name(step.lock),
            locks::blocks(step.lock),
            step.work.text(),
            size.bytes as f64 / 1e6,
        );
        let detail = format!(
            "{table} is larger than zdm.large_table ({} kB){}.",
            limit / 1024,
            step.note
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        );
        let hint = match &step.alternative {
            Some(alt) => {
                format!("Do it online: {alt}. Or, for a planned outage: SET zdm.safe_ddl = off.")
            }
            None => "No online way in zdm; for a planned outage: SET zdm.safe_ddl = off.".into(),
        };
        match guc::SAFE_DDL.get() {
            SafeDdl::On => pgrx::pg_sys::panic::ErrorReport::new(
                Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                message,
                "zdm",
            )
            .set_detail(detail)
            .set_hint(hint)
            .report(PgLogLevel::ERROR),
            _ => pgrx::pg_sys::panic::ErrorReport::new(Code::ERRCODE_WARNING, message, "zdm")
                .set_detail(detail)
                .set_hint(hint)
                .report(PgLogLevel::WARNING),
        }
    }
}

/// Take the statement's blocking locks first under zdm's lock policy: the
/// relations the user owns, and those PostgreSQL itself locks before it
/// checks any right on them (a foreign key's referenced table, a partition
/// being attached). Nothing when the statement's own table is not the
/// user's: PostgreSQL refuses that before locking anything.
fn bound_lock_waits(steps: &[Step]) {
    let mut targets: Vec<locking::Target> = Vec::new();
    let Some(first) = steps.iter().find(|s| s.relid != pg_sys::InvalidOid) else { return };
    if !owned(first.relid) {
        return;
    }
    for s in steps {
        if s.relid == pg_sys::InvalidOid || s.online || locks::blocks(s.lock) == "nothing" {
            continue;
        }
        if unsafe { pg_sys::CheckRelationOidLockedByMe(s.relid, s.lock, true) } {
            continue;
        }
        if !s.locked_before_rights && !owned(s.relid) {
            continue;
        }
        match targets.iter_mut().find(|t| t.relid == s.relid) {
            Some(t) => {
                t.mode = t.mode.max(s.lock);
                t.recurse |= s.recurse;
            }
            None => targets.push(locking::Target { relid: s.relid, mode: s.lock, recurse: s.recurse }),
        }
    }
    if !targets.is_empty() {
        locking::lock_relations(&targets);
    }
}
