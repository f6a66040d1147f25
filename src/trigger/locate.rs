//! Reading a row's trailing attributes from its bytes, without deforming
//! it. The migration columns are usually the table's last two (a new column
//! is added last), so a trigger that deforms the row to reach them reads
//! every attribute before them — on a wide row most of its work.
//!
//! * `read_tail`: the new row, walked once from its start; what it finds
//!   (where each trailing attribute is laid out from, its value, what the
//!   attributes before contribute to the header) is all `splice` needs.
//! * `trailing_values`: an UPDATE's old row. The old and the new row usually
//!   differ only in the columns the statement set. When their null bitmaps
//!   agree on the attributes before the first trailing one, and their data
//!   areas agree byte for byte up to where that attribute is laid out from
//!   in the new row, then every attribute before it decodes to the same
//!   offsets in both (decoding reads nothing but those bytes and bits), so
//!   only the old row's trailing attributes are walked. Otherwise (a column
//!   before them was set too) the caller deforms the old row.

use super::splice::{align, attr, prefix_end};
use pgrx::pg_sys;

/// Most trailing attributes `read_tail` reads (the tail holds both
/// migration columns and every attribute after the first of them).
pub(crate) const MAX_TAIL: usize = 8;

/// A row's attributes from `first` (0-based) to the last, read from its
/// bytes.
pub(crate) struct Tail {
    pub first: usize,
    pub count: usize,
    /// where attribute `first + i` is laid out from: the end of the last
    /// non-NULL attribute before it
    pub from: [usize; MAX_TAIL],
    values: [(pg_sys::Datum, bool); MAX_TAIL],
    /// HEAP_HASVARWIDTH / HEAP_HASEXTERNAL as the attributes before `first` set them
    pub infomask_before: u32,
    /// an attribute before `first` is NULL
    pub null_before: bool,
}

impl Tail {
    /// Value and null flag of attribute `j` (0-based, within the tail).
    #[inline]
    pub fn value(&self, j: usize) -> (pg_sys::Datum, bool) {
        self.values[j - self.first]
    }
}

/// How the attributes before a tail are laid out, worked out once per
/// statement from the descriptor (attribute widths and alignments do not
/// change while a statement holds its table lock): the walk over a row
/// with no NULL before its tail then starts after the leading fixed-width
/// attributes (their offsets follow from the descriptor alone) and reads
/// the others from a compact array instead of the descriptor's wide
/// `pg_attribute` entries.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    /// the first tail attribute, 1-based (as `read_tail`'s `first`)
    first: i32,
    /// leading attributes that are fixed-width, and where they end when
    /// none of them is NULL
    fixed: usize,
    fixed_end: usize,
    /// attributes `fixed..first-1` (0-based), in memory that lives as long
    /// as the layout's user (the statement's, for the trigger)
    steps: *const Step,
    /// every attribute before the tail has a width the walk can decode (no
    /// cstring, no unknown by-value width)
    decodable: bool,
    /// a varlena among the attributes before the tail
    varlena_before: bool,
}

/// One attribute of a `Layout`: its width (-1 for a varlena) and the mask
/// of its alignment.
#[derive(Clone, Copy)]
#[repr(C)]
struct Step {
    attlen: i16,
    align_mask: u16,
}

impl Layout {
    /// The layout of the attributes before `first` (1-based) in `tupdesc`,
    /// its array allocated in `context`.
    pub(crate) unsafe fn new(tupdesc: pg_sys::TupleDesc, first: i32, context: pg_sys::MemoryContext) -> Layout {
        unsafe {
            let before = (first.max(1) as usize - 1).min((*tupdesc).natts as usize);
            let mut layout = Layout { first, fixed: 0, fixed_end: 0, steps: std::ptr::null(), decodable: true, varlena_before: false };
            let mut off = 0;
            while layout.fixed < before && attr(tupdesc, layout.fixed).attlen > 0 {
                let a = attr(tupdesc, layout.fixed);
                layout.decodable &= known_width(a);
                off = align(off, a.attalign) + a.attlen as usize;
                layout.fixed += 1;
            }
            layout.fixed_end = off;
            let count = before - layout.fixed;
            let steps = pg_sys::MemoryContextAlloc(context, count.max(1) * std::mem::size_of::<Step>()) as *mut Step;
            for (i, k) in (layout.fixed..before).enumerate() {
                let a = attr(tupdesc, k);
                layout.decodable &= a.attlen == -1 || known_width(a);
                layout.varlena_before |= a.attlen == -1;
                steps.add(i).write(Step { attlen: a.attlen, align_mask: (align(1, a.attalign) - 1) as u16 });
            }
            layout.steps = steps;
            layout
        }
    }

    fn steps(&self) -> &[Step] {
        let count = (self.first.max(1) as usize - 1).saturating_sub(self.fixed);
        if count == 0 { &[] } else { unsafe { std::slice::from_raw_parts(self.steps, count) } }
    }
}

impl Tail {
    pub(crate) const EMPTY: Tail = Tail {
        first: 0,
        count: 0,
        from: [0; MAX_TAIL],
        values: [(pg_sys::Datum::null(), false); MAX_TAIL],
        infomask_before: 0,
        null_before: false,
    };
}

/// The attributes of `row` from `first` (1-based) to the last, walked from
/// the row's start (`read_tail_with`, the layout made for this call).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) unsafe fn read_tail(row: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, first: i32) -> Option<Tail> {
    unsafe {
        let layout = Layout::new(tupdesc, first, pg_sys::CurrentMemoryContext);
        let mut tail = Tail::EMPTY;
        read_tail_with(row, tupdesc, &layout, &mut tail).then_some(tail)
    }
}

/// The attributes of `row` from `layout.first` (1-based) to the last, read
/// into `tail`. A row with no NULL before them is walked by `layout` (the
/// leading fixed-width attributes skipped); any other by the descriptor,
/// using its cached offsets while only fixed-width, non-NULL attributes
/// precede, as deforming does. False for a row with fewer attributes than
/// the descriptor, a tail longer than MAX_TAIL, or bytes that do not decode
/// within the row.
#[inline]
pub(crate) unsafe fn read_tail_with(row: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, layout: &Layout, tail: &mut Tail) -> bool {
    unsafe { fill_tail(row, tupdesc, layout, tail).is_some() }
}

#[inline(always)]
unsafe fn fill_tail(row: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, layout: &Layout, tail: &mut Tail) -> Option<()> {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let header = (*row).t_data;
        let first = layout.first;
        if first < 1 || first as usize > natts || natts - (first as usize - 1) > MAX_TAIL {
            return None;
        }
        if ((*header).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as usize != natts {
            return None; // a row stored before an ADD COLUMN: missing values
        }
        let len = ((*row).t_len as usize).checked_sub((*header).t_hoff as usize)?;
        let data = (header as *const u8).add((*header).t_hoff as usize);
        let infomask = (*header).t_infomask as u32;
        let has_nulls = infomask & pg_sys::HEAP_HASNULL != 0;
        let bits = (*header).t_bits.as_ptr();
        let is_null = |k: usize| has_nulls && *bits.add(k >> 3) & (1 << (k & 7)) == 0;
        let first = first as usize - 1;
        tail.first = first;
        tail.count = natts - first;
        tail.infomask_before = 0;
        tail.null_before = has_nulls && !all_set(bits, first);
        // The attributes before the tail: only where each ends, and the
        // header flags they set.
        let mut off = if !tail.null_before && layout.decodable {
            let mut off = layout.fixed_end;
            let check_external = infomask & pg_sys::HEAP_HASEXTERNAL != 0;
            for s in layout.steps() {
                let mask = s.align_mask as usize;
                if s.attlen == -1 {
                    // a pad byte is zero; a varlena's first byte never is
                    let at = if off < len && *data.add(off) != 0 { off } else { (off + mask) & !mask };
                    let size = varlena_size(data, len, at)?;
                    if check_external && pgrx::varlena::varatt_is_1b_e(data.add(at) as *const pg_sys::varlena) {
                        tail.infomask_before |= pg_sys::HEAP_HASEXTERNAL;
                    }
                    off = at + size;
                } else {
                    off = ((off + mask) & !mask) + s.attlen as usize;
                }
            }
            if layout.varlena_before {
                tail.infomask_before |= pg_sys::HEAP_HASVARWIDTH;
            }
            off
        } else {
            let (mut off, mut slow) = (0usize, false);
            for k in 0..first {
                if is_null(k) {
                    slow = true;
                    continue;
                }
                let a = attr(tupdesc, k);
                let cached = crate::compat::cached_offset(tupdesc, k);
                let (at, size) = if !slow && cached >= 0 {
                    let at = cached as usize;
                    (at, if a.attlen == -1 { varlena_size(data, len, at)? } else { a.attlen as usize })
                } else {
                    decode(a, data, len, off)?
                };
                if a.attlen == -1 {
                    slow = true;
                    tail.infomask_before |= pg_sys::HEAP_HASVARWIDTH;
                    if pgrx::varlena::varatt_is_1b_e(data.add(at) as *const pg_sys::varlena) {
                        tail.infomask_before |= pg_sys::HEAP_HASEXTERNAL;
                    }
                }
                off = at + size;
            }
            off
        };
        if off > len {
            return None;
        }
        for k in first..natts {
            tail.from[k - first] = off;
            if is_null(k) {
                tail.values[k - first] = (pg_sys::Datum::from(0usize), true);
                continue;
            }
            let a = attr(tupdesc, k);
            let (at, size) = decode(a, data, len, off)?;
            if at + size > len {
                return None;
            }
            let p = data.add(at);
            tail.values[k - first] = (if a.attbyval { fetch_byval(p, a.attlen) } else { pg_sys::Datum::from(p) }, false);
            off = at + size;
        }
        Some(())
    }
}

/// Null-bitmap bits `0..n` are all set (none of those attributes is NULL).
#[inline(always)]
unsafe fn all_set(bits: *const u8, n: usize) -> bool {
    unsafe {
        for i in 0..n / 8 {
            if *bits.add(i) != 0xFF {
                return false;
            }
        }
        let rest = n % 8;
        let mask = ((1u16 << rest) - 1) as u8;
        rest == 0 || *bits.add(n / 8) & mask == mask
    }
}

/// Where attribute `a`, laid out from `off`, starts in `data`, and its size.
#[inline(always)]
unsafe fn decode(a: &pg_sys::FormData_pg_attribute, data: *const u8, len: usize, off: usize) -> Option<(usize, usize)> {
    unsafe {
        match a.attlen {
            -1 => {
                // a pad byte is zero; a varlena's first byte never is
                let at = if off < len && *data.add(off) != 0 { off } else { align(off, a.attalign) };
                Some((at, varlena_size(data, len, at)?))
            }
            n if known_width(a) => Some((align(off, a.attalign), n as usize)),
            _ => None, // a cstring, or a by-value width PostgreSQL has not got
        }
    }
}

/// A fixed-width attribute whose bytes the walk can step over: by
/// reference, or by value in one of the widths PostgreSQL stores.
#[inline(always)]
fn known_width(a: &pg_sys::FormData_pg_attribute) -> bool {
    a.attlen > 0 && (!a.attbyval || matches!(a.attlen, 1 | 2 | 4 | 8))
}

/// The stored size of the varlena at `at` (VARSIZE_ANY), if its header lies
/// in the row. Spelled out for the little-endian header layout (the hot
/// path of every changed row); pgrx's functions otherwise. The same decoding
/// as `compare::stored_size`, with the row's bounds checked as it goes:
/// checking them first and calling that instead costs ~10% more
/// instructions in the trigger on a wide row (callgrind).
#[inline(always)]
unsafe fn varlena_size(data: *const u8, len: usize, at: usize) -> Option<usize> {
    unsafe {
        if at >= len {
            return None;
        }
        let p = data.add(at);
        #[cfg(target_endian = "little")]
        {
            let b = *p;
            if b & 0x01 == 0 {
                // 4-byte header: the size in its upper 30 bits
                return (at + 4 <= len).then(|| ((p as *const u32).read_unaligned() >> 2) as usize);
            }
            if b != 0x01 {
                return Some((b >> 1) as usize); // 1-byte header
            }
        }
        // a TOAST pointer (the tag follows the header byte), or big-endian
        let need = if !pgrx::varlena::varatt_is_1b(p as *const pg_sys::varlena) {
            4
        } else if pgrx::varlena::varatt_is_1b_e(p as *const pg_sys::varlena) {
            2
        } else {
            1
        };
        (at + need <= len).then(|| pgrx::varlena::varsize_any(p as *const pg_sys::varlena))
    }
}

/// Values of attributes `first..=last` (1-based) of `old`, given that they
/// are laid out from `prefix` in `new` (`Tail::from`, or `prefix_end` over a
/// deformed slot). Written to `out[0..=last-first]`. False when the rows do
/// not share their leading bytes (or are in a shape this does not handle).
pub(crate) unsafe fn trailing_values(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    first: i32,
    last: i32,
    prefix: usize,
    out: &mut [(pg_sys::Datum, bool)],
) -> bool {
    unsafe {
        let natts = (*tupdesc).natts;
        if first < 1 || first > last || last > natts || (last - first + 1) as usize > out.len() {
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
            let Some((at, len)) = decode(a, old_data, old_len, off) else {
                return false;
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

/// `trailing_values` with the prefix found from `new_slot`, which holds
/// `new` deformed up to `last` at least.
pub(crate) unsafe fn trailing_values_by_slot(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    new_slot: *mut pg_sys::TupleTableSlot,
    tupdesc: pg_sys::TupleDesc,
    first: i32,
    last: i32,
    out: &mut [(pg_sys::Datum, bool)],
) -> bool {
    unsafe {
        let ops = (*new_slot).tts_ops;
        let heap_slot = std::ptr::eq(ops, &raw const pg_sys::TTSOpsBufferHeapTuple) || std::ptr::eq(ops, &raw const pg_sys::TTSOpsHeapTuple);
        if first < 1 || !heap_slot || (*(new_slot as *mut pg_sys::HeapTupleTableSlot)).tuple != new || i32::from((*new_slot).tts_nvalid) < last {
            return false;
        }
        let nh = (*new).t_data;
        let Some(new_len) = ((*new).t_len as usize).checked_sub((*nh).t_hoff as usize) else {
            return false;
        };
        let new_data = (nh as *const u8).add((*nh).t_hoff as usize);
        let values = (*new_slot).tts_values as *const pg_sys::Datum;
        let nulls = (*new_slot).tts_isnull as *const bool;
        match prefix_end(tupdesc, values, nulls, (first - 1) as usize, new_data, new_len) {
            Some(prefix) => trailing_values(old, new, tupdesc, first, last, prefix, out),
            None => false,
        }
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
/// the old row gives.
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
            // `same`, not `raw_same`: a row routed through a partitioned
            // parent arrives in the parent's (virtual) slot, whose values
            // may be stored otherwise (a 4-byte varlena header where the
            // row's bytes have a short one).
            if !super::same(attr(tupdesc, (att - 1) as usize), null, value, n, v) {
                crate::errors::raise(
                    crate::errors::Code::ERRCODE_INTERNAL_ERROR,
                    format!("zdm: attribute {att} read from the old row's bytes differs from its deformed value (null {null} vs {n})"),
                    "This is a bug in zdm's trigger; please report it.",
                );
            }
        }
    }
}
