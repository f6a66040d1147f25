//! `zdm.plan(statement)`: what one or more DDL statements (or zdm calls)
//! would do against the live database, one row per step, without running
//! them (ddl:: has the analysis).

use crate::ddl::{self, Statement, live};
use crate::locks;
use pgrx::prelude::*;
use serde_json::json;

#[pg_extern(sql = "
CREATE FUNCTION zdm._plan(statement text) RETURNS jsonb STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
CREATE FUNCTION zdm.plan(statement text)
RETURNS TABLE (step int, statement text, action text, relation text, lock text, blocks text, work text,
               rows bigint, bytes bigint, estimate interval, estimate_basis text, blockers text[],
               safe boolean, alternative text, note text)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE sql
AS $$
  SELECT p.step, p.statement, p.action, p.relation, p.lock, p.blocks, p.work, p.rows, p.bytes,
         pg_catalog.make_interval(secs => p.estimate_s), p.estimate_basis, p.blockers, p.safe, p.alternative, p.note
    FROM pg_catalog.jsonb_to_recordset(zdm._plan(statement)) AS p(step int, statement text, action text, relation text,
         lock text, blocks text, work text, rows bigint, bytes bigint, estimate_s float8, estimate_basis text,
         blockers text[], safe boolean, alternative text, note text)
$$;
COMMENT ON FUNCTION zdm.plan(text) IS
  'Explain DDL statements or zdm calls against the live database without running them: per step the lock and what it blocks, the work under it, rows, bytes, an estimate, who holds a conflicting lock now, and the zdm call that does it online';
")]
fn _plan(statement: &str) -> pgrx::JsonB {
    // Names in the statements resolve with the caller's search_path, as
    // they will when run; zdm's own queries pin theirs (spi::read_*).
    pgrx::JsonB(plan(statement))
}

fn plan(text: &str) -> serde_json::Value {
    let c = std::ffi::CString::new(text).unwrap_or_default();
    let parsed = unsafe { pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT) };
    let limit = live::large_table_bytes();
    // Measured only when a step does work proportional to a table's size.
    let mut measured: Option<Option<live::Rates>> = None;
    let mut rows = Vec::new();
    let mut n = 0;
    for raw in ddl::list::<pg_sys::RawStmt>(parsed) {
        let (location, len) = unsafe { ((*raw).stmt_location, (*raw).stmt_len) };
        let stmt_text = ddl::hook::statement_text(text, location, len)
            .trim()
            .to_string();
        let steps = ddl::analyse(&Statement {
            node: unsafe { (*raw).stmt },
            text: &stmt_text,
        });
        if steps.is_empty() {
            n += 1;
            rows.push(json!({
                "step": n, "statement": stmt_text, "action": "not analysed: not DDL on an existing table, or no lock on one",
                "safe": serde_json::Value::Null,
            }));
            continue;
        }
        for s in steps {
            n += 1;
            let size = live::size(s.relid);
            let rates = if s.work.heavy() { *measured.get_or_insert_with(live::rates) } else { None };
            let relation = (s.relid != pg_sys::InvalidOid).then(|| ddl::relation_sql(s.relid));
            let large =
                size.bytes > limit && s.relid != pg_sys::InvalidOid && !live::private(s.relid);
            let unsafe_step = s.blocking_work() && (large || s.relid == pg_sys::InvalidOid);
            let blockers: Vec<String> = live::blockers(&s)
                .iter()
                .map(locks::Holder::describe)
                .collect();
            let mut note = s.note.clone();
            if !blockers.is_empty() && locks::blocks(s.lock) != "nothing" && !s.online {
                let extra = "its lock would queue behind these sessions, and every later query on the table behind it (zdm.safe_ddl bounds that wait)";
                note = Some(match note {
                    Some(n) => format!("{n}; {extra}"),
                    None => extra.into(),
                });
            }
            rows.push(json!({
                "step": n,
                "statement": stmt_text,
                "action": s.action,
                "relation": relation,
                "lock": (s.lock > 0).then(|| locks::name(s.lock)),
                "blocks": (s.lock > 0).then(|| if s.online && s.lock == locks::ACCESS_EXCLUSIVE { "reads and writes, briefly" } else { locks::blocks(s.lock) }),
                "work": s.work.text(),
                "rows": size.rows,
                "bytes": (s.relid != pg_sys::InvalidOid).then_some(size.bytes),
                "estimate_s": if s.online && s.work == ddl::Work::Catalog { Some(0.0) } else { live::estimate(s.work, size.bytes, rates) },
                "estimate_basis": if s.work.heavy() { Some(live::basis(rates)) } else { None },
                "blockers": blockers,
                "safe": !unsafe_step,
                "alternative": s.alternative,
                "note": note,
            }));
        }
    }
    serde_json::Value::Array(rows)
}
