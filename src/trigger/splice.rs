//! Forming a changed row by splicing: a BEFORE ROW trigger can change a
//! column only by returning a new heap tuple, and `heap_form_tuple` walks
//! every attribute twice (size, then fill) to build it — on a wide row most
//! of the trigger's cost. The attributes before the changed one keep their
//! stored bytes, so the new tuple is the old data area up to where that
//! attribute begins, then the changed attribute and the ones after it laid
//! out by the same rules `heap_fill_tuple` follows (alignment, short varlena
//! headers, the null bitmap and the HASNULL / HASVARWIDTH / HASEXTERNAL
//! flags). For a row laid out as `heap_form_tuple` lays rows out, the result
//! is byte for byte what it would build; debug builds (every test run) check
//! every row (see `check` for the one valid difference: a 4-byte header kept
//! from a value stored while its column was PLAIN).
//!
//! Anything unusual — a slot that does not hold this tuple, a tuple with
//! fewer attributes than the descriptor, an expanded or unknown TOAST
//! pointer, a cstring column — returns None, and the caller forms the row
//! the ordinary way.

use super::locate::Tail;
use pgrx::pg_sys;
use pgrx::varlena::{set_varsize_4b, set_varsize_short, varatt_is_1b, varatt_is_1b_e, varatt_is_4b_u, varsize_1b, varsize_4b, vartag_external};

/// Largest varlena that fits a 1-byte header (VARATT_SHORT_MAX).
const SHORT_MAX: usize = 0x7F;

/// How one value is stored in a tuple's data area.
#[derive(Clone, Copy)]
enum Stored {
    /// aligned to the attribute's alignment, `len` bytes as they are
    Aligned(usize),
    /// a short or external varlena: no alignment, `len` bytes as they are
    Unaligned(usize),
    /// a 4-byte-header varlena rewritten with a 1-byte header, `len` bytes in all
    MadeShort(usize),
}

pub(crate) use crate::compat::attr;

pub(crate) fn align(off: usize, attalign: std::ffi::c_char) -> usize {
    let a = match attalign as u8 {
        b'd' => 8,
        b'i' => 4,
        b's' => 2,
        _ => 1,
    };
    (off + a - 1) & !(a - 1)
}

/// The stored size of an external TOAST pointer; None for an expanded
/// object (it would have to be flattened) or a tag this does not know.
unsafe fn external_size(p: *const pg_sys::varlena) -> Option<usize> {
    unsafe {
        let body = match vartag_external(p) as pg_sys::vartag_external::Type {
            pg_sys::vartag_external::VARTAG_ONDISK => std::mem::size_of::<pg_sys::varatt_external>(),
            pg_sys::vartag_external::VARTAG_INDIRECT => std::mem::size_of::<pg_sys::varatt_indirect>(),
            _ => return None,
        };
        Some(pg_sys::VARHDRSZ_EXTERNAL + body)
    }
}

/// How `value` of attribute `att` goes into a new tuple (the rules of
/// heap_compute_data_size and heap_fill_tuple).
unsafe fn stored(att: &pg_sys::FormData_pg_attribute, value: pg_sys::Datum) -> Option<Stored> {
    unsafe {
        if att.attbyval {
            return matches!(att.attlen, 1 | 2 | 4 | 8).then_some(Stored::Aligned(att.attlen as usize));
        }
        match att.attlen {
            -1 => {
                let p = value.cast_mut_ptr::<pg_sys::varlena>() as *const pg_sys::varlena;
                if varatt_is_1b_e(p) {
                    external_size(p).map(Stored::Unaligned)
                } else if varatt_is_1b(p) {
                    Some(Stored::Unaligned(varsize_1b(p)))
                } else if att.attstorage as u8 != b'p'
                    && varatt_is_4b_u(p)
                    && varsize_4b(p) - pg_sys::VARHDRSZ + 1 <= SHORT_MAX
                {
                    Some(Stored::MadeShort(varsize_4b(p) - pg_sys::VARHDRSZ + 1))
                } else {
                    Some(Stored::Aligned(varsize_4b(p)))
                }
            }
            n if n > 0 => Some(Stored::Aligned(n as usize)),
            _ => None, // cstring: not a table column type
        }
    }
}

/// Where the value of attribute `t` (0-based) is laid out from: the end of
/// the last non-NULL attribute before it. A by-reference value points into
/// the row, which gives its offset; by-value attributes after the last such
/// one are fixed-width, so their offsets follow from the alignment rules.
pub(crate) unsafe fn prefix_end(
    tupdesc: pg_sys::TupleDesc,
    values: *const pg_sys::Datum,
    nulls: *const bool,
    t: usize,
    data: *const u8,
    data_len: usize,
) -> Option<usize> {
    unsafe {
        let (mut off, mut from) = (0, 0);
        for k in (0..t).rev() {
            if *nulls.add(k) || attr(tupdesc, k).attbyval {
                continue;
            }
            let p = (*values.add(k)).cast_mut_ptr::<u8>() as *const u8;
            let start = (p as usize).checked_sub(data as usize)?;
            let len = match attr(tupdesc, k).attlen {
                -1 => pgrx::varlena::varsize_any(p as *const pg_sys::varlena),
                n if n > 0 => n as usize,
                _ => return None,
            };
            if start + len > data_len {
                return None; // not a value of this row
            }
            (off, from) = (start + len, k + 1);
            break;
        }
        for j in from..t {
            if !*nulls.add(j) {
                let a = attr(tupdesc, j);
                off = align(off, a.attalign) + a.attlen as usize;
            }
        }
        Some(off)
    }
}

/// Write `value` of attribute `a` at `off` in `data`; the offset after it.
unsafe fn fill(a: &pg_sys::FormData_pg_attribute, how: Stored, value: pg_sys::Datum, data: *mut u8, off: usize) -> usize {
    unsafe {
        match how {
            Stored::Aligned(len) => {
                let at = data.add(align(off, a.attalign));
                if a.attbyval {
                    let v = value.value();
                    match len {
                        1 => *at = v as u8,
                        2 => (at as *mut u16).write_unaligned(v as u16),
                        4 => (at as *mut u32).write_unaligned(v as u32),
                        _ => (at as *mut u64).write_unaligned(v as u64),
                    }
                } else {
                    std::ptr::copy_nonoverlapping(value.cast_mut_ptr::<u8>() as *const u8, at, len);
                }
                align(off, a.attalign) + len
            }
            Stored::Unaligned(len) => {
                std::ptr::copy_nonoverlapping(value.cast_mut_ptr::<u8>() as *const u8, data.add(off), len);
                off + len
            }
            Stored::MadeShort(len) => {
                set_varsize_short(data.add(off) as *mut pg_sys::varlena, len as i32);
                let src = (value.cast_mut_ptr::<u8>() as *const u8).add(pg_sys::VARHDRSZ);
                std::ptr::copy_nonoverlapping(src, data.add(off + 1), len - 1);
                off + len
            }
        }
    }
}

/// `row` with attribute `att` set to `value`, spliced from the row's own
/// bytes; `slot` holds `row`, deformed up to the descriptor's last attribute.
/// None when the row is not in a shape this handles.
pub(crate) unsafe fn spliced(
    row: pg_sys::HeapTuple,
    slot: *mut pg_sys::TupleTableSlot,
    tupdesc: pg_sys::TupleDesc,
    att: i32,
    value: pg_sys::Datum,
    is_null: bool,
) -> Option<pg_sys::HeapTuple> {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let ops = (*slot).tts_ops;
        let heap_slot = std::ptr::eq(ops, &raw const pg_sys::TTSOpsBufferHeapTuple) || std::ptr::eq(ops, &raw const pg_sys::TTSOpsHeapTuple);
        if !heap_slot || (*(slot as *mut pg_sys::HeapTupleTableSlot)).tuple != row || i32::from((*slot).tts_nvalid) < natts as i32 {
            return None;
        }
        let old = (*row).t_data;
        if ((*old).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as usize != natts || att < 1 || att as usize > natts {
            return None;
        }
        let old_len = ((*row).t_len as usize).checked_sub((*old).t_hoff as usize)?;
        let old_data = (old as *const u8).add((*old).t_hoff as usize);
        let (values, nulls) = ((*slot).tts_values as *const pg_sys::Datum, (*slot).tts_isnull as *const bool);
        let t = (att - 1) as usize;
        let prefix = prefix_end(tupdesc, values, nulls, t, old_data, old_len)?;

        // The flags the unchanged attributes before `t` contribute; an
        // external value among them only if the row had one at all.
        // Scanned only as far as it takes to know both.
        let mut before = Before { infomask: 0, has_null: false };
        let row_external = (*old).t_infomask as u32 & pg_sys::HEAP_HASEXTERNAL != 0;
        for j in 0..t {
            if *nulls.add(j) || attr(tupdesc, j).attlen != -1 {
                continue;
            }
            before.infomask |= pg_sys::HEAP_HASVARWIDTH;
            if row_external && varatt_is_1b_e((*values.add(j)).cast_mut_ptr::<pg_sys::varlena>()) {
                before.infomask |= pg_sys::HEAP_HASEXTERNAL;
            }
            if !row_external || before.infomask & pg_sys::HEAP_HASEXTERNAL != 0 {
                break;
            }
        }
        before.has_null = (*old).t_infomask as u32 & pg_sys::HEAP_HASNULL != 0 && (0..t).any(|j| *nulls.add(j));
        built(row, tupdesc, t, prefix, before, |j| (*values.add(j), *nulls.add(j)), value, is_null)
    }
}

/// `row` with attribute `att` set to `value`, spliced from the row's bytes
/// and `tail`: the row's trailing attributes as `locate::read_tail` found
/// them (no deformed slot needed). None when `att` is not among them.
pub(crate) unsafe fn spliced_from_tail(
    row: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    tail: &Tail,
    att: i32,
    value: pg_sys::Datum,
    is_null: bool,
) -> Option<pg_sys::HeapTuple> {
    unsafe {
        let t = (att - 1) as usize;
        if att < 1 || t < tail.first || t >= tail.first + tail.count {
            return None;
        }
        let mut before = Before { infomask: tail.infomask_before, has_null: tail.null_before };
        for j in tail.first..t {
            let (v, null) = tail.value(j);
            if null {
                before.has_null = true;
            } else if attr(tupdesc, j).attlen == -1 {
                before.infomask |= pg_sys::HEAP_HASVARWIDTH;
                if varatt_is_1b_e(v.cast_mut_ptr::<pg_sys::varlena>()) {
                    before.infomask |= pg_sys::HEAP_HASEXTERNAL;
                }
            }
        }
        built(row, tupdesc, t, tail.from[t - tail.first], before, |j| tail.value(j), value, is_null)
    }
}

/// What the attributes before the changed one contribute to the new
/// tuple's header.
struct Before {
    /// HEAP_HASVARWIDTH / HEAP_HASEXTERNAL
    infomask: u32,
    /// one of them is NULL
    has_null: bool,
}

unsafe extern "C" {
    /// PostgreSQL's own, declared here to be called without pgrx's error
    /// guard (a sigsetjmp per call, on every changed row).
    #[link_name = "palloc_extended"]
    fn palloc_extended_unguarded(size: usize, flags: std::ffi::c_int) -> *mut std::ffi::c_void;
}

/// `size` bytes in the current memory context, or None when there is no
/// memory (the caller then forms the row the guarded way, which raises the
/// error). With MCXT_ALLOC_NO_OOM, and a size far below MaxAllocSize (a heap
/// tuple's), palloc_extended cannot raise an ERROR, so nothing can longjmp
/// over this call: it needs no guard.
#[inline(always)]
unsafe fn allocated(size: usize) -> Option<*mut std::ffi::c_void> {
    const MAX_ALLOC_SIZE: usize = 0x3fff_ffff; // MaxAllocSize, memutils.h
    if size > MAX_ALLOC_SIZE {
        return None;
    }
    let p = unsafe { palloc_extended_unguarded(size, pg_sys::MCXT_ALLOC_NO_OOM as std::ffi::c_int) };
    (!p.is_null()).then_some(p)
}

/// The new tuple: `row`'s data area up to `prefix` (where attribute `t`,
/// 0-based, is laid out from), then `value` for `t` and `value_at(j)` for
/// every attribute after it. A NULL before `t` is read from `row`'s bitmap.
#[allow(clippy::too_many_arguments)]
unsafe fn built(
    row: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    t: usize,
    prefix: usize,
    before: Before,
    value_at: impl Fn(usize) -> (pg_sys::Datum, bool),
    value: pg_sys::Datum,
    is_null: bool,
) -> Option<pg_sys::HeapTuple> {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let old = (*row).t_data;
        let old_len = ((*row).t_len as usize).checked_sub((*old).t_hoff as usize)?;
        if prefix > old_len {
            return None; // not this row's layout
        }
        let old_data = (old as *const u8).add((*old).t_hoff as usize);
        let value_of = |j: usize| if j == t { (value, is_null) } else { value_at(j) };
        let mut infomask = before.infomask;
        let mut has_null = before.has_null;
        let mut off = prefix;
        for j in t..natts {
            let (v, null) = value_of(j);
            if null {
                has_null = true;
                continue;
            }
            let a = attr(tupdesc, j);
            off = match stored(a, v)? {
                Stored::Aligned(len) => align(off, a.attalign) + len,
                Stored::Unaligned(len) | Stored::MadeShort(len) => off + len,
            };
            if a.attlen == -1 {
                infomask |= pg_sys::HEAP_HASVARWIDTH;
                if varatt_is_1b_e(v.cast_mut_ptr::<pg_sys::varlena>()) {
                    infomask |= pg_sys::HEAP_HASEXTERNAL;
                }
            }
        }
        let data_len = off;
        if has_null {
            infomask |= pg_sys::HEAP_HASNULL;
        }

        // The header as heap_form_tuple writes it; the row's identity
        // (ctid, self, table) carried over as heap_modify_tuple does.
        let bits_at = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_bits);
        let hoff = pg_sys::MAXALIGN(bits_at + if has_null { natts.div_ceil(8) } else { 0 });
        let len = hoff + data_len;
        let tuple_size = pg_sys::MAXALIGN(std::mem::size_of::<pg_sys::HeapTupleData>());
        // Zeroed where heap_form_tuple's palloc0 matters: the header with
        // its bitmap, and the spliced part's alignment padding (the prefix
        // is copied over whole).
        let tuple = allocated(tuple_size + len)? as pg_sys::HeapTuple;
        let header = (tuple as *mut u8).add(tuple_size) as pg_sys::HeapTupleHeader;
        std::ptr::write_bytes(header as *mut u8, 0, hoff);
        std::ptr::write_bytes((header as *mut u8).add(hoff + prefix), 0, data_len - prefix);
        (*tuple).t_len = len as u32;
        (*tuple).t_self = (*row).t_self;
        (*tuple).t_tableOid = (*row).t_tableOid;
        (*tuple).t_data = header;
        set_varsize_4b(header as *mut pg_sys::varlena, len as i32);
        (*header).t_choice.t_datum.datum_typeid = (*tupdesc).tdtypeid;
        (*header).t_choice.t_datum.datum_typmod = (*tupdesc).tdtypmod;
        (*header).t_ctid = (*old).t_ctid;
        (*header).t_infomask2 = natts as u16;
        (*header).t_infomask = infomask as u16;
        (*header).t_hoff = hoff as u8;
        if has_null {
            // The bits of the attributes before `t` are the row's own (all
            // set when it has no bitmap: it has every attribute, checked by
            // the callers); the rest follow the new values.
            let bits = (header as *mut u8).add(bits_at);
            let old_bits = ((*old).t_infomask as u32 & pg_sys::HEAP_HASNULL != 0).then(|| (*old).t_bits.as_ptr());
            let byte_before = |i: usize| old_bits.map_or(0xFF, |b| *b.add(i));
            for i in 0..t / 8 {
                *bits.add(i) = byte_before(i);
            }
            if t % 8 != 0 {
                *bits.add(t / 8) = byte_before(t / 8) & ((1u16 << (t % 8)) - 1) as u8;
            }
            for j in (t..natts).filter(|&j| !value_of(j).1) {
                *bits.add(j >> 3) |= 1 << (j & 7);
            }
        }
        let data = (header as *mut u8).add(hoff);
        std::ptr::copy_nonoverlapping(old_data, data, prefix);
        let mut off = prefix;
        for j in t..natts {
            let (v, null) = value_of(j);
            if !null {
                let a = attr(tupdesc, j);
                off = fill(a, stored(a, v)?, v, data, off);
            }
        }
        debug_assert_eq!(off, data_len);
        Some(tuple)
    }
}

/// A tuple's header and data as bytes, for comparing a spliced tuple with a
/// formed one — less what heap_form_tuple may stamp for the tuple's use as
/// a composite Datum (some server builds record the descriptor's version in
/// the typmod field and two transaction-status bits, checked only while those
/// are intact); heap_insert and heap_update overwrite both anyway.
#[cfg(any(debug_assertions, feature = "pg_test"))]
pub(crate) unsafe fn comparable(t: pg_sys::HeapTuple) -> Vec<u8> {
    unsafe {
        let mut bytes = std::slice::from_raw_parts((*t).t_data as *const u8, (*t).t_len as usize).to_vec();
        let typmod = std::mem::offset_of!(pg_sys::DatumTupleFields, datum_typmod);
        bytes[typmod..typmod + 4].fill(0);
        let at = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_infomask);
        let infomask = u16::from_ne_bytes([bytes[at], bytes[at + 1]]) & !((pg_sys::HEAP_XMAX_COMMITTED | pg_sys::HEAP_XMAX_INVALID) as u16);
        bytes[at..at + 2].copy_from_slice(&infomask.to_ne_bytes());
        bytes
    }
}

/// The tuple heap_form_tuple builds from `row`'s values with attribute
/// `att` replaced, the row's ctid carried over: what `spliced` must equal.
#[cfg(any(debug_assertions, feature = "pg_test"))]
pub(crate) unsafe fn formed(row: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, att: i32, value: pg_sys::Datum, is_null: bool) -> pg_sys::HeapTuple {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let (mut values, mut nulls) = (vec![pg_sys::Datum::from(0usize); natts], vec![false; natts]);
        pg_sys::heap_deform_tuple(row, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        values[(att - 1) as usize] = value;
        nulls[(att - 1) as usize] = is_null;
        let formed = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        (*(*formed).t_data).t_ctid = (*(*row).t_data).t_ctid;
        formed
    }
}

/// Debug builds (every test run): the spliced tuple is the one
/// heap_form_tuple builds from the same values — byte for byte, unless the
/// row itself is not laid out as heap_form_tuple would lay it out today (a
/// value stored with a 4-byte header while its column was PLAIN, read back
/// after SET STORAGE EXTENDED: the copied prefix keeps that valid header);
/// then attribute by attribute, by binary image.
#[cfg(debug_assertions)]
pub(crate) unsafe fn check(
    spliced: pg_sys::HeapTuple,
    row: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    att: i32,
    value: pg_sys::Datum,
    is_null: bool,
) {
    unsafe {
        let formed = formed(row, tupdesc, att, value, is_null);
        let (a, b) = (comparable(spliced), comparable(formed));
        if a != b && !same_values(spliced, formed, tupdesc) {
            let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            let window = |v: &[u8]| v[at.saturating_sub(8)..(at + 56).min(v.len())].to_vec();
            crate::errors::raise(
                crate::errors::Code::ERRCODE_INTERNAL_ERROR,
                format!(
                    "zdm: spliced row differs from heap_form_tuple (attribute {att}, lengths {} and {}, first difference at byte {at}: {:?} vs {:?})",
                    a.len(),
                    b.len(),
                    window(&a),
                    window(&b)
                ),
                "This is a bug in zdm's trigger; please report it.",
            );
        }
        pg_sys::heap_freetuple(formed);
    }
}

/// Every attribute of `a` and `b` has the same binary image (NULLs alike).
#[cfg(debug_assertions)]
unsafe fn same_values(a: pg_sys::HeapTuple, b: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> bool {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let deform = |t: pg_sys::HeapTuple| {
            let (mut v, mut n) = (vec![pg_sys::Datum::from(0usize); natts], vec![false; natts]);
            pg_sys::heap_deform_tuple(t, tupdesc, v.as_mut_ptr(), n.as_mut_ptr());
            (v, n)
        };
        let ((av, an), (bv, bn)) = (deform(a), deform(b));
        (0..natts).all(|j| {
            let att = attr(tupdesc, j);
            super::same(att, an[j], av[j], bn[j], bv[j])
        })
    }
}
