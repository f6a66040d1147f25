//! Comparing two values of a column, as the triggers do on every row:
//! first by their stored bytes (no detoasting), then — only when the bytes
//! differ and the value could still be the same — by binary image.
//!
//! Split in two so that a trigger that has compared the bytes of a pair
//! never compares them again: `raw_same`, and `value_same` for a pair whose
//! bytes differ. For the common varlenas (both stored inline with the same
//! kind of header) the bytes decide, and `value_same` answers from the
//! headers alone.

use pgrx::pg_sys;
use std::ffi::CStr;

/// The same stored bytes (NULLs equal each other): equal values, without
/// detoasting. A false answer proves nothing (compressed or TOASTed copies
/// of one value differ); `value_same` decides then.
#[inline(always)]
pub(crate) unsafe fn raw_same(att: &pg_sys::FormData_pg_attribute, a_null: bool, a: pg_sys::Datum, b_null: bool, b: pg_sys::Datum) -> bool {
    unsafe {
        if a_null || b_null {
            return a_null && b_null;
        }
        if att.attbyval {
            return a == b;
        }
        match att.attlen {
            -1 => {
                let (pa, pb) = (a.cast_mut_ptr::<u8>() as *const u8, b.cast_mut_ptr::<u8>() as *const u8);
                if pa == pb {
                    return true;
                }
                let size = stored_size(pa);
                size == stored_size(pb) && bytes(pa, size) == bytes(pb, size)
            }
            -2 => CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr()),
            n => bytes(a.cast_mut_ptr::<u8>(), n as usize) == bytes(b.cast_mut_ptr::<u8>(), n as usize),
        }
    }
}

/// Binary-image equality of two values of the column's type (NULLs equal
/// each other). Differently stored copies of one varlena value (compressed,
/// toasted, short header) compare equal.
#[inline]
pub(crate) unsafe fn same(att: &pg_sys::FormData_pg_attribute, a_null: bool, a: pg_sys::Datum, b_null: bool, b: pg_sys::Datum) -> bool {
    unsafe { raw_same(att, a_null, a, b_null, b) || value_same(att, a_null, a, b_null, b) }
}

/// For a pair whose stored bytes differ (`raw_same` said false): the same
/// value all the same — a compressed or TOASTed copy, or one with the other
/// kind of header.
#[inline]
pub(crate) unsafe fn value_same(att: &pg_sys::FormData_pg_attribute, a_null: bool, a: pg_sys::Datum, b_null: bool, b: pg_sys::Datum) -> bool {
    unsafe {
        debug_assert!(!raw_same(att, a_null, a, b_null, b), "value_same is for pairs whose bytes differ");
        if a_null || b_null || att.attbyval || att.attlen != -1 {
            return false; // fixed-width or NULL: the bytes decided
        }
        let (pa, pb) = (a.cast_mut_ptr::<u8>() as *const u8, b.cast_mut_ptr::<u8>() as *const u8);
        let (ka, kb) = (form(pa), form(pb));
        if ka == kb && ka != Form::Other {
            return false; // both inline with the same kind of header: the bytes decided
        }
        detoasted_same(a.cast_mut_ptr(), b.cast_mut_ptr())
    }
}

/// How a varlena is stored, as far as comparing goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// inline, 1-byte header
    Short,
    /// inline, 4-byte header, not compressed
    Plain,
    /// compressed or external (a TOAST pointer)
    Other,
}

#[inline(always)]
unsafe fn form(p: *const u8) -> Form {
    unsafe {
        let v = p as *const pg_sys::varlena;
        if pgrx::varlena::varatt_is_1b_e(v) {
            Form::Other
        } else if pgrx::varlena::varatt_is_1b(v) {
            Form::Short
        } else if pgrx::varlena::varatt_is_4b_u(v) {
            Form::Plain
        } else {
            Form::Other
        }
    }
}

/// VARSIZE_ANY: spelled out for the little-endian header layout (both
/// inline forms), pgrx's function otherwise. `locate::varlena_size` is the
/// same with a row's bounds checked.
#[inline(always)]
pub(crate) unsafe fn stored_size(p: *const u8) -> usize {
    unsafe {
        #[cfg(target_endian = "little")]
        {
            let b = *p;
            if b & 0x01 == 0 {
                return ((p as *const u32).read_unaligned() >> 2) as usize; // 4-byte header
            }
            if b != 0x01 {
                return (b >> 1) as usize; // 1-byte header
            }
        }
        pgrx::varlena::varsize_any(p as *const pg_sys::varlena)
    }
}

#[inline(always)]
unsafe fn bytes<'a>(p: *const u8, n: usize) -> &'a [u8] {
    unsafe { std::slice::from_raw_parts(p, n) }
}

/// The detoasted contents are the same. Values of different lengths are
/// told apart from their headers and TOAST pointers alone, as texteq does:
/// a changed TOASTed value is not fetched just to learn that it changed.
#[cold]
unsafe fn detoasted_same(a: *mut pg_sys::varlena, b: *mut pg_sys::varlena) -> bool {
    use pgrx::varlena::{vardata_any, varatt_is_1b_e, varatt_is_4b_c, varsize_any_exhdr};
    unsafe {
        if pg_sys::toast_raw_datum_size(pg_sys::Datum::from(a)) != pg_sys::toast_raw_datum_size(pg_sys::Datum::from(b)) {
            return false;
        }
        let (a, b) = if varatt_is_1b_e(a) || varatt_is_4b_c(a) || varatt_is_1b_e(b) || varatt_is_4b_c(b) {
            (pg_sys::pg_detoast_datum_packed(a), pg_sys::pg_detoast_datum_packed(b))
        } else {
            (a, b)
        };
        let (la, lb) = (varsize_any_exhdr(a), varsize_any_exhdr(b));
        la == lb && bytes(vardata_any(a) as *const u8, la) == bytes(vardata_any(b) as *const u8, lb)
    }
}
