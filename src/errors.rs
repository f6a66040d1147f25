//! Every refusal zdm makes is a Postgres error with a specific SQLSTATE, a
//! message naming the object and a hint saying what to do. Nothing here may
//! panic: a panic would surface as XX000 with Rust debug text.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
pub use pgrx::PgSqlErrorCode as Code;

/// Raise an ERROR with SQLSTATE, message and hint. Never returns.
#[track_caller]
pub fn raise(code: Code, message: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "zdm")
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raise an ERROR with a detail line as well.
#[track_caller]
pub fn raise_with_detail(
    code: Code,
    message: impl Into<String>,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    ErrorReport::new(code, message.into(), "zdm")
        .set_detail(detail.into())
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// SPI's own `Err` values (type mismatches, not Postgres errors, which unwind)
/// would be programming errors; report them as a clean external-routine error.
pub trait OrRaise<T> {
    fn or_raise(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrRaise<T> for Result<T, E> {
    #[track_caller]
    fn or_raise(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(
                Code::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                format!("zdm: {what} failed: {e}"),
                "This is a bug in zdm; please report it with the statement that caused it.",
            ),
        }
    }
}
