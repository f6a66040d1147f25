//! A type change's conversion applied to the old column's default: contract
//! gives the new column the default a row inserted without the column would
//! have got — the old default converted as the old value would be.

use crate::spi;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// The default the column of `attnum` should have after its type changes to
/// (`type_oid`, `typmod`) through `using_tree` (the conversion's node tree,
/// over that column): None without a default; its own text when it
/// converts through the assignment cast, as ALTER COLUMN … TYPE converts a
/// default (an integer's `nextval(…)` stays `nextval(…)`); else the
/// conversion with the default in the column's place, deparsed (`'0'::text`
/// under `age::integer` becomes `('0'::text)::integer`). Err(the default's
/// text) when neither applies, or when a constant's conversion fails.
pub fn converted_default(relid: pg_sys::Oid, attnum: i16, type_oid: pg_sys::Oid, typmod: i32, using_tree: Option<&str>) -> Result<Option<String>, String> {
    let Some((bin, text, relname)) = spi::first_row(
        "SELECT d.adbin::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid), c.relname::text \
           FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_class c ON c.oid = d.adrelid WHERE d.adrelid = $1 AND d.adnum = $2",
        &[relid.into(), attnum.into()],
        |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default(), r.get::<String>(3)?.unwrap_or_default())),
    ) else {
        return Ok(None);
    };
    let (Ok(bin), Ok(relname)) = (CString::new(bin), CString::new(relname)) else { return Err(text) };
    unsafe {
        let default = pg_sys::stringToNode(bin.as_ptr()) as *mut pg_sys::Node;
        let stripped = pg_sys::strip_implicit_coercions(default);
        let assignable = !pg_sys::coerce_to_target_type(
            std::ptr::null_mut(),
            stripped,
            pg_sys::exprType(stripped),
            type_oid,
            typmod,
            pg_sys::CoercionContext::COERCION_ASSIGNMENT,
            pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
            -1,
        )
        .is_null();
        if assignable {
            return Ok(Some(text));
        }
        let Some(tree) = using_tree.and_then(|t| CString::new(t).ok()) else { return Err(text) };
        let conversion = pg_sys::stringToNode(tree.as_ptr()) as *mut pg_sys::Node;
        let converted = crate::compat::replace_var(conversion, attnum, default as *mut pg_sys::Expr);
        let context = pg_sys::deparse_context_for(relname.as_ptr(), relid);
        let sql = CStr::from_ptr(pg_sys::deparse_expression(converted, context, false, true)).to_string_lossy().into_owned();
        // A constant conversion that fails ('unknown'::text under
        // age::integer) would fail every insert that leaves the column out:
        // tried now, so that it is refused before anything is done.
        if !pg_sys::contain_mutable_functions(converted) && crate::subxact::attempt(|| spi::one::<bool>(&format!("SELECT ({sql}) IS NULL"), &[])).is_err() {
            return Err(text);
        }
        Ok(Some(sql))
    }
}
