//! Host side: a careless user and a fuzzer. Every zdm function is called
//! with strange identifiers and options, out of phase, twice and from two
//! sessions at once; the table is rewritten (VACUUM FULL, CLUSTER) and
//! truncated mid-backfill. Each call either works or fails with a specific
//! SQLSTATE — never XX000, never a backtrace, never a crashed backend — and
//! leaves catalog and table unchanged when it fails.

mod common;

use common::*;
use postgres::types::ToSql;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn snapshot(c: &mut Client) -> (i64, i64, String) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM zdm.migrations WHERE phase <> 'aborted'),
                    (SELECT count(*) FROM zdm.jobs WHERE state NOT IN ('failed', 'cancelled')),
                    (SELECT string_agg(attname || ':' || atttypid::regtype::text, ',' ORDER BY attnum) FROM pg_attribute
                      WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped)
                    || (SELECT coalesce(string_agg(conname, ',' ORDER BY conname), '') FROM pg_constraint WHERE conrelid = 't'::regclass)
                    || (SELECT coalesce(string_agg(tgname, ',' ORDER BY tgname), '') FROM pg_trigger WHERE tgrelid = 't'::regclass)",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Run one call; on error it must carry a real SQLSTATE and no Rust
/// internals, and change nothing (a constraint request that failed in its
/// worker stays in the catalog as an aborted migration: history, not state).
/// Returns whether it succeeded.
fn probe(c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> bool {
    let before = snapshot(c);
    match c.query(sql, params) {
        Ok(_) => true,
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql} {params:?}: not a database error (backend crashed?): {e}"));
            let code = db.code().code();
            let text = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
            assert_ne!(code, "XX000", "{sql} {params:?}: {text}");
            for leak in ["panicked", "stack backtrace", ".rs:", "RUST_BACKTRACE", "called `Option::unwrap()`"] {
                assert!(!text.contains(leak), "{sql} {params:?} leaked {leak:?}: {text}");
            }
            assert_eq!(snapshot(c), before, "{sql} {params:?} failed ({code}) but changed something");
            false
        }
    }
}

/// Clean up whatever a successful fuzz call started.
fn abort_all(c: &mut Client) {
    c.batch_execute(
        "SELECT zdm.abort(id) FROM zdm.migrations WHERE phase IN ('expanded', 'backfilling', 'backfilled') ORDER BY id",
    )
    .unwrap();
}

#[test]
fn fuzz_identifiers_and_options_across_every_function() {
    // The server runs with RUST_BACKTRACE=1: errors must still carry no backtrace.
    let cluster = Cluster::start_with_env("fuzz", &[], &[("RUST_BACKTRACE", "1")]);
    let mut c = cluster.create_db("fz");
    make_table(&mut c, "t", 200);
    make_table(&mut c, "p", 10);
    let names: Vec<String> = vec![
        "".into(),
        " ".into(),
        "a".into(),
        "A".into(),
        "\"".into(),
        "'".into(),
        "a\"b".into(),
        ";".into(),
        "--".into(),
        "a; DROP TABLE t; --".into(),
        "ünïcødé ☃".into(),
        "select".into(),
        "x".repeat(63),
        "x".repeat(64),
        "é".repeat(40),
        "pad".into(),
        "id".into(),
        "ctid".into(),
    ];
    let mut ok = 0;
    let mut refused = 0;
    let mut count = |r: bool| if r { ok += 1 } else { refused += 1 };
    for n in &names {
        count(probe(&mut c, "SELECT zdm.expand_rename('t', $1::text::name, 'fz_new', false)", &[n]));
        abort_all(&mut c);
        count(probe(&mut c, "SELECT zdm.expand_rename('t', 'a', $1::text::name, false)", &[n]));
        abort_all(&mut c);
        count(probe(&mut c, "SELECT zdm.expand_rename($1::text::regclass, 'a', 'b', false)", &[n]));
        abort_all(&mut c);
        count(probe(&mut c, "SELECT zdm.validate_not_null('t', $1::text::name)", &[n]));
        count(probe(&mut c, "SELECT zdm.add_check('t', $1::text::name, 'id > 0')", &[n]));
        count(probe(&mut c, "SELECT zdm.add_check('t', 'fz_check', $1)", &[n]));
        count(probe(&mut c, "SELECT zdm.add_foreign_key('t', ARRAY[$1::text::name], 'p', ARRAY['id'])", &[n]));
        count(probe(&mut c, "SELECT zdm.add_foreign_key('t', ARRAY['id'], 'p', ARRAY['id'], on_delete => $1)", &[n]));
        // Undo any constraint a probe managed to add, so later snapshots compare like with like.
        c.batch_execute("DO $$ DECLARE r record; BEGIN FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = 't'::regclass AND contype IN ('c', 'f') LOOP EXECUTE format('ALTER TABLE t DROP CONSTRAINT %I', r.conname); END LOOP; END $$; ALTER TABLE t ALTER COLUMN a DROP NOT NULL; ALTER TABLE t ALTER COLUMN pad DROP NOT NULL;").unwrap();
    }
    for expr in ["true); DROP TABLE t; --", "true) --", "(select 1)", "1/0 = 1", "a ~ '['", "pg_sleep(0) IS NULL", "nosuchfunc(a)", "id > 0 -- comment"] {
        count(probe(&mut c, "SELECT zdm.add_check('t', 'fz_expr', $1)", &[&expr]));
        c.batch_execute("ALTER TABLE t DROP CONSTRAINT IF EXISTS fz_expr").unwrap();
    }
    // Ids that do not exist, NULL, 0, negative, huge.
    for id in [None, Some(0i64), Some(-1), Some(i64::MAX), Some(424242)] {
        for f in ["contract", "abort", "pause", "resume", "cancel", "backfill_batch", "start_backfill", "wait", "set_options"] {
            count(probe(&mut c, &format!("SELECT zdm.{f}($1)"), &[&id]));
        }
    }
    // Options on a real migration: NULL, 0, negative, huge, odd intervals.
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', false)", &[]).unwrap().get(0);
    for size in [None, Some(0i32), Some(-1), Some(1), Some(i32::MAX)] {
        count(probe(&mut c, "SELECT zdm.backfill_batch($1, $2)", &[&id, &size]));
        count(probe(&mut c, "SELECT zdm.set_options($1, batch_size => $2)", &[&id, &size]));
        count(probe(&mut c, "SELECT zdm.set_options($1, pause_ms => $2)", &[&id, &size]));
        count(probe(&mut c, "SELECT zdm.set_options($1, target_batch_ms => $2)", &[&id, &size]));
    }
    for iv in ["-1 second", "0", "1 microsecond", "100 years", "1 month"] {
        for opt in ["max_replica_lag", "lock_timeout", "statement_timeout"] {
            count(probe(&mut c, &format!("SELECT zdm.set_options($1, {opt} => $2::text::interval)"), &[&id, &iv]));
        }
        count(probe(&mut c, "SELECT zdm.wait($1, $2::text::interval)", &[&id, &iv]));
    }
    for ts in ["infinity", "-infinity", "2000-01-01"] {
        count(probe(&mut c, "SELECT zdm.set_options($1, run_after => $2::text::timestamptz)", &[&id, &ts]));
    }
    c.execute("SELECT zdm.cancel($1)", &[&id]).ok();
    println!("{ok} calls worked, {refused} refused with a specific SQLSTATE");
    assert!(refused > 50 && ok > 10);
    // The server is still healthy: no backend crashed (a crash restarts all).
    let up: f64 = c.query_one("SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8", &[]).unwrap().get(0);
    assert!(up > 1.0);
    let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
    assert!(!log.contains("terminated by signal"), "a backend crashed:\n{}", cluster.log_tail());
}

/// Every function out of phase, twice, and from two sessions at once.
#[test]
fn out_of_phase_twice_and_concurrently() {
    let cluster = Cluster::start("phase", &[]);
    let mut c = cluster.create_db("ph");
    make_table(&mut c, "t", 20_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("backfill is not complete"), "{msg}");
    expect_err(&mut c, &format!("SELECT zdm.pause({id})"), "55000");
    expect_err(&mut c, &format!("SELECT zdm.wait({id})"), "55000");
    expect_err(&mut c, "SELECT zdm.expand_rename('t', 'a', 'c')", "55000");
    // the same call again (a tool re-running its migration): the same id
    let again: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    assert_eq!(again, id);
    // Two sessions looping backfill_batch at once: exactly-once progress.
    let mut c2 = cluster.connect("ph");
    let h = std::thread::spawn(move || {
        let mut rows = 0i64;
        loop {
            let n: i64 = c2.query_one("SELECT zdm.backfill_batch($1, 500)", &[&id]).unwrap().get(0);
            if n == 0 {
                return rows;
            }
            rows += n;
        }
    });
    let mut rows = 0i64;
    loop {
        let n: i64 = c.query_one("SELECT zdm.backfill_batch($1, 500)", &[&id]).unwrap().get(0);
        if n == 0 {
            break;
        }
        rows += n;
    }
    rows += h.join().unwrap();
    assert_eq!(rows, 20_000, "every row backfilled exactly once");
    expect_err(&mut c, &format!("SELECT zdm.start_backfill({id})"), "55000");
    // contract from two sessions at once: one contracts, the other waits for
    // it and then finds nothing left to do (a NOTICE, not an error).
    let mut c3 = cluster.connect("ph");
    c.batch_execute(&format!("BEGIN; SELECT zdm.contract({id})")).unwrap();
    let h = std::thread::spawn(move || c3.batch_execute(&format!("SELECT zdm.contract({id})")).is_ok());
    std::thread::sleep(Duration::from_millis(500));
    c.batch_execute("COMMIT").unwrap();
    assert!(h.join().unwrap(), "the second contract is a no-op");
    // after contract: re-running contract or a batch is a no-op, undoing or restarting is refused
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let n: i64 = c.query_one("SELECT zdm.backfill_batch($1)", &[&id]).unwrap().get(0);
    assert_eq!(n, 0);
    for f in ["abort", "start_backfill"] {
        expect_err(&mut c, &format!("SELECT zdm.{f}({id})"), "55000");
    }
    // abort twice
    let id2: i64 = c.query_one("SELECT zdm.expand_rename('t', 'pad', 'pad2', background => false)", &[]).unwrap().get(0);
    c.execute("SELECT zdm.abort($1)", &[&id2]).unwrap();
    c.execute("SELECT zdm.abort($1)", &[&id2]).unwrap(); // a no-op
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id2})"), "55000");
    assert!(msg.contains("aborted"), "{msg}");
    // start_backfill twice before the first one's worker could start: one worker only.
    let id4: i64 = c.query_one("SELECT zdm.expand_rename('t', 'pad', 'pad4', background => false)", &[]).unwrap().get(0);
    c.batch_execute(&format!("BEGIN; SELECT zdm.start_backfill({id4})")).unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.start_backfill({id4})"), "55000");
    assert!(msg.contains("already has a background backfill"), "{msg}");
    c.batch_execute("ROLLBACK").unwrap();
    c.execute("SELECT zdm.abort($1)", &[&id4]).unwrap();
    // DROP EXTENSION while a migration is in flight
    let _id3: i64 = c.query_one("SELECT zdm.expand_rename('t', 'pad', 'pad3', background => false)", &[]).unwrap().get(0);
    expect_err(&mut c, "DROP EXTENSION zdm", "2BP01");
}

/// VACUUM FULL and CLUSTER rewrite the table mid-backfill while writers use
/// both columns; the scan restarts and nothing is lost. TRUNCATE mid-backfill
/// ends with an empty, consistent table.
#[test]
fn rewrites_and_truncate_mid_backfill() {
    const ROWS: i64 = 100_000;
    let cluster = Cluster::start("rewrite", &[]);
    let mut c = cluster.create_db("rw");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 2000, pause_ms => 50, target_batch_ms => 0)", &[&id]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |column: &str, residue: i64, base: i64| {
        let w = Writer { table: "t".into(), key: "id".into(), column: column.into(), residue, rows: ROWS, insert_base: base, min_writes: 200 };
        let (conn, stop) = (cluster.connect("rw"), stop.clone());
        std::thread::spawn(move || w.run(conn, stop))
    };
    let w1 = spawn("a", 0, 10 * ROWS);
    let w2 = spawn("b", 1, 20 * ROWS);
    wait_for("some progress", Duration::from_secs(60), || (status_row(&mut c, id).2 > 10_000).then_some(()));
    c.batch_execute("VACUUM FULL t").unwrap();
    wait_for("more progress", Duration::from_secs(60), || (status_row(&mut c, id).2 > 30_000).then_some(()));
    c.batch_execute("CLUSTER t USING t_pkey").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    stop.store(true, Ordering::SeqCst);
    let mut ledger = w1.join().unwrap();
    ledger.extend(w2.join().unwrap());
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(mismatches(&mut c, "t", "id", "b", &ledger), 0);
    let restarts: i64 = c
        .query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step LIKE '%rewritten%'", &[&id])
        .unwrap()
        .get(0);
    assert!(restarts >= 1, "the scan restarted after the rewrite");

    make_table(&mut c, "u", 50_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('u', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 1000, pause_ms => 100, target_batch_ms => 0)", &[&id]).unwrap();
    wait_for("progress on u", Duration::from_secs(60), || (status_row(&mut c, id).2 > 0).then_some(()));
    c.batch_execute("TRUNCATE u; INSERT INTO u (id, a) VALUES (1, 'after')").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let b: String = c.query_one("SELECT b FROM u", &[]).unwrap().get(0);
    assert_eq!(b, "after");
}

/// A user CHECK function that raises a custom SQLSTATE, met by contract's
/// validation: 38000 with the original code, never XX000.
#[test]
fn custom_sqlstate_from_user_code_is_not_internal_error() {
    let cluster = Cluster::start("sqlstate", &[]);
    let mut c = cluster.create_db("ss");
    c.batch_execute(
        "CREATE FUNCTION picky(v text) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN IF v = 'orig-7' AND current_setting('zdm_test.strict', true) = 'on' THEN
             RAISE EXCEPTION 'picky about %', v USING ERRCODE = 'ZZ001'; END IF; RETURN true; END $$;
         CREATE TABLE t (id bigint PRIMARY KEY, a text CHECK (public.picky(a)));
         INSERT INTO t SELECT g, 'orig-' || g FROM generate_series(1, 100) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    while c.query_one("SELECT zdm.backfill_batch($1)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    c.batch_execute("SET zdm_test.strict = on").unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "38000");
    assert!(msg.contains("ZZ001") && msg.contains("picky about orig-7"), "{msg}");
    // A known SQLSTATE raised by user code keeps its code.
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION picky(v text) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN IF v = 'orig-7' AND current_setting('zdm_test.strict', true) = 'on' THEN
             RAISE EXCEPTION 'no' USING ERRCODE = 'data_exception'; END IF; RETURN true; END $$;",
    )
    .unwrap();
    expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "22000");
}

/// The owner role renamed while its job runs: the job fails saying so,
/// instead of running as whoever holds that OID or name.
#[test]
fn renamed_owner_role_fails_the_job() {
    let cluster = Cluster::start("rolerename", &[]);
    let mut su = cluster.create_db("rr");
    su.batch_execute("CREATE ROLE app LOGIN; GRANT CREATE ON SCHEMA public TO app;").unwrap();
    let mut app = cluster.connect_as("rr", "app");
    make_table(&mut app, "t", 200_000);
    let id: i64 = app.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    app.execute("SELECT zdm.set_options($1, batch_size => 500, pause_ms => 200, target_batch_ms => 0)", &[&id]).unwrap();
    wait_for("progress", Duration::from_secs(30), || (status_row(&mut su, id).2 > 0).then_some(()));
    drop(app);
    su.batch_execute("ALTER ROLE app RENAME TO app2").unwrap();
    let msg = expect_err(&mut su, &format!("SELECT zdm.wait({id}, '1 minute')"), "55000");
    assert!(msg.contains("renamed"), "{msg}");
}

/// zdm.database is honoured on reload: the launcher reconnects to the new
/// database and resumes its jobs there.
#[test]
fn launcher_follows_zdm_database_on_reload() {
    let cluster = Cluster::start("sighup", &[]);
    let mut c = cluster.create_db("other_db");
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("ALTER SYSTEM SET zdm.database = 'other_db'").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("launcher in other_db", Duration::from_secs(60), || {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'zdm launcher' AND datname = 'other_db'", &[])
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    });
}

/// A migration tool that holds a control call open in its transaction (the
/// job row stays locked) does not fail the job: the worker waits for it.
#[test]
fn control_call_held_open_does_not_fail_the_job() {
    let cluster = Cluster::start("heldopen", &[]);
    let mut c = cluster.create_db("ho");
    make_table(&mut c, "t", 100_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 500, pause_ms => 20, target_batch_ms => 0)", &[&id]).unwrap();
    wait_for("progress", Duration::from_secs(30), || (status_row(&mut c, id).2 > 0).then_some(()));
    let mut tool = cluster.connect("ho");
    tool.batch_execute(&format!("BEGIN; SELECT zdm.set_options({id}, pause_ms => 0)")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    tool.batch_execute("COMMIT").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
}
