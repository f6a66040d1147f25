//! Host-side: zdm's DDL never queues behind a long transaction. Each lock
//! attempt waits at most zdm.lock_timeout, then backs off (letting queued
//! readers through) and retries; after zdm.lock_retries it fails with 55P03
//! naming the blocking pid. Once the blocker ends, the step succeeds.

mod common;

use common::*;
use std::time::{Duration, Instant};

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
    let reader_cluster_conn = cluster.connect("l1");
    let reader = std::thread::spawn(move || {
        let mut r = reader_cluster_conn;
        let mut worst = Duration::ZERO;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let t = Instant::now();
            r.query_one("SELECT count(*) FROM t", &[]).unwrap();
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        worst
    });
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
