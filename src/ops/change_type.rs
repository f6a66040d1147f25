//! Change a column's type online: a shadow column of the new type beside the
//! old one, filled by the convert trigger (`trigger::convert`) on every
//! write and by the backfill; at contract the shadow takes the column's
//! name, default, NOT NULL, keys, indexes, privileges and statistics, and a
//! serial's sequence widens with it. The application reads and writes the
//! column as before throughout. The steps are the shared column steps
//! (`column`); this module checks the request and builds the expression.
//!
//! The conversion is analysed like `ALTER COLUMN … TYPE … USING`: parsed as
//! one expression, transformed against the table alone (no subqueries,
//! aggregates or other tables), coerced to the new type by assignment, and
//! required to be immutable — every session must compute the same value for
//! the same row, whatever its TimeZone or search_path, or the backfill, the
//! trigger and contract's verification would disagree.

use super::column::{self, ColumnSteps, NewColumn, SyncTrigger};
use crate::errors::{raise, raise_with_detail, Code};
use crate::introspect;
use crate::spi::{self, ident};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

pub static CHANGE_TYPE: ColumnSteps = ColumnSteps { kinds: &["change_type"], takes_old_name: true };

/// The shadow column's name: the column's, marked, within 63 bytes.
pub fn shadow_name(column: &str) -> String {
    spi::with_suffix(column, "_zdm_new")
}

/// Expand: add the shadow column of `new_type` and the convert trigger.
/// Returns the migration id, and whether this call created it (false: a
/// repeated call found it in flight).
pub fn expand(relid: pg_sys::Oid, column_name: &str, new_type: &str, using_expr: Option<&str>, caller_path: &str) -> (i64, bool) {
    let table = introspect::owned_table(relid);
    let (type_oid, typmod) = with_search_path(caller_path, || resolve_type(new_type));
    introspect::user_column(&table, column_name);
    let same = spi::one::<bool>(
        "SELECT atttypid = $3 AND atttypmod = $4 FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2",
        &[relid.into(), column_name.into(), type_oid.into(), typmod.into()],
    );
    if same == Some(true) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("column {} of table {} is already of type {}", ident(column_name), table.sql(), format_type(type_oid, typmod)),
            "Nothing to change.",
        );
    }
    // Checked now, without a lock; again under expand's lock (the trigger closure).
    let (_, sql) = analyse(relid, &table.name, column_name, type_oid, typmod, using_expr, caller_path);
    // A migration tool re-running this call finds the migration it started.
    let type_sql = format_type(type_oid, typmod);
    if let Some(id) = crate::catalog::same_in_flight(relid, "change_type", column_name, None, Some(&type_sql), Some(&sql)) {
        pgrx::notice!("zdm migration {id} is already changing this column to {type_sql}; returning its id");
        return (id, false);
    }
    if let Some((id, phase)) = crate::catalog::in_flight_on_columns(relid, &[column_name, &shadow_name(column_name)]) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column {} of table {} is already under zdm migration {id} (phase {phase})", ident(column_name), table.sql()),
            format!("Finish it with zdm.contract({id}) or undo it with zdm.abort({id}) first."),
        );
    }
    let shadow = shadow_name(column_name);
    let column = column_name.to_string();
    // Analysed again under expand's lock, once: the tree the trigger runs
    // and the SQL contract verifies with come from the same analysis.
    let trigger = |_: &introspect::Column| SyncTrigger {
        name_prefix: "zdm_convert_",
        function: "zdm.convert_trigger",
        args: vec![column.clone(), shadow.clone()],
        conversion: Some(analyse(relid, &table.name, &column, type_oid, typmod, using_expr, caller_path)),
    };
    (column::expand(relid, column_name, &NewColumn { kind: "change_type", name: &shadow, new_type: Some((type_oid, typmod)), trigger: &trigger, marks_unwritten: false }), true)
}

/// Run `f` with `path` as search_path (rolled back afterwards).
fn with_search_path<R>(path: &str, f: impl FnOnce() -> R) -> R {
    let path = CString::new(path).unwrap_or_default();
    crate::security::with_guc_nest_level(&[(c"search_path", path.as_c_str())], f)
}

fn format_type(oid: pg_sys::Oid, typmod: i32) -> String {
    spi::one::<String>("SELECT pg_catalog.format_type($1, $2)", &[oid.into(), typmod.into()]).unwrap_or_default()
}

/// `new_type` through the type parser, typmod included: 42704 for an unknown
/// type, 42601 for text that is not a type name.
fn resolve_type(new_type: &str) -> (pg_sys::Oid, i32) {
    let text = CString::new(new_type).unwrap_or_else(|_| {
        raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, "new_type contains a NUL byte", "Pass a type name such as bigint or numeric(12,2).")
    });
    let (mut oid, mut typmod) = (pg_sys::InvalidOid, -1i32);
    unsafe {
        crate::compat::parse_type_string(text.as_ptr(), &mut oid, &mut typmod);
    }
    let (kind, typtype) = spi::first_row(
        "SELECT t.typrelid <> 0, t.typtype::text FROM pg_catalog.pg_type t WHERE t.oid = $1",
        &[oid.into()],
        |r| Ok((r.get::<bool>(1)?.unwrap_or(false), r.get::<String>(2)?.unwrap_or_default())),
    )
    .unwrap_or((false, String::new()));
    if typtype == "p" || (kind && typtype == "c") {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("zdm cannot change a column to type {}", format_type(oid, typmod)),
            "Pick a base, domain, enum, range or array type.",
        );
    }
    (oid, typmod)
}

/// Parse and analyse the conversion; returns its node tree (for the trigger)
/// and its SQL, deparsed against the table (for contract's verification).
#[allow(clippy::too_many_arguments)]
fn analyse(
    relid: pg_sys::Oid,
    relname: &str,
    column: &str,
    type_oid: pg_sys::Oid,
    typmod: i32,
    using_expr: Option<&str>,
    caller_path: &str,
) -> (String, String) {
    let source = match using_expr {
        Some(e) => e.to_string(),
        None => ident(column),
    };
    let c_source = CString::new(source.as_str()).unwrap_or_else(|_| {
        raise(Code::ERRCODE_SYNTAX_ERROR, "using_expr contains a NUL byte", "Pass one SQL expression.")
    });
    unsafe {
        let raw = single_expression(&c_source, &source);
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = c_source.as_ptr();
        let nsitem = pg_sys::addRangeTableEntryForRelation(pstate, rel, pg_sys::AccessShareLock as i32, std::ptr::null_mut(), false, true);
        pg_sys::addNSItemToQuery(pstate, nsitem, true, true, true);
        // Function, operator and type names resolve with the caller's
        // search_path, once: the tree keeps the OIDs found.
        let expr = with_search_path(caller_path, || {
            pg_sys::transformExpr(pstate, raw, pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM)
        });
        if pg_sys::expression_returns_set(expr) {
            raise(Code::ERRCODE_FEATURE_NOT_SUPPORTED, "using_expr must not return a set", "Pass a scalar expression of the column.");
        }
        let from_type = pg_sys::exprType(expr);
        let coerced = with_search_path(caller_path, || pg_sys::coerce_to_target_type(
            pstate,
            expr,
            from_type,
            type_oid,
            typmod,
            pg_sys::CoercionContext::COERCION_ASSIGNMENT,
            pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
            -1,
        ));
        if coerced.is_null() {
            raise_with_detail(
                Code::ERRCODE_CANNOT_COERCE,
                format!(
                    "{} cannot be cast automatically to type {}",
                    if using_expr.is_some() { "using_expr".to_string() } else { format!("column {}", ident(column)) },
                    format_type(type_oid, typmod)
                ),
                format!("The conversion yields {}.", format_type(from_type, -1)),
                format!("Pass using_expr, e.g. using_expr => '{}::{}'.", ident(column), format_type(type_oid, typmod)),
            );
        }
        pg_sys::assign_expr_collations(pstate, coerced);
        let attnum = introspect::column(relid, column).map(|c| c.attnum).unwrap_or_default();
        if !references_only(coerced, attnum) {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("using_expr may reference only column {}", ident(column)),
                "The conversion is recomputed from that column alone whenever it is written; other columns, system columns and whole-row references could change or go away under it.",
            );
        }
        if pg_sys::contain_mutable_functions(coerced) {
            raise_with_detail(
                Code::ERRCODE_INVALID_OBJECT_DEFINITION,
                format!("the conversion of column {} to {} is not immutable", ident(column), format_type(type_oid, typmod)),
                "Every session must compute the same value for a row: the sync trigger runs in each writer's session (its TimeZone, DateStyle …).",
                "Make it immutable, e.g. for timestamp to timestamptz: using_expr => 'col AT TIME ZONE ''UTC'''.",
            );
        }
        let tree = CStr::from_ptr(pg_sys::nodeToString(coerced as *const std::ffi::c_void)).to_string_lossy().into_owned();
        let name = CString::new(relname).unwrap_or_default();
        let context = pg_sys::deparse_context_for(name.as_ptr(), relid);
        // showimplicit: the casts coercion added must be in the text too.
        let sql = CStr::from_ptr(pg_sys::deparse_expression(coerced, context, false, true)).to_string_lossy().into_owned();
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        (tree, sql)
    }
}

/// The raw parse tree of exactly one expression (no FROM, no second item,
/// no alias): anything else is 42601 before anything runs.
fn single_expression(text: &CStr, source: &str) -> *mut pg_sys::Node {
    let refuse = || -> ! {
        raise(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("using_expr must be a single expression: {}", spi::literal(source)),
            "Pass one expression of the column, e.g. 'col::jsonb' or 'col AT TIME ZONE ''UTC'''.",
        )
    };
    crate::parse::sole_expression(text, pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR).unwrap_or_else(|| refuse())
}

/// Every Var in `node` is attribute `attnum` of the table (no other column,
/// no system column, no whole-row reference).
fn references_only(node: *mut pg_sys::Node, attnum: i16) -> bool {
    #[pg_guard]
    unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
        unsafe {
            if node.is_null() {
                return false;
            }
            if (*node).type_ == pg_sys::NodeTag::T_Var {
                let wanted = *(ctx as *const i16);
                return (*(node as *mut pg_sys::Var)).varattno != wanted; // true stops the walk: a stranger
            }
            pg_sys::expression_tree_walker(node, Some(walk), ctx)
        }
    }
    let mut wanted = attnum;
    !unsafe { walk(node, &mut wanted as *mut i16 as *mut std::ffi::c_void) }
}
