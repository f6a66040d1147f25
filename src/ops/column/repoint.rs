//! Foreign keys from other tables that reference the old column: re-pointed
//! NOT VALID at the new column under contract's lock, validated by a
//! constraint migration after commit.

use super::FK_ACTIONS;
use crate::catalog::{self, Migration};
use crate::engine::{jobs, locking};
use crate::ops::constraint;
use crate::spi::{self, ident};
use pgrx::prelude::*;

pub(super) struct Repointed {
    child: pg_sys::Oid,
    child_sql: String,
    name: String,
    temporary: String,
    definition: String,
    deferrable: Option<String>,
}

/// Under contract's lock: every foreign key referencing the old column gets
/// a NOT VALID twin referencing the new column (its unique index is built),
/// and the original is dropped, so the old column can go.
pub(super) fn referencing_keys(m: &Migration, t: &str, old_attnum: i16) -> Vec<Repointed> {
    let rows = Spi::connect_mut(|c| {
        let rows = c.update(
            &format!("SELECT c.conrelid, pg_catalog.format('%I.%I', n.nspname, r.relname), c.conname::text, \
                    (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname::text), ', ' ORDER BY k.ord) \
                       FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(att, ord) \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att), \
                    {FK_ACTIONS}, \
                    CASE WHEN c.condeferrable THEN CASE WHEN c.condeferred THEN 'DEFERRABLE INITIALLY DEFERRED' \
                                                        ELSE 'DEFERRABLE INITIALLY IMMEDIATE' END END \
               FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
              WHERE c.contype = 'f' AND c.confrelid = $1 AND c.confkey = ARRAY[$2]::int2[] ORDER BY c.conname"),
            None,
            &[m.relid.into(), old_attnum.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?.unwrap_or_default(),
                r.get::<String>(6)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    let mut done = Vec::new();
    for (child, child_sql, name, columns, actions, deferrable) in rows {
        locking::lock_table(child, &child_sql, "ACCESS EXCLUSIVE");
        let temporary = spi::with_suffix(&name, &format!("_zdm{}", m.id));
        let definition = format!("FOREIGN KEY ({columns}) REFERENCES {t} ({}){actions}", ident(m.new_col()));
        spi::exec(&format!("ALTER TABLE {child_sql} ADD CONSTRAINT {} {definition} NOT VALID", ident(&temporary)));
        spi::exec(&format!("ALTER TABLE {child_sql} DROP CONSTRAINT {}", ident(&name)));
        done.push(Repointed { child, child_sql, name, temporary, definition, deferrable });
    }
    done
}

/// After the old column is gone: the re-pointed keys take their names and
/// deferrability back, and each is validated by a constraint migration
/// that a worker runs after this transaction commits (a scan under SHARE
/// UPDATE EXCLUSIVE: writes go on).
pub(super) fn finish(m: &Migration, keys: Vec<Repointed>, column: &str) {
    for k in keys {
        spi::exec(&format!("ALTER TABLE {} RENAME CONSTRAINT {} TO {}", k.child_sql, ident(&k.temporary), ident(&k.name)));
        if let Some(clause) = &k.deferrable {
            spi::exec(&format!("ALTER TABLE {} ALTER CONSTRAINT {} {clause}", k.child_sql, ident(&k.name)));
        }
        // As it stands now (the referenced column may have been renamed since).
        let definition = spi::one::<String>(
            "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
            &[k.child.into(), k.name.as_str().into()],
        )
        .map(|d| d.trim_end_matches(" NOT VALID").to_string())
        .unwrap_or_else(|| k.definition.clone());
        let id = catalog::next_id();
        let started_by = spi::one::<String>("SELECT session_user::text", &[]).unwrap_or_default();
        constraint::record(
            &constraint::Request {
                id,
                kind: constraint::FOREIGN_KEY.into(),
                relid: k.child.to_u32(),
                column: None,
                constraint_name: k.name.clone(),
                definition,
                ref_relid: Some(m.relid.to_u32()),
                started_by,
                search_path: "pg_catalog, pg_temp".into(),
                depends_on: None,
                lock: locking::LockPolicy::current(),
            },
            false,
        );
        jobs::launch_after_commit(id);
        pgrx::notice!(
            "zdm migration {}: foreign key {} on {} now references {}; zdm migration {id} validates it after commit",
            m.id,
            ident(&k.name),
            k.child_sql,
            ident(column)
        );
    }
}
