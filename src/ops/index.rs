//! Index operations — `create_index` (a concurrent build) and `drop_index`
//! (a concurrent drop): one build step each, run by a worker after the
//! requesting transaction commits (engine::index_build). A failed build
//! ends the migration with that error's SQLSTATE and leaves no index behind.

use crate::catalog::{self, as_catalog_owner, Migration, Phase};
use crate::engine::{jobs, locking, BuildState, IndexTask, Operation};
use crate::spi::{self, ident};
use crate::introspect;
use pgrx::prelude::*;
use std::time::Instant;

pub struct Index;

impl Operation for Index {
    fn kinds(&self) -> &'static [&'static str] {
        &["create_index", "drop_index"]
    }
    fn worker_type(&self) -> &'static str {
        "zdm index"
    }
    fn builds(&self, migration: i64) -> Vec<IndexTask> {
        let Some(m) = catalog::load(migration, false) else { return Vec::new() };
        let (index, definition, search_path) = as_catalog_owner(|| {
            spi::first_row(
                "SELECT m.object_name::text, coalesce(m.object_def, ''), coalesce(m.expr_search_path, 'pg_catalog, pg_temp') \
                   FROM zdm.migrations m WHERE m.id = $1",
                &[migration.into()],
                |r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<String>(3)?.unwrap_or_default(),
                    ))
                },
            )
        })
        .unwrap_or_default();
        let schema = catalog::current_schema_of(m.relid).unwrap_or_else(|| m.table_schema.clone());
        vec![IndexTask { key: index.clone(), relid: m.relid, drop: m.kind == "drop_index", schema, index, definition, search_path, leaves_only: false }]
    }
    fn build_state(&self, migration: i64, task: &IndexTask, state: BuildState) {
        match state {
            BuildState::Building if !task.drop => catalog::set_phase(migration, Phase::Backfilling),
            BuildState::Failed { code, message } => catalog::fail_migration(migration, code, message, true),
            _ => {}
        }
    }
    fn job_done(&self, migration: i64) {
        catalog::set_phase(migration, Phase::Contracted);
        jobs::finish_for_migration(migration, "completed");
    }
    fn abort(&self, m: &Migration) {
        let started = Instant::now();
        // The worker is stopped (`lifecycle::abort`: a build in progress is
        // rolled back by PostgreSQL, leaving an INVALID index); drop what a
        // build left behind.
        jobs::finish_for_migration(m.id, "cancelled");
        if m.kind == "create_index" {
            let index = as_catalog_owner(|| {
                spi::one::<String>("SELECT object_name::text FROM zdm.migrations WHERE id = $1", &[m.id.into()])
            })
            .unwrap_or_default();
            // Whatever the build left — INVALID, or valid if it finished
            // just before the abort — is this migration's: it goes.
            let left = spi::one::<bool>(
                "SELECT true FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
                  WHERE i.indrelid = $1 AND c.relname = $2",
                &[m.relid.into(), index.as_str().into()],
            );
            // On a partitioned table, also the partitions' indexes not
            // attached to it yet.
            let partitions = crate::engine::index_tree::partition_indexes(m.relid, &index);
            if left == Some(true) || !partitions.is_empty() {
                let t = m.table_sql();
                locking::lock_table(m.relid, &t, "ACCESS EXCLUSIVE");
                let schema = catalog::current_schema_of(m.relid).unwrap_or_default();
                spi::exec(&format!("DROP INDEX IF EXISTS {}", spi::qualified(&schema, &index)));
                for p in crate::engine::index_tree::partition_indexes(m.relid, &index) {
                    spi::exec(&format!("DROP INDEX IF EXISTS {p}"));
                }
            }
        }
        catalog::set_phase(m.id, Phase::Aborted);
        catalog::log_abort(m.id, started, None, "cancelled the index operation; removed the index it built, if any".into());
    }
}

/// Record an index migration and queue its job; the worker starts after the
/// caller's transaction commits (nothing happens if it rolls back).
pub fn queue(id: i64, kind: &str, relid: pg_sys::Oid, index: &str, definition: Option<&str>, caller_path: &str) {
    let table = introspect::migratable_table(relid);
    let caller = spi::one::<String>("SELECT current_user::text", &[]).unwrap_or_default();
    as_catalog_owner(|| {
        spi::exec_args(
            "INSERT INTO zdm.migrations (id, kind, relid, table_schema, table_name, owner_name, started_by, \
                                         object_name, object_def, expr_search_path) \
             VALUES ($1, $2, $3::oid::regclass, $4, $5, \
                     (SELECT r.rolname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $3), \
                     $6, $7, $8, $9)",
            &[
                id.into(),
                kind.into(),
                relid.into(),
                table.schema.as_str().into(),
                table.name.as_str().into(),
                caller.as_str().into(),
                index.into(),
                definition.into(),
                caller_path.into(),
            ],
        )
    });
    jobs::queue(id, &jobs::Options::default());
    jobs::launch_after_commit(id);
    let verb = if kind == "create_index" { "builds" } else { "drops" };
    pgrx::notice!(
        "zdm migration {id}: {verb} index {} concurrently once this transaction commits; follow it with SELECT zdm.wait({id}) or zdm.status",
        ident(index)
    );
}

/// An in-flight index migration of this kind for this index name.
pub fn in_flight(relid: pg_sys::Oid, kind: &str, index: &str) -> Option<i64> {
    as_catalog_owner(|| {
        spi::one::<i64>(
            "SELECT id FROM zdm.migrations WHERE relid = $1::oid::regclass AND kind = $2 AND object_name::text = $3 \
               AND phase IN ('expanded', 'backfilling', 'backfilled') ORDER BY id DESC LIMIT 1",
            &[relid.into(), kind.into(), index.into()],
        )
    })
}
