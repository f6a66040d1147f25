//! Host-side: constraints without long locks — validate_not_null, add_check,
//! add_foreign_key — with real concurrent sessions, lock sampling, a killed
//! worker and a lock blocker.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The table's constraints but NOT NULLs (which PostgreSQL 18 lists too).
fn constraint_names(c: &mut postgres::Client, table: &str) -> Vec<String> {
    c.query(&format!("SELECT conname::text FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype <> 'n' ORDER BY 1"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn constraint_worker_activity(c: &mut postgres::Client) -> Option<String> {
    c.query_opt("SELECT query FROM pg_stat_activity WHERE backend_type = 'zdm constraint' LIMIT 1", &[]).unwrap().map(|r| r.get(0))
}

/// A wide table of `rows` rows, column v filled (no NULLs).
fn wide_table(c: &mut postgres::Client, rows: i64) {
    c.batch_execute(&format!(
        "CREATE TABLE parent (id int PRIMARY KEY);
         INSERT INTO parent SELECT generate_series(1, 100);
         CREATE TABLE big (id bigint PRIMARY KEY, v text, ref int, pad text);
         INSERT INTO big SELECT g, 'v' || g, g % 100 + 1, repeat('p', 300) FROM generate_series(1, {rows}) g;"
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE big").unwrap();
}

/// While VALIDATE scans 1M rows, another session's INSERTs and UPDATEs
/// commit, and no sample of pg_locks shows an AccessExclusiveLock on the table.
#[test]
fn validate_not_null_lets_writers_through_during_the_scan() {
    let cluster = Cluster::start("nn1", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("nn1");
    wide_table(&mut c, 1_000_000);

    let mut caller = cluster.connect("nn1");
    let call = std::thread::spawn(move || {
        let id: i64 = caller.query_one("SELECT zdm.validate_not_null('big', 'v')", &[]).unwrap().get(0);
        (id, Instant::now())
    });
    // the writer: short transactions through the whole call
    let stop = Arc::new(AtomicBool::new(false));
    let commits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let writer = {
        let (mut w, stop, commits) = (cluster.connect("nn1"), stop.clone(), commits.clone());
        std::thread::spawn(move || {
            let mut i: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                w.execute("INSERT INTO big (id, v) VALUES ($1, 'new')", &[&(2_000_000 + i)]).unwrap();
                w.execute("UPDATE big SET v = 'upd' || $1 WHERE id = $1", &[&(i % 1000 + 1)]).unwrap();
                commits.lock().unwrap().push(Instant::now());
            }
        })
    };
    // sample locks while the worker is in its VALIDATE step
    let (mut samples, mut exclusive, mut validate_start) = (0, 0, None);
    while !call.is_finished() {
        let r = c
            .query_one(
                "SELECT (SELECT query FROM pg_stat_activity WHERE backend_type = 'zdm constraint' LIMIT 1), \
                        (SELECT count(*) FROM pg_locks WHERE relation = 'big'::regclass AND mode = 'AccessExclusiveLock')",
                &[],
            )
            .unwrap();
        let activity: Option<String> = r.get(0);
        if activity.unwrap_or_default().contains("validate constraint") {
            validate_start.get_or_insert(Instant::now());
            samples += 1;
            exclusive += r.get::<_, i64>(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (id, returned) = call.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let validate_start = validate_start.expect("the VALIDATE step was observed");
    println!("{samples} lock samples during VALIDATE");
    assert!(samples >= 3, "VALIDATE should take several samples, got {samples}");
    assert_eq!(exclusive, 0, "AccessExclusiveLock seen during the VALIDATE scan");
    let during = commits.lock().unwrap().iter().filter(|t| **t > validate_start && **t < returned).count();
    assert!(during > 0, "the writer committed nothing while VALIDATE ran");
    // the end state
    let not_null: bool = c.query_one("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'v'", &[]).unwrap().get(0);
    assert!(not_null);
    assert_eq!(constraint_names(&mut c, "big"), vec!["big_pkey".to_string()], "no helper check left");
    let steps: Vec<String> = c.query("SELECT step FROM zdm.events WHERE migration_id = $1 ORDER BY id", &[&id]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(steps, vec!["add constraint NOT VALID", "validate constraint", "finish"]);
}

#[test]
fn nulls_present_fail_with_their_count_and_leave_nothing() {
    let cluster = Cluster::start("nn2", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("nn2");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text CHECK (v <> '')); INSERT INTO t SELECT g, CASE WHEN g % 100 = 0 THEN NULL ELSE 'x' END FROM generate_series(1, 10000) g;").unwrap();
    let before = constraint_names(&mut c, "t");
    let err = c.query_one("SELECT zdm.validate_not_null('t', 'v')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23502");
    assert!(db.message().contains("100 NULL"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("Backfill"));
    assert_eq!(constraint_names(&mut c, "t"), before, "pg_constraint unchanged");
    let (phase, state): (String, String) = {
        let r = c.query_one("SELECT phase, job_state FROM zdm.status ORDER BY id DESC LIMIT 1", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((phase.as_str(), state.as_str()), ("aborted", "failed"));
    // fix the data, call again: done
    c.batch_execute("UPDATE t SET v = 'filled' WHERE v IS NULL").unwrap();
    c.query_one("SELECT zdm.validate_not_null('t', 'v')", &[]).unwrap();
    assert_eq!(constraint_names(&mut c, "t"), before);
    let not_null: bool = c.query_one("SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'v'", &[]).unwrap().get(0);
    assert!(not_null);
    if pg_major() >= 18 {
        // NOT NULL is a constraint itself: added NOT VALID, validated, and
        // named as PostgreSQL names one.
        let (name, valid): (String, bool) = {
            let r = c
                .query_one("SELECT conname::text, convalidated FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'n' AND conkey = '{2}'", &[])
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((name.as_str(), valid), ("t_v_not_null", true));
    }
}

/// The worker killed in the middle of VALIDATE: the call reports the
/// interruption, the migration shows the NOT VALID constraint it left, and
/// calling again finishes from there with no orphaned constraint — for
/// validate_not_null, add_check and add_foreign_key.
#[test]
fn killed_during_validate_then_called_again_completes() {
    let cluster = Cluster::start("nn3", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("nn3");
    wide_table(&mut c, 1_000_000);
    let calls = [
        "SELECT zdm.validate_not_null('big', 'v')",
        "SELECT zdm.add_check('big', 'v_not_empty', $$v <> ''$$)",
        "SELECT zdm.add_foreign_key('big', ARRAY['ref'], 'parent', ARRAY['id'])",
    ];
    for sql in calls {
        let mut caller = cluster.connect("nn3");
        let call = std::thread::spawn(move || caller.query_one(sql, &[]).map(|r| r.get::<_, i64>(0)));
        let pid: i32 = wait_for("the worker in VALIDATE", Duration::from_secs(60), || {
            c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'zdm constraint' AND query LIKE '%validate constraint%'", &[])
                .unwrap()
                .map(|r| r.get(0))
        });
        c.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
        let err = call.join().unwrap().unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "55000", "{sql}: {}", db.message());
        assert!(db.message().contains("interrupted"), "{}", db.message());
        let (id, constraint, phase): (i64, String, String) = {
            let r = c.query_one("SELECT id, \"constraint\", phase FROM zdm.status ORDER BY id DESC LIMIT 1", &[]).unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert_eq!(phase, "expanded", "{sql}");
        let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conname = $1", &[&constraint]).unwrap().get(0);
        assert!(!valid, "status names the NOT VALID constraint that is there");
        assert!(constraint_worker_activity(&mut c).is_none());
        // again: resumes the same migration and finishes
        let again: i64 = c.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(again, id, "{sql} resumes migration {id}");
    }
    assert_eq!(
        constraint_names(&mut c, "big"),
        vec!["big_pkey".to_string(), "big_ref_fkey".to_string(), "v_not_empty".to_string()],
        "no helper check left; the check and the foreign key are in place"
    );
    let invalid: i64 = c.query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'big'::regclass AND NOT convalidated", &[]).unwrap().get(0);
    assert_eq!(invalid, 0);
    let not_null: bool = c.query_one("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'v'", &[]).unwrap().get(0);
    assert!(not_null);
}

#[test]
fn add_check_and_add_foreign_key() {
    let cluster = Cluster::start("ck", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("ck");
    c.batch_execute(
        "CREATE TABLE \"Parent Table\" (id int PRIMARY KEY);
         INSERT INTO \"Parent Table\" SELECT generate_series(1, 100);
         CREATE TABLE child (id int PRIMARY KEY, \"parent id\" int, qty int);
         INSERT INTO child SELECT g, g % 100 + 1, g FROM generate_series(1, 50000) g;
         INSERT INTO child VALUES (50001, NULL, 1);",
    )
    .unwrap();
    // a violating row → 23514 with the count, nothing added
    c.batch_execute("UPDATE child SET qty = -1 WHERE id IN (7, 8, 9)").unwrap();
    let err = c.query_one("SELECT zdm.add_check('child', 'qty_positive', 'qty > 0')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23514");
    assert!(db.message().contains("3 row(s)"), "{}", db.message());
    assert_eq!(constraint_names(&mut c, "child"), vec!["child_pkey".to_string()]);
    c.batch_execute("UPDATE child SET qty = 1 WHERE qty < 0").unwrap();
    c.query_one("SELECT zdm.add_check('child', 'qty_positive', 'qty > 0')", &[]).unwrap();
    let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conname = 'qty_positive'", &[]).unwrap().get(0);
    assert!(valid);

    // FK with an orphan → 23503 with the count (rows with a NULL key are fine), nothing added
    c.batch_execute("INSERT INTO child VALUES (60000, 999, 1), (60001, 998, 1)").unwrap();
    let err = c
        .query_one("SELECT zdm.add_foreign_key('child', ARRAY['parent id'], '\"Parent Table\"', ARRAY['id'], on_delete => 'cascade')", &[])
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23503");
    assert!(db.message().contains("2 row(s)"), "{}", db.message());
    assert_eq!(constraint_names(&mut c, "child"), vec!["child_pkey".to_string(), "qty_positive".to_string()]);
    c.batch_execute("DELETE FROM child WHERE id >= 60000").unwrap();
    c.query_one("SELECT zdm.add_foreign_key('child', ARRAY['parent id'], '\"Parent Table\"', ARRAY['id'], on_delete => 'cascade')", &[]).unwrap();
    let def: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'child_parent id_fkey'", &[]).unwrap().get(0);
    assert_eq!(def, "FOREIGN KEY (\"parent id\") REFERENCES \"Parent Table\"(id) ON DELETE CASCADE");
    let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conname = 'child_parent id_fkey'", &[]).unwrap().get(0);
    assert!(valid);

    // inside a transaction block the steps run after commit; zdm.wait follows them
    let mut tx = c.transaction().unwrap();
    let id: i64 = tx.query_one("SELECT zdm.add_check('child', 'qty_small', 'qty < 1000000')", &[]).unwrap().get(0);
    tx.commit().unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conname = 'qty_small'", &[]).unwrap().get(0);
    assert!(valid);
}

/// A long transaction holds a lock: each attempt of the brief step waits at
/// most zdm.lock_timeout, readers are not queued behind it for longer, and
/// the step succeeds once the blocker ends.
#[test]
fn brief_steps_wait_politely_behind_a_long_transaction() {
    let cluster = Cluster::start("nn4", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("nn4");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10000) g;").unwrap();
    let mut blocker = cluster.connect("nn4");
    blocker.batch_execute("BEGIN; SELECT count(*) FROM t;").unwrap();
    let mut caller = cluster.connect("nn4");
    let call = std::thread::spawn(move || {
        caller.batch_execute("SET zdm.lock_timeout = '100ms'; SET zdm.lock_retries = 100").unwrap();
        caller.query_one("SELECT zdm.validate_not_null('t', 'v')", &[]).map(|r| r.get::<_, i64>(0))
    });
    let mut reader = cluster.connect("nn4");
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let t = Instant::now();
        reader.query_one("SELECT count(*) FROM t", &[]).unwrap();
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!call.is_finished(), "the step must wait for the blocker");
    blocker.batch_execute("COMMIT").unwrap();
    let id = call.join().unwrap().unwrap();
    assert!(worst < Duration::from_secs(1), "a reader waited {worst:?}");
    let attempts: i32 = c.query_one("SELECT lock_attempts FROM zdm.events WHERE migration_id = $1 AND step = 'add constraint NOT VALID'", &[&id]).unwrap().get(0);
    assert!(attempts > 1, "attempts = {attempts}");
    let not_null: bool = c.query_one("SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'v'", &[]).unwrap().get(0);
    assert!(not_null);
}

/// One gate and one lock policy for every kind: a constraint job and an
/// index job queued while zdm.pause_all is on run no step until it is off
/// (as a backfill waits), and every job — constraint, index, rename — takes
/// the caller's zdm.lock_timeout / zdm.lock_retries when it is queued.
#[test]
fn every_kind_passes_the_same_gate_and_takes_the_callers_lock_policy() {
    let cluster = Cluster::start("gate", &[]);
    let mut c = cluster.create_db("gate");
    // Two tables: a VALIDATE and a concurrent build on one table would wait
    // for each other's SHARE UPDATE EXCLUSIVE under this test's short lock
    // timeout.
    c.batch_execute(
        "CREATE TABLE g (id int PRIMARY KEY, v int, x text); INSERT INTO g SELECT i, i, 'x' || i FROM generate_series(1, 1000) i;
         CREATE TABLE h (id int PRIMARY KEY, v int); INSERT INTO h SELECT i, i FROM generate_series(1, 1000) i;",
    )
    .unwrap();
    c.batch_execute("ALTER SYSTEM SET zdm.pause_all = on").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.batch_execute(
        "BEGIN; SET LOCAL zdm.lock_timeout = '250ms'; SET LOCAL zdm.lock_retries = 3;
         SELECT zdm.add_check('g', 'v_positive', 'v > 0');
         SELECT zdm.create_index('CREATE INDEX h_v ON h (v)');
         COMMIT;",
    )
    .unwrap();
    let ids: Vec<i64> = c.query("SELECT id FROM zdm.migrations ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let (timeout, retries): (i32, i32) = {
            let r = c.query_one("SELECT lock_timeout_ms, lock_retries FROM zdm.jobs WHERE migration_id = $1", &[id]).unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((timeout, retries), (250, 3), "migration {id} took the caller's lock settings");
        wait_for("the pause_all reason", Duration::from_secs(30), || {
            let reason: Option<String> = c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[id]).unwrap().get(0);
            reason.filter(|r| r.contains("pause_all"))
        });
    }
    std::thread::sleep(Duration::from_millis(1500));
    let steps: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_constraint WHERE conname = 'v_positive') + (SELECT count(*) FROM pg_class WHERE relname = 'h_v')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(steps, 0, "no step ran while zdm.pause_all is on");
    c.batch_execute("ALTER SYSTEM RESET zdm.pause_all").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    for id in &ids {
        c.query_one("SELECT zdm.wait($1, '2 minutes')", &[id]).unwrap();
    }
    let done: (bool, bool) = {
        let r = c
            .query_one(
                "SELECT (SELECT convalidated FROM pg_constraint WHERE conname = 'v_positive'),
                        (SELECT indisvalid FROM pg_index WHERE indexrelid = 'h_v'::regclass)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(done, (true, true), "the check is validated and the index valid once the gate opened");

    // A backfill job takes the settings of the call that queued it.
    c.batch_execute("SET zdm.lock_timeout = '400ms'").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('g', 'x', 'y')", &[]).unwrap().get(0);
    let timeout: i32 = c.query_one("SELECT lock_timeout_ms FROM zdm.jobs WHERE migration_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(timeout, 400);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
}

/// A CHECK function that sleeps 10 ms a row while table `slow_flag` has a row.
const SLOW_CHECK: &str = "CREATE TABLE slow_flag (on_ boolean);
     CREATE FUNCTION slow_ok(x text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS
       $$ BEGIN IF EXISTS (SELECT FROM public.slow_flag) THEN PERFORM pg_sleep(0.01); END IF; RETURN x IS NOT NULL; END $$;";

/// `zdm.abort` while the job's worker validates (for ~20 minutes): abort
/// stops the worker first — a constraint's VALIDATE holds the migration's
/// row, a rename's validation of its carried check a lock that abort's
/// ACCESS EXCLUSIVE waits for — then goes through, leaving nothing behind.
#[test]
fn abort_during_a_long_validation_stops_the_worker() {
    let cluster = Cluster::start("nn7", &[]);
    let mut c = cluster.create_db("nn7");
    c.batch_execute(SLOW_CHECK).unwrap();
    c.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, a text, CONSTRAINT a_ok CHECK (slow_ok(a)));
         INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 100000) g;
         INSERT INTO slow_flag VALUES (true);",
    )
    .unwrap();
    let validating = |c: &mut postgres::Client| {
        c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'zdm %' AND query ILIKE '%validat%'", &[])
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    c.batch_execute("SET statement_timeout = '60s'").unwrap();
    // A constraint migration: its caller waits for it, and gets the abort.
    let mut caller = cluster.connect("nn7");
    let call = std::thread::spawn(move || caller.query_one("SELECT zdm.add_check('s', 'a_slow', 'slow_ok(a)')", &[]).map(|_| ()));
    wait_for("the constraint's VALIDATE", Duration::from_secs(60), || validating(&mut c));
    let id: i64 = c.query_one("SELECT max(id) FROM zdm.migrations", &[]).unwrap().get(0);
    c.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
    assert!(call.join().unwrap().is_err(), "the caller hears of the abort");
    assert_eq!(constraint_names(&mut c, "s"), vec!["a_ok".to_string(), "s_pkey".to_string()]);
    // A rename: backfilled by hand while the check is fast, then its worker
    // builds the carried index and validates the carried copy of a_ok.
    c.batch_execute("DELETE FROM slow_flag; CREATE INDEX ON s (a)").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('s', 'a', 'b', background => false)", &[]).unwrap().get(0);
    while c.query_one("SELECT zdm.backfill_batch($1, 10000)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    c.batch_execute("INSERT INTO slow_flag VALUES (true)").unwrap();
    c.execute("SELECT zdm.start_backfill($1)", &[&id]).unwrap();
    wait_for("the rename's validation of its carried check", Duration::from_secs(60), || validating(&mut c));
    c.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT phase FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(phase, "aborted");
    let cols: i64 = c.query_one("SELECT count(*) FROM pg_attribute WHERE attrelid = 's'::regclass AND attname = 'b'", &[]).unwrap().get(0);
    assert_eq!(cols, 0);
    assert_eq!(constraint_names(&mut c, "s"), vec!["a_ok".to_string(), "s_pkey".to_string()]);
    wait_for("no zdm worker left", Duration::from_secs(30), || validating(&mut c).is_none().then_some(()));
}

/// add_foreign_key needs what ALTER TABLE … ADD FOREIGN KEY needs of the
/// table's owner — REFERENCES on the referenced columns, no system catalog —
/// and refuses at once (42501) otherwise, before a worker locks anything; an
/// owner with REFERENCES alone (no UPDATE, which LOCK TABLE would want) gets
/// its key, the worker locking the referenced table as ALTER TABLE does.
#[test]
fn a_foreign_key_needs_references_on_the_referenced_table() {
    let cluster = Cluster::start("fkpriv", &[]);
    let mut c = cluster.create_db("fp");
    c.batch_execute(
        "CREATE ROLE app LOGIN;
         GRANT CREATE ON SCHEMA public TO app;
         CREATE TABLE \"Secret\" (id int PRIMARY KEY);
         INSERT INTO \"Secret\" SELECT g FROM generate_series(1, 100) g;",
    )
    .unwrap();
    let mut app = cluster.connect_as("fp", "app");
    app.batch_execute("CREATE TABLE mine (id int PRIMARY KEY, ref int); INSERT INTO mine SELECT g, g FROM generate_series(1, 100) g;").unwrap();
    let msg = expect_err(&mut app, "SELECT zdm.add_foreign_key('mine', ARRAY['ref'], '\"Secret\"', ARRAY['id'])", "42501");
    assert!(msg.contains("\"Secret\"") && msg.contains("app"), "{msg}");
    expect_err(&mut app, "SELECT zdm.add_foreign_key('mine', ARRAY['ref'], 'pg_catalog.pg_class', ARRAY['oid'])", "42501");
    let started: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(started, 0, "nothing started");
    c.batch_execute("GRANT REFERENCES (id) ON \"Secret\" TO app").unwrap();
    let id: i64 = app.query_one("SELECT zdm.add_foreign_key('mine', ARRAY['ref'], '\"Secret\"', ARRAY['id'])", &[]).unwrap().get(0);
    let phase: String = app.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conrelid = 'mine'::regclass AND contype = 'f'", &[]).unwrap().get(0);
    assert!(valid);
}
