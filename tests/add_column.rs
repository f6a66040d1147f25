//! Host side: zdm.add_column (a column filled from the row while old and
//! new application code run side by side) and zdm.update_in_batches (a
//! batched data migration), on the shared backfill engine (issue 27).

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn wait_done(c: &mut postgres::Client, id: i64) -> String {
    c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0)
}

/// Old code inserts rows without the column and updates what the fill
/// reads; new code writes the column itself on other rows. Afterwards every
/// row holds fill(row) or what new code wrote, and after contract the column
/// is NOT NULL with its default and no trigger is left.
#[test]
fn fill_and_not_null_under_old_and_new_code() {
    const ROWS: i64 = 300_000;
    let cluster = Cluster::start("addcol", &[]);
    let mut c = cluster.create_db("ac");
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, price int NOT NULL, qty int NOT NULL, \"Note x\" text);
         INSERT INTO items SELECT g, g % 1000, g % 13, 'n' FROM generate_series(1, {ROWS}) g;"
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE items").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Old code: knows nothing of the column; rows with id % 10 <> 0.
    let old = {
        let (mut w, stop) = (cluster.connect("ac"), stop.clone());
        std::thread::spawn(move || {
            let mut i: i64 = 0;
            while i < 300 || !stop.load(Ordering::SeqCst) {
                i += 1;
                if i % 4 == 0 {
                    w.execute("INSERT INTO items (id, price, qty) VALUES ($1, $2, 3)", &[&(ROWS * 10 + i * 10 + 1), &(i as i32 % 50)]).unwrap();
                } else {
                    let mut k = (i * 7919) % ROWS + 1;
                    if k % 10 == 0 {
                        k += 1;
                    }
                    w.execute("UPDATE items SET qty = qty + 1 WHERE id = $1", &[&k]).unwrap();
                }
            }
            i
        })
    };
    let id: i64 = c
        .query_one("SELECT zdm.add_column('items', 'Total', 'bigint', fill => 'price::bigint * qty', not_null => true, default_expr => '0')", &[])
        .unwrap()
        .get(0);
    // New code: writes the column itself, on rows with id % 10 = 0.
    let new = {
        let (mut w, stop) = (cluster.connect("ac"), stop.clone());
        std::thread::spawn(move || {
            let mut i: i64 = 0;
            while i < 300 || !stop.load(Ordering::SeqCst) {
                i += 1;
                let k = ((i * 104_729) % (ROWS / 10) + 1) * 10;
                w.execute("UPDATE items SET \"Total\" = -id, qty = qty + 1 WHERE id = $1", &[&k]).unwrap();
                if i % 5 == 0 {
                    w.execute("INSERT INTO items (id, price, qty, \"Total\") VALUES ($1, 1, 1, -$1::bigint)", &[&(ROWS * 20 + i * 10)]).unwrap();
                }
            }
            i
        })
    };
    assert_eq!(wait_done(&mut c, id), "backfilled");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (old_writes, new_writes) = (old.join().unwrap(), new.join().unwrap());
    assert!(old_writes > 300 && new_writes > 300);
    // A repeated call (a migration tool re-running its step) finds it.
    let again: i64 = c.query_one("SELECT zdm.add_column('items', 'Total', 'bigint', fill => 'price::bigint * qty', not_null => true, default_expr => '0')", &[]).unwrap().get(0);
    assert_eq!(again, id);
    let wrong = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM items WHERE \"Total\" IS DISTINCT FROM CASE WHEN id % 10 = 0 AND \"Total\" < 0 THEN -id ELSE price::bigint * qty END",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(wrong(&mut c), 0, "every row holds fill(row) or what new code wrote");
    let written: i64 = c.query_one("SELECT count(*) FROM items WHERE \"Total\" < 0", &[]).unwrap().get(0);
    assert!(written > 100, "new code's writes were kept: {written}");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let (not_null, default, triggers): (bool, Option<String>, i64) = {
        let r = c
            .query_one(
                "SELECT a.attnotnull, pg_get_expr(d.adbin, d.adrelid), (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass AND tgname LIKE 'zdm%') \
                   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                  WHERE a.attrelid = 'items'::regclass AND a.attname = 'Total'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(not_null);
    assert_eq!(default.as_deref(), Some("(0)::bigint"), "the default, coerced to the column type");
    assert_eq!(triggers, 0);
    let checks: i64 = c.query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype = 'c'", &[]).unwrap().get(0);
    assert_eq!(checks, 0, "the NOT NULL helper constraint is gone");
    c.batch_execute("INSERT INTO items (id, price, qty) VALUES (-1, 1, 1)").unwrap();
    let total: i64 = c.query_one("SELECT \"Total\" FROM items WHERE id = -1", &[]).unwrap().get(0);
    assert_eq!(total, 0, "after contract the default applies");
    assert_eq!(wrong(&mut c), 1, "only the row inserted after contract (default 0) differs from fill(row)");
}

/// A fill that fails on one row fails the backfill naming the row, keeping
/// the SQLSTATE, and a writer's INSERT alike; abort restores the table.
#[test]
fn failing_row_and_abort() {
    let cluster = Cluster::start("addcolfail", &[]);
    let mut c = cluster.create_db("ac");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, d int);
         INSERT INTO t SELECT g, g % 500 + 1 FROM generate_series(1, 20000) g;
         UPDATE t SET d = 0 WHERE id = 7777;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.add_column('t', 'q', 'int', fill => '1000 / d')", &[]).unwrap().get(0);
    let (code, msg) = match c.execute("SELECT zdm.wait($1, '2 minutes')", &[&id]) {
        Ok(_) => ("none".to_string(), String::new()),
        Err(e) => (e.code().map(|c| c.code().to_string()).unwrap_or_default(), e.to_string()),
    };
    assert_eq!(code, "55000", "{msg}");
    let (_, job, _, error) = status_row(&mut c, id);
    assert_eq!(job.as_deref(), Some("failed"));
    let error = error.unwrap_or_default();
    assert!(error.contains("cannot fill column q of row (") && error.contains("division by zero"), "{error}");
    let msg = expect_err(&mut c, "INSERT INTO t VALUES (-1, 0)", "22012");
    assert!(msg.contains("a new row"), "{msg}");
    c.batch_execute(&format!("SELECT zdm.abort({id})")).unwrap();
    let left: i64 = c
        .query_one("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'q' AND NOT attisdropped", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let triggers: i64 = c.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass", &[]).unwrap().get(0);
    assert_eq!(triggers, 0);
    c.batch_execute("INSERT INTO t VALUES (-1, 0)").unwrap();
    // An update job's SET failing on one row: the batch fails naming it.
    let job: i64 = c.query_one("SELECT zdm.update_in_batches('t', 'd = 1000 / d', 'd < 1000')", &[]).unwrap().get(0);
    assert!(c.execute("SELECT zdm.wait($1, '2 minutes')", &[&job]).is_err());
    let (_, state, _, error) = status_row(&mut c, job);
    assert_eq!(state.as_deref(), Some("failed"));
    let error = error.unwrap_or_default();
    assert!(error.contains("zdm update job: row (") && error.contains("division by zero"), "{error}");
    let errcode: Option<String> = c.query_one("SELECT last_error FROM zdm.jobs WHERE migration_id = $1", &[&job]).unwrap().get(0);
    assert!(errcode.unwrap_or_default().contains("22012"), "the SQLSTATE is kept");
}

/// A volatile default fills existing rows through the backfill (no rewrite
/// under ACCESS EXCLUSIVE); a constant one is PostgreSQL's catalog-only
/// fast default with nothing to backfill.
#[test]
fn volatile_and_constant_defaults() {
    let cluster = Cluster::start("addcoldef", &[]);
    let mut c = cluster.create_db("ac");
    make_table(&mut c, "t", 50_000);
    let node: u32 = c.query_one("SELECT relfilenode::text::int FROM pg_class WHERE relname = 't'", &[]).unwrap().get::<_, i32>(0) as u32;
    let id: i64 = c.query_one("SELECT zdm.add_column('t', 'u', 'uuid', default_expr => 'gen_random_uuid()', not_null => true)", &[]).unwrap().get(0);
    // Rows inserted meanwhile get it as their default.
    c.batch_execute("INSERT INTO t (id, a) VALUES (-1, 'new')").unwrap();
    assert_eq!(wait_done(&mut c, id), "backfilled");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let (rows, distinct, filled): (i64, i64, i64) = {
        let r = c.query_one("SELECT count(*), count(DISTINCT u), count(u) FROM t", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((distinct, filled), (rows, rows), "every row has its own value");
    let node_after: u32 = c.query_one("SELECT relfilenode::text::int FROM pg_class WHERE relname = 't'", &[]).unwrap().get::<_, i32>(0) as u32;
    assert_eq!(node, node_after, "no table rewrite");
    // Constant: catalog-only, backfilled at once, NOT NULL at contract.
    let flag: i64 = c.query_one("SELECT zdm.add_column('t', 'flag', 'boolean', default_expr => 'false', not_null => true)", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT phase FROM zdm.status WHERE id = $1", &[&flag]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    assert_eq!(wait_done(&mut c, flag), "backfilled");
    c.batch_execute(&format!("SELECT zdm.contract({flag})")).unwrap();
    let (nn, f): (bool, i64) = {
        let r = c
            .query_one("SELECT (SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'flag'), count(*) FILTER (WHERE flag) FROM t", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(nn);
    assert_eq!(f, 0);
}

/// A partitioned table whose leaf was attached with another column order
/// and a dropped column: the fill reads each leaf by its own layout.
#[test]
fn partitioned_leaf_with_its_own_layout() {
    let cluster = Cluster::start("addcolpart", &[]);
    let mut c = cluster.create_db("ac");
    c.batch_execute(
        "CREATE TABLE p (id int, a int, b int) PARTITION BY RANGE (id);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10000);
         CREATE TABLE p2 (junk text, b int, a int, id int);
         ALTER TABLE p2 DROP COLUMN junk;
         ALTER TABLE p ATTACH PARTITION p2 FOR VALUES FROM (10000) TO (20000);
         INSERT INTO p SELECT g, g % 100, g % 7 FROM generate_series(0, 19999) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.add_column('p', 's', 'int', fill => 'a * 1000 + b', not_null => true)", &[]).unwrap().get(0);
    c.batch_execute("INSERT INTO p (id, a, b) VALUES (15000, 5, 6); UPDATE p SET b = 99 WHERE id IN (3, 12345)").unwrap();
    assert_eq!(wait_done(&mut c, id), "backfilled");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let wrong: i64 = c.query_one("SELECT count(*) FROM p WHERE s IS DISTINCT FROM a * 1000 + b", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
}

/// update_in_batches while writers update other columns of the same rows:
/// exactly the matching rows change, and status shows rows updated and
/// rows visited.
#[test]
fn update_in_batches_under_writers() {
    const ROWS: i64 = 100_000;
    let cluster = Cluster::start("updbatch", &[]);
    let mut c = cluster.create_db("ac");
    c.batch_execute(&format!(
        "CREATE TABLE projects (id int PRIMARY KEY, namespace_id int);
         INSERT INTO projects SELECT g, g * 10 FROM generate_series(1, 1000) g;
         CREATE TABLE issues (id bigint PRIMARY KEY, project_id int, namespace_id int, hits int DEFAULT 0);
         INSERT INTO issues (id, project_id) SELECT g, g % 1000 + 1 FROM generate_series(1, {ROWS}) g;
         UPDATE issues SET namespace_id = -1 WHERE id % 4 = 0;"
    ))
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (cluster.connect("ac"), stop.clone());
        std::thread::spawn(move || {
            let mut i: i64 = 0;
            while i < 300 || !stop.load(Ordering::SeqCst) {
                i += 1;
                w.execute("UPDATE issues SET hits = hits + 1 WHERE id = $1", &[&((i * 7919) % ROWS + 1)]).unwrap();
            }
        })
    };
    let id: i64 = c
        .query_one(
            "SELECT zdm.update_in_batches('issues', set => 'namespace_id = (select p.namespace_id from projects p where p.id = project_id)', \
                \"where\" => 'namespace_id IS NULL', batch_size => 500, workers => 2)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wait_done(&mut c, id), "contracted");
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let (wrong, untouched): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE id % 4 <> 0 AND namespace_id IS DISTINCT FROM project_id * 10), \
                        count(*) FILTER (WHERE id % 4 = 0 AND namespace_id = -1) FROM issues",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(wrong, 0, "every matching row updated");
    assert_eq!(untouched, ROWS / 4, "rows the WHERE excludes are left alone");
    let (kind, done, visited): (String, i64, Option<i64>) = {
        let r = c.query_one("SELECT kind, rows_done, rows_visited FROM zdm.status WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(kind, "update");
    assert_eq!(done, ROWS * 3 / 4, "the WHERE excludes rows already done: none updated twice");
    assert!(visited.unwrap_or(0) >= ROWS, "visited {visited:?}");
    // On a partitioned table (a leaf of another column order), every leaf,
    // with its second pass.
    c.batch_execute(
        "CREATE TABLE pi (id int, v text) PARTITION BY RANGE (id);
         CREATE TABLE pi_1 PARTITION OF pi FOR VALUES FROM (0) TO (5000);
         CREATE TABLE pi_2 (v text, id int);
         ALTER TABLE pi ATTACH PARTITION pi_2 FOR VALUES FROM (5000) TO (10000);
         INSERT INTO pi SELECT g, 'x' || g FROM generate_series(0, 9999) g;",
    )
    .unwrap();
    let job: i64 = c.query_one("SELECT zdm.update_in_batches('pi', 'v = upper(v)', 'v <> upper(v)', batch_size => 500, workers => 2)", &[]).unwrap().get(0);
    assert_eq!(wait_done(&mut c, job), "contracted");
    let (left, done, passes): (i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM pi WHERE v <> upper(v)), (SELECT rows_done FROM zdm.status WHERE id = $1),                         (SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'second pass')",
                &[&job],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((left, done, passes), (0, 10_000, 1));
}

/// Refusals, each with its SQLSTATE and nothing changed.
#[test]
fn misuse() {
    let cluster = Cluster::start("addcolmisuse", &[]);
    let mut c = cluster.create_db("ac");
    make_table(&mut c, "t", 1000);
    c.batch_execute("CREATE ROLE other LOGIN; GRANT USAGE ON SCHEMA zdm TO other; GRANT SELECT, UPDATE ON t TO other").unwrap();
    for (sql, code) in [
        ("SELECT zdm.update_in_batches('t', 'a = 1; DROP TABLE t')", "42601"),
        ("SELECT zdm.update_in_batches('t', 'a = ''x'' -- , pad = ''y''')", "42601"),
        ("SELECT zdm.update_in_batches('t', 'a = a', 'true) OR (true')", "42601"),
        ("SELECT zdm.update_in_batches('t', 'a = a', 'true; SELECT 1')", "42601"),
        ("SELECT zdm.update_in_batches('t', 'a = a FROM t t2')", "42601"),
        ("SELECT zdm.update_in_batches('t', 'nope = 1')", "42703"),
        ("SELECT zdm.update_in_batches('nosuch', 'a = a')", "42P01"),
        ("SELECT zdm.add_column('t', 'a', 'int')", "42701"),
        ("SELECT zdm.add_column('t', 'x', 'nosuchtype')", "42704"),
        ("SELECT zdm.add_column('t', 'x', 'int', not_null => true)", "22023"),
        ("SELECT zdm.add_column('t', 'x', 'timestamptz', fill => 'now()')", "42P17"),
        ("SELECT zdm.add_column('t', 'x', 'int', fill => 'pad')", "42846"),
        ("SELECT zdm.add_column('t', 'x', 'int', fill => '(SELECT 1)')", "0A000"),
        ("SELECT zdm.add_column('t', 'x', 'int', fill => 'id; SELECT 1')", "42601"),
        ("SELECT zdm.add_column('nosuch', 'x', 'int')", "42P01"),
    ] {
        match c.batch_execute(sql) {
            Ok(()) => panic!("{sql}: accepted, expected {code}"),
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some(code), "{sql}: {e}"),
        }
    }
    // A schema on the job's search_path where another role may create
    // objects: it could put a function in the job's way (42501).
    c.batch_execute("CREATE SCHEMA open_s; GRANT CREATE ON SCHEMA open_s TO other").unwrap();
    expect_err(&mut c, "SET search_path = open_s, public; SELECT zdm.update_in_batches('t', 'a = lower(a)')", "42501");
    c.batch_execute("RESET search_path").unwrap();
    // Text that lexes one way with standard_conforming_strings off and
    // another with it on: checked and run with it on, so it cannot break out.
    c.batch_execute("SET standard_conforming_strings = off").unwrap();
    let sneaky = "'\\' <> '' ) OR (true -- '\n = 't'";
    match c.query_one("SELECT zdm.update_in_batches('t', 'a = a', $1)", &[&sneaky]) {
        Ok(_) => panic!("accepted {sneaky}"),
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("42601"), "{e}"),
    }
    c.batch_execute("RESET standard_conforming_strings").unwrap();
    // A domain with constraints would be checked on every row under the lock.
    c.batch_execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)").unwrap();
    expect_err(&mut c, "SELECT zdm.add_column('t', 'x', 'positive', fill => 'id')", "0A000");
    let mut o = cluster.connect_as("ac", "other");
    expect_err(&mut o, "SELECT zdm.add_column('t', 'x', 'int', fill => 'id')", "42501");
    expect_err(&mut o, "SELECT zdm.update_in_batches('t', 'a = a')", "42501");
    let (migrations, columns): (i64, i64) = {
        let r = c
            .query_one("SELECT (SELECT count(*) FROM zdm.migrations), (SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0)", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((migrations, columns), (0, 3), "nothing changed");
    // What the fill reads is protected while it is in flight, and a repeat
    // with another fill is refused.
    let id: i64 = c.query_one("SELECT zdm.add_column('t', 'y', 'text', fill => 'upper(a)', background => false)", &[]).unwrap().get(0);
    expect_err(&mut c, "ALTER TABLE t RENAME COLUMN a TO b", "55000");
    expect_err(&mut c, "ALTER TABLE t DROP COLUMN a", "55000");
    expect_err(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b')", "55000");
    expect_err(&mut c, "SELECT zdm.add_column('t', 'y', 'text', fill => 'lower(a)')", "55000");
    c.batch_execute("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.a := NEW.a || '!'; RETURN NEW; END $$; \
                     CREATE TRIGGER zz_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch()").unwrap();
    c.batch_execute(&format!("SELECT zdm.backfill_batch({id}, 100000); SELECT zdm.backfill_batch({id}, 100000); SELECT zdm.backfill_batch({id}, 100000)")).unwrap();
    let phase: String = c.query_one("SELECT phase FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("fire after"), "{msg}");
    c.batch_execute(&format!("DROP TRIGGER zz_touch ON t; SELECT zdm.abort({id})")).unwrap();
    expect_err(&mut c, "CREATE TRIGGER zz_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch(); SELECT zdm.add_column('t', 'y', 'text', fill => 'upper(a)')", "55000");
    c.batch_execute("DROP TRIGGER IF EXISTS zz_touch ON t").unwrap();
    // A migration tool's transaction: expand and the job start at commit.
    c.batch_execute("BEGIN; SELECT zdm.add_column('t', 'x', 'int', fill => 'id * 2', not_null => true); COMMIT;").unwrap();
    let id: i64 = c.query_one("SELECT max(id) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(wait_done(&mut c, id), "backfilled");
    c.batch_execute(&format!("BEGIN; SELECT zdm.contract({id}); COMMIT;")).unwrap();
    let wrong: i64 = c.query_one("SELECT count(*) FROM t WHERE x IS DISTINCT FROM id * 2", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
}

/// The job controls and crash-safety, as for a rename: an add_column paused,
/// resumed, then the server crashed mid-backfill (the launcher resumes it,
/// every row filled once); an update job paused, its options changed,
/// resumed, cancelled and restarted.
#[test]
fn pause_resume_crash_and_cancel() {
    const ROWS: i64 = 100_000;
    let cluster = Cluster::start("addcolcrash", &[]);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION zdm").unwrap();
    make_table(&mut c, "t", ROWS);
    let done = |c: &mut postgres::Client, id: i64| -> i64 { c.query_one("SELECT rows_done FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0) };
    let id: i64 = c.query_one("SELECT zdm.add_column('t', 'n', 'bigint', fill => 'id * 3', not_null => true)", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 2000, target_batch_ms => 0, pause_ms => 30)", &[&id]).unwrap();
    wait_for("some progress", Duration::from_secs(30), || (done(&mut c, id) >= 10_000).then_some(()));
    c.execute("SELECT zdm.pause($1)", &[&id]).unwrap();
    let state: String = c.query_one("SELECT job_state FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(state, "paused");
    c.execute("SELECT zdm.resume($1)", &[&id]).unwrap();
    wait_for("more progress", Duration::from_secs(30), || (done(&mut c, id) >= 30_000).then_some(()));
    drop(c);
    cluster.restart_immediate();
    let mut c = cluster.connect("postgres");
    assert_eq!(wait_done(&mut c, id), "backfilled");
    assert_eq!(done(&mut c, id), ROWS, "every row filled exactly once");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let wrong: i64 = c.query_one("SELECT count(*) FROM t WHERE n IS DISTINCT FROM id * 3", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
    // An update job: pause, set_options, resume, cancel, start again.
    let job: i64 = c
        .query_one("SELECT zdm.update_in_batches('t', 'a = upper(a)', 'a <> upper(a)', batch_size => 1000, target_batch_ms => 0, pause_ms => 50)", &[])
        .unwrap()
        .get(0);
    wait_for("update progress", Duration::from_secs(30), || (done(&mut c, job) >= 5_000).then_some(()));
    c.execute("SELECT zdm.pause($1)", &[&job]).unwrap();
    // Found by the column it writes, which is protected meanwhile.
    let found: i64 = c.query_one("SELECT zdm.migration_id('t', 'a')", &[]).unwrap().get(0);
    assert_eq!(found, job);
    expect_err(&mut c, "ALTER TABLE t RENAME COLUMN a TO a2", "55000");
    expect_err(&mut c, "SELECT zdm.expand_rename('t', 'a', 'a2')", "55000");
    c.execute("SELECT zdm.set_options($1, batch_size => 5000, pause_ms => 0)", &[&job]).unwrap();
    c.execute("SELECT zdm.resume($1)", &[&job]).unwrap();
    c.execute("SELECT zdm.cancel($1)", &[&job]).unwrap();
    let state: String = c.query_one("SELECT job_state FROM zdm.status WHERE id = $1", &[&job]).unwrap().get(0);
    assert_eq!(state, "cancelled");
    c.execute("SELECT zdm.start_backfill($1)", &[&job]).unwrap();
    assert_eq!(wait_done(&mut c, job), "contracted");
    let (left, updated): (i64, i64) = {
        let r = c.query_one("SELECT (SELECT count(*) FROM t WHERE a <> upper(a)), (SELECT rows_done FROM zdm.status WHERE id = $1)", &[&job]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(left, 0);
    assert_eq!(updated, ROWS, "each row updated once");
}
