//! Small helpers over pgrx's SPI: quoting, one-value queries, statements.
//! Every identifier that reaches SQL text goes through `ident`.

use crate::errors::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};

thread_local! {
    static ZDM_SQL: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Run `f` marked as zdm's own SQL: `zdm.safe_ddl` lets the DDL zdm runs
/// through (its steps take their locks under zdm's own policy first).
fn own<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ZDM_SQL.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    ZDM_SQL.with(|d| d.set(d.get() + 1));
    let _reset = Reset;
    f()
}

/// Whether the statement running now was issued by zdm through these helpers.
pub fn in_zdm_sql() -> bool {
    ZDM_SQL.with(|d| d.get() > 0)
}

/// Quote an identifier exactly like `quote_ident()`.
pub fn ident(name: &str) -> String {
    pgrx::spi::quote_identifier(name)
}

/// Quote a string literal exactly like `quote_literal()`.
pub fn literal(value: &str) -> String {
    pgrx::spi::quote_literal(value)
}

/// Cut a generated name to the 63 bytes PostgreSQL keeps of an identifier
/// (NAMEDATALEN - 1), on a character boundary.
pub fn truncate_identifier(name: String) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// `base` cut so that `base + suffix` fits in 63 bytes, then `suffix`: a
/// generated name never collides with the one it was derived from.
pub fn with_suffix(base: &str, suffix: &str) -> String {
    let mut end = base.len().min(63usize.saturating_sub(suffix.len()));
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    truncate_identifier(format!("{}{suffix}", &base[..end]))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Run a statement; Postgres errors propagate as errors.
pub fn exec(sql: &str) {
    pgrx::debug1!("zdm: {sql}");
    own(|| Spi::run(sql)).or_raise(sql);
}

pub fn exec_args(sql: &str, args: &[DatumWithOid]) {
    own(|| Spi::run_with_args(sql, args)).or_raise(sql);
}

/// Run a statement and return how many rows it processed.
pub fn exec_count(sql: &str) -> i64 {
    own(|| Spi::connect_mut(|c| c.update(sql, None, &[]).map(|t| t.len() as i64))).or_raise(sql)
}

/// First column of the first row (None for no row or NULL).
pub fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    own(|| {
        Spi::connect_mut(|c| {
            let t = c.update(sql, Some(1), args)?;
            if t.is_empty() { Ok(None) } else { t.first().get_one::<T>() }
        })
    })
    .or_raise(sql)
}

/// The first row of a query mapped by `f` (None when there is no row).
pub fn first_row<T>(
    sql: &str,
    args: &[DatumWithOid],
    f: impl FnOnce(&pgrx::spi::SpiTupleTable) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    own(|| {
        Spi::connect_mut(|c| {
            let t = c.update(sql, Some(1), args)?;
            if t.is_empty() { Ok(None) } else { f(&t.first()).map(Some) }
        })
    })
    .or_raise(sql)
}

/// Every row of a query, each mapped by `f`.
pub fn rows<T>(
    sql: &str,
    args: &[DatumWithOid],
    mut f: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    own(|| Spi::connect_mut(|c| c.update(sql, None, args)?.map(|r| f(&r)).collect::<Result<Vec<T>, _>>())).or_raise(sql)
}

/// Read-only queries for code that runs inside someone else's statement
/// (the `zdm.safe_ddl` hook, `zdm.plan`): unlike the helpers above (pgrx's
/// `update`), they never assign a transaction id, which would make, e.g.,
/// `DROP INDEX CONCURRENTLY` refuse to run ("must be first action"); and
/// they run with zdm's pinned search_path, whatever the session's is (the
/// statement's own names are resolved by the caller, with the session's).
pub fn read_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    crate::security::pinned_search_path(|| Spi::connect(|c| {
        let t = c.select(sql, Some(1), args)?;
        if t.is_empty() { Ok(None) } else { t.first().get_one::<T>() }
    }))
    .or_raise(sql)
}

pub fn read_first_row<T>(
    sql: &str,
    args: &[DatumWithOid],
    f: impl FnOnce(&pgrx::spi::SpiTupleTable) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    crate::security::pinned_search_path(|| Spi::connect(|c| {
        let t = c.select(sql, Some(1), args)?;
        if t.is_empty() { Ok(None) } else { f(&t.first()).map(Some) }
    }))
    .or_raise(sql)
}

pub fn read_rows<T>(
    sql: &str,
    args: &[DatumWithOid],
    mut f: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    crate::security::pinned_search_path(|| Spi::connect(|c| c.select(sql, None, args)?.map(|r| f(&r)).collect::<Result<Vec<T>, _>>()))
        .or_raise(sql)
}
