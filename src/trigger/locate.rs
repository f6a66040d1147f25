//! Reading an UPDATE's old row without deforming it. The sync trigger needs
//! the old row's values of the two migration columns to tell which one the
//! statement wrote; they are usually the table's last two, so deforming
//! reads every attribute before them — on a wide row most of the work.
//!
//! The old and the new row usually differ only in the columns the statement
//! set. When their null bitmaps agree on the attributes before the first of
//! the two columns, and their data areas agree byte for byte up to where
//! that attribute is laid out from in the new row, then every attribute
//! before it decodes to the same offsets in both (decoding reads nothing but
//! those bytes and bits), so the old row's remaining attributes are walked
//! from that offset on. Otherwise (a column before them was set too) the
//! caller deforms the old row as before.

use super::splice::{align, attr, prefix_end};
use pgrx::pg_sys;

/// Values of attributes `first..=last` (1-based) of `old`, found by
/// comparing it with `new`, which `new_slot` holds deformed up to `last` at
/// least. Written to `out[0..=last-first]`. False when the rows do not share
/// their leading bytes (or are in a shape this does not handle).
pub(crate) unsafe fn trailing_values(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    new_slot: *mut pg_sys::TupleTableSlot,
    tupdesc: pg_sys::TupleDesc,
    first: i32,
    last: i32,
    out: &mut [(pg_sys::Datum, bool)],
) -> bool {
    unsafe {
        let natts = (*tupdesc).natts;
        if first < 1 || first > last || last > natts || (last - first + 1) as usize > out.len() {
            return false;
        }
        let ops = (*new_slot).tts_ops;
        let heap_slot = std::ptr::eq(ops, &raw const pg_sys::TTSOpsBufferHeapTuple) || std::ptr::eq(ops, &raw const pg_sys::TTSOpsHeapTuple);
        if !heap_slot || (*(new_slot as *mut pg_sys::HeapTupleTableSlot)).tuple != new || i32::from((*new_slot).tts_nvalid) < last {
            return false;
        }
        let (oh, nh) = ((*old).t_data, (*new).t_data);
        let count = |h: pg_sys::HeapTupleHeader| ((*h).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as i32;
        if count(oh) != natts || count(nh) != natts {
            return false; // a row stored before an ADD COLUMN: missing values
        }
        let (Some(old_len), Some(new_len)) = (
            ((*old).t_len as usize).checked_sub((*oh).t_hoff as usize),
            ((*new).t_len as usize).checked_sub((*nh).t_hoff as usize),
        ) else {
            return false;
        };
        let t = (first - 1) as usize;
        if !same_nulls_before(oh, nh, t) {
            return false;
        }
        let new_data = (nh as *const u8).add((*nh).t_hoff as usize);
        let old_data = (oh as *const u8).add((*oh).t_hoff as usize);
        let values = (*new_slot).tts_values as *const pg_sys::Datum;
        let nulls = (*new_slot).tts_isnull as *const bool;
        let Some(prefix) = prefix_end(tupdesc, values, nulls, t, new_data, new_len) else {
            return false;
        };
        if prefix > new_len
            || prefix > old_len
            || std::slice::from_raw_parts(old_data, prefix) != std::slice::from_raw_parts(new_data, prefix)
        {
            return false;
        }
        let has_nulls = (*oh).t_infomask as u32 & pg_sys::HEAP_HASNULL != 0;
        let bits = (*oh).t_bits.as_ptr();
        let mut off = prefix;
        for (k, dst) in (t..last as usize).zip(out.iter_mut()) {
            if has_nulls && *bits.add(k >> 3) & (1 << (k & 7)) == 0 {
                *dst = (pg_sys::Datum::from(0usize), true);
                continue;
            }
            let a = attr(tupdesc, k);
            let (at, len) = match a.attlen {
                -1 => {
                    // a pad byte is zero; a varlena's first byte never is
                    let at = if off < old_len && *old_data.add(off) != 0 { off } else { align(off, a.attalign) };
                    if at >= old_len {
                        return false;
                    }
                    (at, pgrx::varlena::varsize_any(old_data.add(at) as *const pg_sys::varlena))
                }
                n if n > 0 && (!a.attbyval || matches!(n, 1 | 2 | 4 | 8)) => (align(off, a.attalign), n as usize),
                _ => return false, // a cstring, or a by-value width PostgreSQL has not got
            };
            if at + len > old_len {
                return false;
            }
            let p = old_data.add(at);
            *dst = (if a.attbyval { fetch_byval(p, a.attlen) } else { pg_sys::Datum::from(p) }, false);
            off = at + len;
        }
        true
    }
}

/// The null bits of attributes `0..t` (0-based) agree; a row without a
/// bitmap has none NULL.
unsafe fn same_nulls_before(a: pg_sys::HeapTupleHeader, b: pg_sys::HeapTupleHeader, t: usize) -> bool {
    unsafe {
        let has = |h: pg_sys::HeapTupleHeader| (*h).t_infomask as u32 & pg_sys::HEAP_HASNULL != 0;
        let byte = |h: pg_sys::HeapTupleHeader, i: usize| if has(h) { *(*h).t_bits.as_ptr().add(i) } else { 0xFF };
        if !has(a) && !has(b) {
            return true;
        }
        for i in 0..t / 8 {
            if byte(a, i) != byte(b, i) {
                return false;
            }
        }
        let rest = t % 8;
        rest == 0 || (byte(a, t / 8) ^ byte(b, t / 8)) & ((1u8 << rest) - 1) == 0
    }
}

/// fetch_att for a by-value attribute: the value widened as PostgreSQL's
/// Int32GetDatum / Int16GetDatum / CharGetDatum widen it (sign-extended), so
/// it compares equal to the same value deformed by the executor.
unsafe fn fetch_byval(p: *const u8, attlen: i16) -> pg_sys::Datum {
    unsafe {
        let v = match attlen {
            1 => *(p as *const std::ffi::c_char) as isize,
            2 => (p as *const i16).read_unaligned() as isize,
            4 => (p as *const i32).read_unaligned() as isize,
            _ => (p as *const i64).read_unaligned() as isize,
        };
        pg_sys::Datum::from(v as usize)
    }
}

/// Debug builds (every test run): the values found are the ones deforming
/// the old row gives, by stored bytes.
#[cfg(debug_assertions)]
pub(crate) unsafe fn check(
    found: ((pg_sys::Datum, bool), (pg_sys::Datum, bool)),
    old_slot: *mut pg_sys::TupleTableSlot,
    tupdesc: pg_sys::TupleDesc,
    old_att: i32,
    new_att: i32,
    last: i32,
) {
    unsafe {
        for (att, (value, null)) in [(old_att, found.0), (new_att, found.1)] {
            let (v, n) = super::slot_value(old_slot, att, last);
            if !super::raw_same(attr(tupdesc, (att - 1) as usize), null, value, n, v) {
                crate::errors::raise(
                    crate::errors::Code::ERRCODE_INTERNAL_ERROR,
                    format!("zdm: attribute {att} read from the old row's bytes differs from its deformed value (null {null} vs {n})"),
                    "This is a bug in zdm's trigger; please report it.",
                );
            }
        }
    }
}
