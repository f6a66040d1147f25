//! zdm: zero-downtime schema changes inside PostgreSQL.
//!
//! Layout (ARCHITECTURE.md has the whole map): `api/` is the SQL surface
//! (thin wrappers: arguments, errors); `ops/` holds one module per kind of
//! migration against one interface, `engine::Operation`; `engine/` is what
//! they share — jobs, workers and launcher, the batch loop, concurrent index
//! builds, DDL steps, the lock-and-retry policy. Beside them: `catalog`
//! (state; the backfill cursor lives in `zdm.migrations.next_block`; the
//! phase rules), `trigger` (the sync and convert triggers), `security`
//! (running work as the migration's owner), `guard` (the event trigger
//! refusing DDL that would break an in-flight migration), `introspect`
//! (facts from pg_catalog), `subxact`, `guc`, `errors`, `spi`, `parse`.

use pgrx::prelude::*;

mod api;
mod catalog;
mod compat;
mod ddl;
mod engine;
mod errors;
mod guard;
mod guc;
mod introspect;
mod locks;
mod ops;
mod parse;
mod security;
mod spi;
mod subxact;
mod tree;
mod trigger;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION zdm.sync_trigger() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_sync_trigger';
COMMENT ON FUNCTION zdm.sync_trigger() IS
  'zdm sync trigger: keeps the old and new column of a rename equal on every write (installed by expand_rename)';
"#,
    name = "sync_trigger_function",
);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION zdm.unwritten(migration bigint, value anyelement) RETURNS anyelement
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'zdm_unwritten';
COMMENT ON FUNCTION zdm.unwritten(bigint, anyelement) IS
  'zdm: a rename''s new column default during the migration; tells the sync trigger that an INSERT left the column out, and returns value';
"#,
    name = "unwritten_function",
);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION zdm.convert_trigger() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_convert_trigger';
COMMENT ON FUNCTION zdm.convert_trigger() IS
  'zdm convert trigger: sets a type change''s shadow column to the conversion of the old column on every write (installed by expand_change_type)';
"#,
    name = "convert_trigger_function",
);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION zdm.fill_trigger() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_fill_trigger';
COMMENT ON FUNCTION zdm.fill_trigger() IS
  'zdm fill trigger: fills a column zdm.add_column added on every write that leaves it NULL or changes what its fill reads';
"#,
    name = "fill_trigger_function",
);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION zdm.guard() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'zdm_guard';
COMMENT ON FUNCTION zdm.guard() IS
  'zdm guard: refuses DDL that would break an in-flight migration (rename/drop of its table or columns, type change, inheritance)';
CREATE EVENT TRIGGER zdm_guard_ddl ON ddl_command_start EXECUTE FUNCTION zdm.guard();
CREATE EVENT TRIGGER zdm_guard_drop ON sql_drop EXECUTE FUNCTION zdm.guard();
"#,
    name = "guard_event_triggers",
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Errors must never carry a Rust backtrace to clients, whatever the
    // server's environment says (std reads these once, at the first capture).
    unsafe {
        std::env::remove_var("RUST_BACKTRACE");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    guc::register();
    engine::register(ops::ALL);
    ddl::hook::install();
    trigger::bypass::install();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        engine::supervisor::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The same settings as the demo and the host-side tests (preloads zdm,
    /// so `_PG_init` and the launcher registration are exercised too).
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        include_str!("../pgrx-config/postgresql.conf")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }
}
