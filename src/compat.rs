//! What differs between the PostgreSQL majors zdm is built for (15 and 18),
//! in one place: code elsewhere calls these and names no major. Each item
//! says what changed; the rest of the C API zdm uses is the same in both.
//! Built for 15 by default (`--features pg15`), for 18 with
//! `--no-default-features --features pg18`.

use pgrx::pg_sys;

/// Attribute `i` (0-based) of a tuple descriptor. 18 keeps an array of
/// `CompactAttribute`s first and the full `FormData_pg_attribute`s after it
/// (tupdesc.h `TupleDescAttr`, a static inline there, computed the same way
/// here); 15 has the full attributes only.
#[inline(always)]
pub unsafe fn attr<'a>(tupdesc: pg_sys::TupleDesc, i: usize) -> &'a pg_sys::FormData_pg_attribute {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        &*(*tupdesc).attrs.as_ptr().add(i)
    }
    #[cfg(feature = "pg18")]
    unsafe {
        let full = (*tupdesc).compact_attrs.as_ptr().add((*tupdesc).natts as usize) as *const pg_sys::FormData_pg_attribute;
        &*full.add(i)
    }
}

/// The offset of attribute `i` (0-based) in a row's data that the executor
/// cached while deforming a row (-1: not cached). 18 keeps it in the
/// compact attribute (`attcacheoff` left `FormData_pg_attribute`).
#[inline(always)]
pub unsafe fn cached_offset(tupdesc: pg_sys::TupleDesc, i: usize) -> i32 {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        attr(tupdesc, i).attcacheoff
    }
    #[cfg(feature = "pg18")]
    unsafe {
        (*(*tupdesc).compact_attrs.as_ptr().add(i)).attcacheoff
    }
}

/// SQL true when pg_constraint row `co` is enforced: 18 added NOT ENFORCED
/// checks and foreign keys (`conenforced`); zdm carries enforced ones only
/// (a NOT VALID copy of an unenforced one would fail its validation).
#[cfg(not(feature = "pg18"))]
pub const CONSTRAINT_ENFORCED: &str = "true";
#[cfg(feature = "pg18")]
pub const CONSTRAINT_ENFORCED: &str = "co.conenforced";

/// `pqsignal` in a backend: 18 exports it as `pqsignal_be` (port.h maps the
/// name with a macro, which bindings do not see).
pub unsafe fn pqsignal(signal: i32, handler: pg_sys::pqsigfunc) {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::pqsignal(signal, handler);
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::pqsignal_be(signal, handler);
    }
}

/// `PortalRun` to completion at top level. 18 dropped its `run_once`
/// argument (a portal always runs once there).
pub unsafe fn portal_run(portal: pg_sys::Portal, dest: *mut pg_sys::DestReceiver, qc: *mut pg_sys::QueryCompletion) {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::PortalRun(portal, std::ffi::c_long::MAX, true, true, dest, dest, qc);
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::PortalRun(portal, std::ffi::c_long::MAX, true, dest, dest, qc);
    }
}

/// This backend's local transaction id: 17 moved it into `PGPROC.vxid`.
#[inline(always)]
pub unsafe fn local_xid() -> u32 {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        (*pg_sys::MyProc).lxid
    }
    #[cfg(feature = "pg18")]
    unsafe {
        (*pg_sys::MyProc).vxid.lxid
    }
}

/// `parseTypeString`: 16 replaced its `missing_ok` flag with an error
/// context (NULL: raise as before).
pub unsafe fn parse_type_string(text: *const std::ffi::c_char, oid: &mut pg_sys::Oid, typmod: &mut i32) {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::parseTypeString(text, oid, typmod, false);
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::parseTypeString(text, oid, typmod, std::ptr::null_mut());
    }
}

/// `ReplaceVarsFromTargetList` for an expression of one relation (varno 1,
/// no whole-row reference): every Var of attribute `attnum` replaced by
/// `with`. 18 added a `result_relation` argument.
pub unsafe fn replace_var(node: *mut pg_sys::Node, attnum: i16, with: *mut pg_sys::Expr) -> *mut pg_sys::Node {
    unsafe {
        let entry = pg_sys::makeTargetEntry(with, attnum, std::ptr::null_mut(), false);
        let list = pg_sys::lappend(std::ptr::null_mut(), entry as *mut std::ffi::c_void);
        let mut sublinks = false;
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::ReplaceVarsFromTargetList(
                node,
                1,
                0,
                std::ptr::null_mut(),
                list,
                pg_sys::ReplaceVarsNoMatchOption::REPLACEVARS_REPORT_ERROR,
                0,
                &mut sublinks,
            )
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::ReplaceVarsFromTargetList(
                node,
                1,
                0,
                std::ptr::null_mut(),
                list,
                0,
                pg_sys::ReplaceVarsNoMatchOption::REPLACEVARS_REPORT_ERROR,
                0,
                &mut sublinks,
            )
        }
    }
}

/// `build_attrmap_by_name(indesc, outdesc)`: for each attribute of
/// `outdesc`, its number in `indesc`. 16 added `missing_ok`.
pub unsafe fn attrmap_by_name(indesc: pg_sys::TupleDesc, outdesc: pg_sys::TupleDesc) -> *mut pg_sys::AttrMap {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::build_attrmap_by_name(indesc, outdesc)
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::build_attrmap_by_name(indesc, outdesc, false)
    }
}

/// An UPDATE's raw parse tree has a RETURNING clause (18 made it a
/// `ReturningClause` node).
pub unsafe fn update_returns(u: &pg_sys::UpdateStmt) -> bool {
    #[cfg(not(feature = "pg18"))]
    {
        !u.returningList.is_null()
    }
    #[cfg(feature = "pg18")]
    {
        !u.returningClause.is_null()
    }
}

/// A `GENERATED ALWAYS AS (…)` column constraint makes a virtual column
/// (computed when read, no rewrite): 18 added them (`generated_kind` 'v');
/// on 15 every generated column is stored.
pub fn generated_is_virtual(c: *mut pg_sys::Constraint) -> bool {
    #[cfg(not(feature = "pg18"))]
    {
        let _ = c;
        false
    }
    #[cfg(feature = "pg18")]
    unsafe {
        (*c).generated_kind as u8 == b'v'
    }
}

/// A type name as written (`varchar(50)`, `public.money2`) parsed into a
/// TypeName: 16 added the soft-error context argument.
pub unsafe fn type_name(text: &std::ffi::CStr) -> *mut pg_sys::TypeName {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::typeStringToTypeName(text.as_ptr())
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::typeStringToTypeName(text.as_ptr(), std::ptr::null_mut())
    }
}

/// A possibly qualified name as written (`public."Orders"`) split into its
/// parts: 16 added the soft-error context argument.
pub unsafe fn qualified_name_list(text: &std::ffi::CStr) -> *mut pg_sys::List {
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::stringToQualifiedNameList(text.as_ptr())
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::stringToQualifiedNameList(text.as_ptr(), std::ptr::null_mut())
    }
}
