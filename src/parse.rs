//! The raw parser, for refusing malformed user text before anything runs;
//! and rewriting the column numbers of a parsed expression tree.

use pgrx::prelude::*;
use std::ffi::CStr;

/// The one expression of `sql` parsed in `mode` — a SELECT with exactly one
/// unnamed target and nothing else (no FROM, WHERE, second statement, set
/// operation, INTO …) — or None. Parse errors are raised as PostgreSQL
/// raises them; callers that want them as a refusal catch them.
pub fn sole_expression(sql: &CStr, mode: pg_sys::RawParseMode::Type) -> Option<*mut pg_sys::Node> {
    unsafe {
        let list = pg_sys::raw_parser(sql.as_ptr(), mode);
        if list.is_null() || (*list).length != 1 {
            return None;
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt as *mut pg_sys::SelectStmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return None;
        }
        let s = &*stmt;
        let single_target = !s.targetList.is_null() && (*s.targetList).length == 1;
        let nothing_else = s.fromClause.is_null()
            && s.whereClause.is_null()
            && s.groupClause.is_null()
            && s.havingClause.is_null()
            && s.windowClause.is_null()
            && s.valuesLists.is_null()
            && s.sortClause.is_null()
            && s.limitCount.is_null()
            && s.limitOffset.is_null()
            && s.lockingClause.is_null()
            && s.withClause.is_null()
            && s.distinctClause.is_null()
            && s.intoClause.is_null()
            && s.op == pg_sys::SetOperation::SETOP_NONE;
        if !single_target || !nothing_else {
            return None;
        }
        let target = (*(*s.targetList).elements).ptr_value as *mut pg_sys::ResTarget;
        if !(*target).name.is_null() {
            return None;
        }
        Some((*target).val)
    }
}

/// Point every reference to attribute `from` (every Var, if None) in an
/// expression tree at attribute `to`, in place: an expression written
/// against one relation's column numbers, read against another's (a new
/// column; a partition that numbers its columns otherwise).
pub fn retarget(node: *mut pg_sys::Node, from: Option<i16>, to: i16) {
    let mut ctx = (from, to);
    unsafe { retarget_vars(node, &mut ctx as *mut (Option<i16>, i16) as *mut std::ffi::c_void) };
}

#[pg_guard]
unsafe extern "C-unwind" fn retarget_vars(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        if (*node).type_ == pg_sys::NodeTag::T_Var {
            let (from, to) = *(ctx as *mut (Option<i16>, i16));
            let var = node as *mut pg_sys::Var;
            if from.is_none_or(|f| (*var).varattno == f) {
                (*var).varattno = to;
                (*var).varattnosyn = to;
            }
            return false;
        }
        pg_sys::expression_tree_walker(node, Some(retarget_vars), ctx)
    }
}

/// The attribute numbers every Var of `node` reads (varno 1, the table's
/// own level), each once; 0 for a whole-row reference, negative for a
/// system column.
pub fn var_attnos(node: *mut pg_sys::Node) -> Vec<i16> {
    let mut found: Vec<i16> = Vec::new();
    unsafe { collect_vars(node, &mut found as *mut Vec<i16> as *mut std::ffi::c_void) };
    found
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_vars(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
    unsafe {
        if node.is_null() {
            return false;
        }
        if (*node).type_ == pg_sys::NodeTag::T_Var {
            let found = &mut *(ctx as *mut Vec<i16>);
            let a = (*(node as *mut pg_sys::Var)).varattno;
            if !found.contains(&a) {
                found.push(a);
            }
            return false;
        }
        pg_sys::expression_tree_walker(node, Some(collect_vars), ctx)
    }
}
