//! Host-side: zdm's DDL never queues behind a long transaction. Each lock
//! attempt waits at most zdm.lock_timeout, then backs off (letting queued
//! readers through) and retries; after zdm.lock_retries it fails with 55P03
//! naming the blocking pid. Once the blocker ends, the step succeeds.
//! In a deadlock with a session, a worker is the one PostgreSQL cancels;
//! tables a step needs together are locked in one attempt (contract and a
//! cascading DELETE).

mod common;

use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// A reader running `sql` every 5 ms for 1.5 s: the longest it waited.
fn reading(mut r: Client, sql: &'static str) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let t = Instant::now();
            r.query_one(sql, &[]).unwrap();
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        worst
    })
}

#[test]
fn expand_gives_up_with_55p03_naming_the_blocker() {
    let cluster = Cluster::start("lock1", &[]);
    let mut c = cluster.create_db("l1");
    make_table(&mut c, "t", 1000);
    // A long transaction that has read the table (holds ACCESS SHARE).
    let mut blocker = cluster.connect("l1");
    blocker.batch_execute("BEGIN; SELECT count(*) FROM t;").unwrap();
    let blocker_pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);

    c.batch_execute("SET zdm.lock_timeout = '100ms'; SET zdm.lock_retries = 3;").unwrap();
    // Meanwhile a reader keeps reading; it must never be stuck behind zdm for long.
    let reader = reading(cluster.connect("l1"), "SELECT count(*) FROM t");
    let err = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55P03", "{}", db.message());
    assert!(db.message().contains(&blocker_pid.to_string()), "message names the blocker: {}", db.message());
    assert!(db.message().contains("4 attempts"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("pg_stat_activity"));
    let worst = reader.join().unwrap();
    // Generous bound: the point is "not queued indefinitely", not a benchmark.
    assert!(worst < Duration::from_secs(1), "a reader waited {worst:?} behind zdm");
    // Nothing was left behind.
    let cols: i64 = c.query_one("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'b'", &[]).unwrap().get(0);
    assert_eq!(cols, 0);
    blocker.batch_execute("COMMIT").unwrap();
}

#[test]
fn expand_and_contract_succeed_once_the_blocker_ends() {
    let cluster = Cluster::start("lock2", &[]);
    let mut c = cluster.create_db("l2");
    make_table(&mut c, "t", 1000);
    let mut blocker = cluster.connect("l2");
    blocker.batch_execute("BEGIN; SELECT count(*) FROM t;").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        blocker.batch_execute("COMMIT").unwrap();
        blocker
    });
    c.batch_execute("SET zdm.lock_timeout = '100ms'; SET zdm.lock_retries = 50;").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let (attempts, waited): (i32, f64) = {
        let r = c.query_one("SELECT lock_attempts, lock_wait_ms FROM zdm.events WHERE migration_id = $1 AND step = 'expand'", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(attempts > 1, "expand should have retried, attempts = {attempts}");
    assert!(waited > 0.0);
    let mut blocker = release.join().unwrap();
    while c.query_one("SELECT zdm.backfill_batch($1, 500)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    // contract behind a blocker too
    blocker.batch_execute("BEGIN; SELECT count(*) FROM t;").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        blocker.batch_execute("COMMIT").unwrap();
    });
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    release.join().unwrap();
    let attempts: i32 = c.query_one("SELECT lock_attempts FROM zdm.events WHERE migration_id = $1 AND step = 'contract'", &[&id]).unwrap().get(0);
    assert!(attempts > 1, "contract should have retried, attempts = {attempts}");
}

/// A worker whose batch is held by a user trigger at row 5 (waiting for an
/// advisory lock the test holds): `t` has rows 1..2000, batches of 1000.
fn held_batch(cluster: &Cluster, db: &str) -> (Client, Client, i64) {
    let mut c = cluster.create_db(db);
    make_table(&mut c, "t", 2000);
    c.batch_execute(
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.id = 5 THEN PERFORM pg_advisory_xact_lock_shared(42); END IF; RETURN NEW; END $$;
         CREATE TRIGGER hold BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION hold();",
    )
    .unwrap();
    let mut holder = cluster.connect(db);
    holder.batch_execute("SELECT pg_advisory_lock(42)").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.execute(
        "SELECT zdm.start_backfill($1, batch_size => 1000, target_batch_ms => 0, pause_ms => 0, lock_timeout => '1 min')",
        &[&id],
    )
    .unwrap();
    wait_for("the worker's batch held at row 5", Duration::from_secs(30), || {
        let pid = worker_pid(&mut c, id)?;
        waiting(&mut c, pid).then_some(())
    });
    (c, holder, id)
}

fn waiting(c: &mut Client, pid: i32) -> bool {
    c.query_one("SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND NOT granted)", &[&pid]).unwrap().get(0)
}

/// A session runs `second` (after `BEGIN; first`, and COMMIT afterwards,
/// when `first` is given), which waits for the held batch; the batch goes on
/// 300 ms after the session began to wait, so that the deadlock closes while
/// the session's own deadlock_timeout still runs — PostgreSQL cancels
/// whichever side checks first. The session's statement must go through.
fn session_goes_through(cluster: &Cluster, db: &str, c: &mut Client, holder: &mut Client, first: Option<&str>, second: &'static str) {
    let mut session = cluster.connect(db);
    if let Some(first) = first {
        session.batch_execute(&format!("BEGIN; {first}")).unwrap();
    }
    let pid: i32 = session.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let h = std::thread::spawn(move || {
        let r = session.batch_execute(second);
        (session, r)
    });
    wait_for("the session waiting for the batch", Duration::from_secs(30), || waiting(c, pid).then_some(()));
    std::thread::sleep(Duration::from_millis(300));
    holder.batch_execute("SELECT pg_advisory_unlock(42)").unwrap();
    let (mut session, r) = h.join().unwrap();
    if let Err(e) = r {
        panic!("{second} lost the deadlock: {e}");
    }
    if first.is_some() {
        session.batch_execute("COMMIT").unwrap();
    }
}

/// The job finishes, every row in sync.
fn backfilled_in_sync(c: &mut Client, id: i64) {
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let out: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a", &[]).unwrap().get(0);
    assert_eq!(out, 0, "rows out of sync");
}

/// In a deadlock between an application's transaction and a batch, zdm
/// loses (its processes check after a tenth of deadlock_timeout): the
/// application's UPDATE goes through, the batch is retried, and every row
/// ends in sync.
#[test]
fn a_deadlock_with_a_batch_cancels_the_batch_not_the_application() {
    let cluster = Cluster::start("lock3", &[]);
    let (mut c, mut holder, id) = held_batch(&cluster, "l3");
    // The application holds row 600 (ahead of the batch) and then wants
    // row 3 (which the batch holds); the batch will want row 600.
    let (first, second) = ("UPDATE t SET a = 'app-600' WHERE id = 600", "UPDATE t SET a = 'app-3' WHERE id = 3");
    session_goes_through(&cluster, "l3", &mut c, &mut holder, Some(first), second);
    backfilled_in_sync(&mut c, id);
    let apps: i64 = c.query_one("SELECT count(*) FROM t WHERE b IN ('app-3', 'app-600')", &[]).unwrap().get(0);
    assert_eq!(apps, 2);
}

/// DROP EXTENSION zdm CASCADE while a batch runs: it waits for the batch
/// (to drop the sync trigger) holding zdm's catalog, which the batch's
/// bookkeeping then wants. The worker loses the deadlock, not the DROP, and
/// the worker and launcher leave.
#[test]
fn drop_extension_during_a_batch_wins_the_deadlock() {
    let cluster = Cluster::start("lock4", &[]);
    let (mut c, mut holder, _) = held_batch(&cluster, "l4");
    session_goes_through(&cluster, "l4", &mut c, &mut holder, None, "DROP EXTENSION zdm CASCADE");
    wait_for("no zdm process left in the database", Duration::from_secs(30), || {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'l4' AND backend_type LIKE 'zdm%'", &[])
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    });
}

/// The deadlock closes on zdm's own bookkeeping after the batch (its history
/// row), as with an upgrade's DDL on zdm's catalog: the worker loses it, the
/// batch rolls back with it and is tried again; the job does not fail.
#[test]
fn a_deadlock_on_zdm_bookkeeping_retries_the_batch() {
    let cluster = Cluster::start("lock5", &[]);
    let (mut c, mut holder, id) = held_batch(&cluster, "l5");
    session_goes_through(&cluster, "l5", &mut c, &mut holder, Some("LOCK TABLE zdm.batches IN EXCLUSIVE MODE"), "LOCK TABLE t IN SHARE MODE");
    backfilled_in_sync(&mut c, id);
}

/// `parent` (1000 rows) and `child` (3000 rows) whose key references it,
/// ON DELETE CASCADE.
fn parent_and_child(cluster: &Cluster, db: &str) -> Client {
    let mut c = cluster.create_db(db);
    c.batch_execute(
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 1000) g;
         CREATE TABLE child (id bigserial PRIMARY KEY, parent_id int REFERENCES parent (id) ON DELETE CASCADE);
         INSERT INTO child (parent_id) SELECT g % 1000 + 1 FROM generate_series(1, 3000) g;",
    )
    .unwrap();
    c
}

/// contract locks the tables whose foreign keys reference the column, then
/// the table, all in one attempt. An application's cascading DELETE locks
/// them the other way round (the table, then the child), here 300 ms after
/// contract began to wait (after zdm's own deadlock check). With the default
/// settings, the DELETE must not wait for contract's lock on the child until
/// its own deadlock check cancels it: contract, holding the child, waits at
/// most half the deadlock_timeout for the table and gives the child back,
/// the DELETE goes through, and contract succeeds once the application
/// commits.
#[test]
fn contract_gives_way_to_a_cascading_delete() {
    let cluster = Cluster::start("lock6", &[]);
    let mut c = parent_and_child(&cluster, "l6");
    // (the worker also builds the primary key's index on the new column)
    let id: i64 = c.query_one("SELECT zdm.expand_rename('parent', 'id', 'parent_key')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    // The application's transaction has written the table (ROW EXCLUSIVE).
    let mut app = cluster.connect("l6");
    app.batch_execute("BEGIN; UPDATE parent SET v = 'app' WHERE id = 1").unwrap();
    let mut contractor = cluster.connect("l6");
    let pid: i32 = contractor.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let h = std::thread::spawn(move || contractor.execute("SELECT zdm.contract($1)", &[&id]).map(|_| ()));
    wait_for("contract waiting for the table", Duration::from_secs(30), || waiting(&mut c, pid).then_some(()));
    std::thread::sleep(Duration::from_millis(300));
    // Then it deletes a parent: the cascade wants the child.
    if let Err(e) = app.batch_execute("DELETE FROM parent WHERE id = 2") {
        panic!("the application's cascading DELETE failed: {e}");
    }
    app.batch_execute("COMMIT").unwrap();
    h.join().unwrap().unwrap();
    let phase: String = c.query_one("SELECT phase FROM zdm.migrations WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let orphans: i64 = c.query_one("SELECT count(*) FROM child WHERE parent_id = 2", &[]).unwrap().get(0);
    assert_eq!(orphans, 0, "the cascade deleted the children");
    let kept: i64 = c.query_one("SELECT count(*) FROM child", &[]).unwrap().get(0);
    assert_eq!(kept, 2997);
}

/// expand of a column with a foreign key locks the referenced table with
/// its own, in one attempt: while an application's transaction holds the
/// referenced table, expand retries without keeping its table locked
/// (readers of it go on), and succeeds once the transaction ends.
#[test]
fn expand_retries_a_busy_referenced_table_without_holding_its_own() {
    let cluster = Cluster::start("lock7", &[]);
    let mut c = parent_and_child(&cluster, "l7");
    // ROW EXCLUSIVE on the referenced table: ADD FOREIGN KEY's SHARE ROW
    // EXCLUSIVE waits for it.
    let mut app = cluster.connect("l7");
    app.batch_execute("BEGIN; UPDATE parent SET v = 'app' WHERE id = 1").unwrap();
    let reader = reading(cluster.connect("l7"), "SELECT count(*) FROM child");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        app.batch_execute("COMMIT").unwrap();
    });
    c.batch_execute("SET zdm.lock_timeout = '100ms'; SET zdm.lock_retries = 50;").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('child', 'parent_id', 'parent', background => false)", &[]).unwrap().get(0);
    release.join().unwrap();
    let attempts: i32 = c.query_one("SELECT lock_attempts FROM zdm.events WHERE migration_id = $1 AND step = 'expand'", &[&id]).unwrap().get(0);
    assert!(attempts > 1, "expand should have retried, attempts = {attempts}");
    let worst = reader.join().unwrap();
    assert!(worst < Duration::from_secs(1), "a reader of the table waited {worst:?} behind zdm");
    let copied: i64 = c
        .query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'child'::regclass AND contype = 'f' AND NOT convalidated", &[])
        .unwrap()
        .get(0);
    assert_eq!(copied, 1, "the key was copied NOT VALID onto the new column");
}
