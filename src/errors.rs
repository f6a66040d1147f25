//! Every refusal zdm makes is a Postgres error with a specific SQLSTATE, a
//! message naming the object and a hint saying what to do. Nothing here may
//! panic: a panic would surface as XX000 with Rust debug text.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
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

thread_local! {
    /// The SQLSTATE of the last message raised while user code ran, as
    /// PostgreSQL had it (pgrx turns codes it does not know into XX000).
    static RAW_SQLSTATE: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

#[pg_guard]
unsafe extern "C-unwind" fn remember_sqlstate(_arg: *mut std::ffi::c_void) {
    let code = unsafe { pg_sys::geterrcode() };
    RAW_SQLSTATE.with(|c| c.set(code));
}

/// Decode a packed SQLSTATE (elog.h's MAKE_SQLSTATE) to its five characters.
pub fn unpack_sqlstate(mut code: i32) -> String {
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        s.push(char::from(b'0' + (code & 0x3F) as u8));
        code >>= 6;
    }
    s
}

/// Run user code so that an error it raises keeps a meaningful SQLSTATE: a
/// code PostgreSQL knows passes unchanged; a custom one (e.g. a CHECK
/// function's `RAISE … USING ERRCODE = 'ZZ001'`), which pgrx would report as
/// XX000, is reported as 38000 (external routine exception) with the
/// original SQLSTATE in the message. Never XX000 for a user's error.
pub fn keep_user_sqlstate<R>(f: impl FnOnce() -> R) -> R {
    struct Pop(*mut pg_sys::ErrorContextCallback);
    impl Drop for Pop {
        fn drop(&mut self) {
            unsafe { pg_sys::error_context_stack = self.0 };
        }
    }
    let mut callback = pg_sys::ErrorContextCallback {
        previous: unsafe { pg_sys::error_context_stack },
        callback: Some(remember_sqlstate),
        arg: std::ptr::null_mut(),
    };
    RAW_SQLSTATE.with(|c| c.set(0));
    let _pop = Pop(callback.previous);
    unsafe { pg_sys::error_context_stack = &mut callback };
    let body = std::panic::AssertUnwindSafe(f);
    PgTryBuilder::new(body)
        .catch_others(|e| {
            let raw = RAW_SQLSTATE.with(|c| c.get());
            let report = match &e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r) => Some(r),
                _ => None,
            };
            match report {
                Some(r) if r.sql_error_code() == Code::ERRCODE_INTERNAL_ERROR && raw != 0 => {
                    let state = unpack_sqlstate(raw);
                    if state == "XX000" || state.starts_with("00") || state.starts_with("01") || state.starts_with("02") {
                        e.rethrow()
                    }
                    let mut out = ErrorReport::new(
                        Code::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                        format!("{} (SQLSTATE {state})", r.message()),
                        "zdm",
                    );
                    if let Some(d) = r.detail() {
                        out = out.set_detail(d.to_string());
                    }
                    if let Some(h) = r.hint() {
                        out = out.set_hint(h.to_string());
                    }
                    out.report(PgLogLevel::ERROR);
                    unreachable!()
                }
                _ => e.rethrow(),
            }
        })
        .execute()
}

/// The SQLSTATE of an error caught by `subxact` or a worker's transaction.
pub fn code_of(e: &CaughtError) -> Code {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.sql_error_code(),
        CaughtError::RustPanic { ereport, .. } => ereport.sql_error_code(),
    }
}

/// Its message.
pub fn message_of(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// Its message, with PostgreSQL's detail line when there is one (e.g. which
/// key is duplicated).
pub fn message_with_detail(e: &CaughtError) -> String {
    let detail = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.detail().map(str::to_string),
        CaughtError::RustPanic { ereport, .. } => ereport.detail().map(str::to_string),
    };
    match detail {
        Some(d) => format!("{} ({d})", message_of(e)),
        None => message_of(e),
    }
}
