//! Change a column's type online: a shadow column of the new type beside the
//! old one, filled by the convert trigger (`trigger::convert`) on every
//! write and by the backfill; at contract the shadow takes the column's
//! name, default, NOT NULL, keys, indexes, privileges and statistics, and a
//! serial's sequence widens with it. The application reads and writes the
//! column as before throughout. The steps are the shared column steps
//! (`column`); this module checks the request and builds the expression.
//!
//! The conversion is analysed like `ALTER COLUMN … TYPE … USING`: parsed as
//! one expression, transformed against the table alone (no subqueries,
//! aggregates or other tables), coerced to the new type by assignment, and
//! required to be immutable — every session must compute the same value for
//! the same row, whatever its TimeZone or search_path, or the backfill, the
//! trigger and contract's verification would disagree.

use super::analyse::{self, format_type, resolve_type, with_search_path, Reads};
use super::column::{self, ColumnSteps, NewColumn, SyncTrigger};
use crate::errors::{raise, Code};
use crate::introspect;
use crate::spi::{self, ident};
use pgrx::prelude::*;

pub static CHANGE_TYPE: ColumnSteps = ColumnSteps { kinds: &["change_type"], takes_old_name: true };

/// The shadow column's name: the column's, marked, within 63 bytes.
pub fn shadow_name(column: &str) -> String {
    spi::with_suffix(column, "_zdm_new")
}

/// Expand: add the shadow column of `new_type` and the convert trigger.
/// Returns the migration id, and whether this call created it (false: a
/// repeated call found it in flight).
pub fn expand(relid: pg_sys::Oid, column_name: &str, new_type: &str, using_expr: Option<&str>, caller_path: &str) -> (i64, bool) {
    let table = introspect::owned_table(relid);
    let (type_oid, typmod) = with_search_path(caller_path, || resolve_type(new_type, "new_type"));
    introspect::user_column(&table, column_name);
    let same = spi::one::<bool>(
        "SELECT atttypid = $3 AND atttypmod = $4 FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2",
        &[relid.into(), column_name.into(), type_oid.into(), typmod.into()],
    );
    if same == Some(true) {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("column {} of table {} is already of type {}", ident(column_name), table.sql(), format_type(type_oid, typmod)),
            "Nothing to change.",
        );
    }
    // Checked now, without a lock; again under expand's lock (the trigger closure).
    let (_, sql) = analyse(relid, &table.name, column_name, type_oid, typmod, using_expr, caller_path);
    // A migration tool re-running this call finds the migration it started.
    let type_sql = format_type(type_oid, typmod);
    if let Some(id) = crate::catalog::same_in_flight(relid, "change_type", column_name, None, Some(&type_sql), Some(&sql)) {
        pgrx::notice!("zdm migration {id} is already changing this column to {type_sql}; returning its id");
        return (id, false);
    }
    if let Some((id, phase)) = crate::catalog::in_flight_on_columns(relid, &[column_name, &shadow_name(column_name)]) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("column {} of table {} is already under zdm migration {id} (phase {phase})", ident(column_name), table.sql()),
            format!("Finish it with zdm.contract({id}) or undo it with zdm.abort({id}) first."),
        );
    }
    let shadow = shadow_name(column_name);
    let column = column_name.to_string();
    // Analysed again under expand's lock, once: the tree the trigger runs
    // and the SQL contract verifies with come from the same analysis.
    let trigger = |_: &introspect::Column| SyncTrigger {
        name_prefix: "zdm_convert_",
        function: "zdm.convert_trigger",
        args: vec![column.clone(), shadow.clone()],
        conversion: Some(analyse(relid, &table.name, &column, type_oid, typmod, using_expr, caller_path)),
    };
    (column::expand(relid, column_name, &NewColumn { kind: "change_type", name: &shadow, new_type: Some((type_oid, typmod)), trigger: &trigger, marks_unwritten: false }), true)
}

/// Parse and analyse the conversion; returns its node tree (for the trigger)
/// and its SQL, deparsed against the table (for contract's verification).
#[allow(clippy::too_many_arguments)]
fn analyse(
    relid: pg_sys::Oid,
    relname: &str,
    column: &str,
    type_oid: pg_sys::Oid,
    typmod: i32,
    using_expr: Option<&str>,
    caller_path: &str,
) -> (String, String) {
    let (what, source) = match using_expr {
        Some(e) => ("using_expr".to_string(), e.to_string()),
        None => (format!("column {}", ident(column)), ident(column)),
    };
    let attnum = introspect::column(relid, column).map(|c| c.attnum).unwrap_or_default();
    let a = analyse::expression(relid, relname, &what, &source, Reads::Column(attnum), type_oid, typmod, true, caller_path);
    (a.tree, a.sql)
}
