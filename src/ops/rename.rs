//! Rename a column: a new column beside the old one, kept equal to it by the
//! sync trigger (`trigger::sync`) while old and new application versions run
//! side by side; contract drops the old one. The steps are the shared
//! column steps (`column`).

use super::column::{self, ColumnSteps, NewColumn};
use pgrx::prelude::*;

pub static RENAME: ColumnSteps = ColumnSteps { kinds: &["rename"], takes_old_name: false };

/// Expand: add `new_column` (same type, collation, attributes) in sync with
/// `old_column`. Returns the migration id.
pub fn expand(relid: pg_sys::Oid, old_column: &str, new_column: &str) -> i64 {
    let (old, new) = (old_column.to_string(), new_column.to_string());
    let trigger = move |_: &crate::introspect::Column| ("zdm.sync_trigger", vec![old.clone(), new.clone()]);
    column::expand(relid, old_column, &NewColumn { kind: "rename", name: new_column, new_type: None, using_expr: None, trigger: &trigger })
}
