//! Rename a column: a new column beside the old one, kept equal to it by the
//! sync trigger (`trigger`, deciding in `trigger::written`) while old and new application versions run
//! side by side; contract drops the old one. The steps are the shared
//! column steps (`column`).

use super::column::{self, ColumnSteps, NewColumn, SyncTrigger};
use pgrx::prelude::*;

pub static RENAME: ColumnSteps = ColumnSteps { kinds: &["rename"], takes_old_name: false };

/// Expand: add `new_column` (same type, collation, attributes) in sync with
/// `old_column`. Returns the migration id, and whether this call created it
/// (false: a repeated call found it in flight).
pub fn expand(relid: pg_sys::Oid, old_column: &str, new_column: &str) -> (i64, bool) {
    // A migration tool re-running this call finds the migration it started.
    crate::introspect::owned_table(relid);
    if let Some(id) = crate::catalog::same_in_flight(relid, "rename", old_column, Some(new_column), None, None) {
        pgrx::notice!("zdm migration {id} is already renaming this column; returning its id");
        return (id, false);
    }
    let (old, new) = (old_column.to_string(), new_column.to_string());
    let trigger = move |_: &crate::introspect::Column| SyncTrigger {
        name_prefix: "zdm_sync_",
        function: "zdm.sync_trigger",
        args: vec![old.clone(), new.clone()],
        conversion: None,
    };
    (column::expand(relid, old_column, &NewColumn { kind: "rename", name: new_column, new_type: None, trigger: &trigger, marks_unwritten: true }), true)
}
