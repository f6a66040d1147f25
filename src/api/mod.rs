//! The SQL surface: thin `#[pg_extern]` wrappers that check arguments and
//! hand over to the core modules. Signatures are declared in SQL so the
//! argument types are exactly the documented ones (`regclass`, `name`).

mod backfill;
mod add_column;
mod change_type;
mod constraints;
mod index;
mod jobs;
mod lifecycle;
mod plan;
mod rename;
mod serve;
mod update;

use crate::errors::{raise, Code};
use std::ffi::CStr;

/// A `name` argument as a Rust string: non-empty UTF-8, else 22023.
fn name_arg(value: &CStr, what: &str) -> String {
    match value.to_str() {
        Ok(s) if !s.is_empty() => s.to_string(),
        _ => raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} must be a non-empty UTF-8 name"),
            "Pass a column or constraint name, e.g. 'email'.",
        ),
    }
}
