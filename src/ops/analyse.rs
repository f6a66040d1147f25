//! User expressions over a table's row, analysed the way ALTER TABLE
//! analyses `USING` and `DEFAULT`: parsed as exactly one expression,
//! transformed against the table alone, coerced to the column's type by
//! assignment. A type change's conversion and an added column's fill and
//! default go through here; so does the type a column is given.

use crate::errors::{raise, raise_with_detail, Code};
use crate::spi::{self, ident};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// Run `f` with `path` as search_path (rolled back afterwards).
pub fn with_search_path<R>(path: &str, f: impl FnOnce() -> R) -> R {
    let path = CString::new(path).unwrap_or_default();
    crate::security::with_guc_nest_level(&[(c"search_path", path.as_c_str())], f)
}

pub fn format_type(oid: pg_sys::Oid, typmod: i32) -> String {
    spi::one::<String>("SELECT pg_catalog.format_type($1, $2)", &[oid.into(), typmod.into()]).unwrap_or_default()
}

/// `type_text` through the type parser, typmod included: 42704 for an
/// unknown type, 42601 for text that is not a type name, 0A000 for a
/// pseudo-type or a table's row type.
pub fn resolve_type(type_text: &str, what: &str) -> (pg_sys::Oid, i32) {
    let text = CString::new(type_text).unwrap_or_else(|_| {
        raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("{what} contains a NUL byte"), "Pass a type name such as bigint or numeric(12,2).")
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
            format!("zdm cannot give a column type {}", format_type(oid, typmod)),
            "Pick a base, domain, enum, range or array type.",
        );
    }
    (oid, typmod)
}

/// What an expression may read of the row.
#[derive(Clone, Copy)]
pub enum Reads {
    /// one column only (a type change's conversion)
    Column(i16),
    /// any of the table's plain columns: no system column, no whole-row
    /// reference, no generated column (a BEFORE trigger sees those unset)
    Row,
    /// nothing: a column default
    Nothing,
}

/// An analysed expression: its node tree (what a trigger runs, with the
/// OIDs found), its SQL deparsed against the table (what is recorded and
/// shown), and whether it is volatile.
pub struct Analysed {
    pub tree: String,
    pub sql: String,
    pub volatile: bool,
    /// the table's columns it reads (attribute numbers)
    pub reads: Vec<i16>,
}

/// Parse and analyse `source` (argument `what`, for messages) over table
/// `relid`, coerced by assignment to (`type_oid`, `typmod`); names resolve
/// with `caller_path`. `immutable`: refuse anything but an immutable
/// expression (42P17): every writer's session evaluates it.
#[allow(clippy::too_many_arguments)]
pub fn expression(
    relid: pg_sys::Oid,
    relname: &str,
    what: &str,
    source: &str,
    reads: Reads,
    type_oid: pg_sys::Oid,
    typmod: i32,
    immutable: bool,
    caller_path: &str,
) -> Analysed {
    let c_source = CString::new(source).unwrap_or_else(|_| raise(Code::ERRCODE_SYNTAX_ERROR, format!("{what} contains a NUL byte"), "Pass one SQL expression."));
    let kind = match reads {
        Reads::Nothing => pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT,
        _ => pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
    };
    unsafe {
        let raw = single_expression(&c_source, source, what);
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = c_source.as_ptr();
        let nsitem = pg_sys::addRangeTableEntryForRelation(pstate, rel, pg_sys::AccessShareLock as i32, std::ptr::null_mut(), false, true);
        pg_sys::addNSItemToQuery(pstate, nsitem, true, true, true);
        // Function, operator and type names resolve with the caller's
        // search_path, once: the tree keeps the OIDs found.
        let expr = with_search_path(caller_path, || pg_sys::transformExpr(pstate, raw, kind));
        if pg_sys::expression_returns_set(expr) {
            raise(Code::ERRCODE_FEATURE_NOT_SUPPORTED, format!("{what} must not return a set"), "Pass a scalar expression.");
        }
        let from_type = pg_sys::exprType(expr);
        let coerced = with_search_path(caller_path, || {
            pg_sys::coerce_to_target_type(
                pstate,
                expr,
                from_type,
                type_oid,
                typmod,
                pg_sys::CoercionContext::COERCION_ASSIGNMENT,
                pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
                -1,
            )
        });
        if coerced.is_null() {
            raise_with_detail(
                Code::ERRCODE_CANNOT_COERCE,
                format!("{what} cannot be cast automatically to type {}", format_type(type_oid, typmod)),
                format!("It yields {}.", format_type(from_type, -1)),
                format!("Cast it explicitly, e.g. '({source})::{}'.", format_type(type_oid, typmod)),
            );
        }
        pg_sys::assign_expr_collations(pstate, coerced);
        match reads {
            Reads::Column(attnum) if !references_only(coerced, attnum) => raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{what} may reference only the column being changed"),
                "The conversion is recomputed from that column alone whenever it is written; other columns, system columns and whole-row references could change or go away under it.",
            ),
            Reads::Row => refuse_unreadable(coerced, relid, what),
            _ => {}
        }
        if immutable && pg_sys::contain_mutable_functions(coerced) {
            raise_with_detail(
                Code::ERRCODE_INVALID_OBJECT_DEFINITION,
                format!("{what} is not immutable: {source}"),
                "Every session must compute the same value for a row: the trigger runs in each writer's session (its TimeZone, DateStyle …).",
                "Make it immutable, e.g. for timestamp to timestamptz: 'col AT TIME ZONE ''UTC'''.",
            );
        }
        let volatile = pg_sys::contain_volatile_functions(coerced);
        let tree = CStr::from_ptr(pg_sys::nodeToString(coerced as *const std::ffi::c_void)).to_string_lossy().into_owned();
        let name = CString::new(relname).unwrap_or_default();
        let context = pg_sys::deparse_context_for(name.as_ptr(), relid);
        // showimplicit: the casts coercion added must be in the text too.
        let sql = crate::security::deparse_pinned(|| {
            CStr::from_ptr(pg_sys::deparse_expression(coerced, context, false, true)).to_string_lossy().into_owned()
        });
        let reads = crate::parse::var_attnos(coerced).into_iter().filter(|&a| a > 0).collect();
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        Analysed { tree, sql, volatile, reads }
    }
}

/// The raw parse tree of exactly one expression (no FROM, no second item,
/// no alias): anything else is 42601 before anything runs.
fn single_expression(text: &CStr, source: &str, what: &str) -> *mut pg_sys::Node {
    let refuse = || -> ! {
        raise(
            Code::ERRCODE_SYNTAX_ERROR,
            format!("{what} must be a single expression: {}", spi::literal(source)),
            "Pass one expression, e.g. 'col::jsonb' or 'lower(email)'.",
        )
    };
    crate::parse::sole_expression(text, pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR).unwrap_or_else(|| refuse())
}

/// Every Var in `node` is attribute `attnum` of the table (no other column,
/// no system column, no whole-row reference).
fn references_only(node: *mut pg_sys::Node, attnum: i16) -> bool {
    crate::parse::var_attnos(node).iter().all(|&a| a == attnum)
}

/// A fill reads plain columns only: system columns and whole-row references
/// (their layout differs between a partition and its parent, and they
/// change under the row), and generated columns (a BEFORE trigger sees them
/// before they are computed) are refused.
fn refuse_unreadable(node: *mut pg_sys::Node, relid: pg_sys::Oid, what: &str) {
    for attnum in crate::parse::var_attnos(node) {
        if attnum <= 0 {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{what} may reference only the table's own columns, not a system column or the whole row"),
                "Name the columns it reads.",
            );
        }
        let generated = spi::first_row(
            "SELECT attname::text, attgenerated <> '' FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
            &[relid.into(), attnum.into()],
            |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<bool>(2)?.unwrap_or(false))),
        );
        if let Some((name, true)) = generated {
            raise(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{what} reads generated column {}", ident(&name)),
                "A generated column is computed after the trigger that fills the new column runs; read the columns it is computed from instead.",
            );
        }
    }
}
