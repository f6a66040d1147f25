//! Small helpers over pgrx's SPI: quoting, one-value queries, statements.
//! Every identifier that reaches SQL text goes through `ident`.

use crate::errors::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};

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
    Spi::run(sql).or_raise(sql);
}

pub fn exec_args(sql: &str, args: &[DatumWithOid]) {
    Spi::run_with_args(sql, args).or_raise(sql);
}

/// Run a statement and return how many rows it processed.
pub fn exec_count(sql: &str) -> i64 {
    Spi::connect_mut(|c| c.update(sql, None, &[]).map(|t| t.len() as i64)).or_raise(sql)
}

/// First column of the first row (None for no row or NULL).
pub fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    Spi::connect_mut(|c| {
        let t = c.update(sql, Some(1), args)?;
        if t.is_empty() { Ok(None) } else { t.first().get_one::<T>() }
    })
    .or_raise(sql)
}

/// The first row of a query mapped by `f` (None when there is no row).
pub fn first_row<T>(
    sql: &str,
    args: &[DatumWithOid],
    f: impl FnOnce(&pgrx::spi::SpiTupleTable) -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    Spi::connect_mut(|c| {
        let t = c.update(sql, Some(1), args)?;
        if t.is_empty() { Ok(None) } else { f(&t.first()).map(Some) }
    })
    .or_raise(sql)
}

/// Every row of a query, each mapped by `f`.
pub fn rows<T>(
    sql: &str,
    args: &[DatumWithOid],
    mut f: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    Spi::connect_mut(|c| c.update(sql, None, args)?.map(|r| f(&r)).collect::<Result<Vec<T>, _>>()).or_raise(sql)
}
