//! Host-side: background backfill with real workers, the launcher, real
//! concurrent writers, worker kills and a crash restart.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ROWS: i64 = 200_000;

fn rows_done(c: &mut postgres::Client, id: i64) -> i64 {
    status_row(c, id).2
}

/// Backfill of 200k rows by a worker while writers use both columns; after
/// contract, zero mismatches against their ledgers.
#[test]
fn background_backfill_under_concurrent_writers() {
    let cluster = Cluster::start("bg", &[]);
    let mut c = cluster.create_db("bg");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    // Slow it down enough that the writers really overlap the backfill.
    c.execute("SELECT zdm.set_options($1, batch_size => 5000, target_batch_ms => 0, pause_ms => 20)", &[&id]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |column: &str, residue: i64, base: i64| {
        let w = Writer { table: "t".into(), key: "id".into(), column: column.into(), residue, rows: ROWS, insert_base: base, min_writes: 300 };
        let (conn, stop) = (cluster.connect("bg"), stop.clone());
        std::thread::spawn(move || w.run(conn, stop))
    };
    let old_writer = spawn("a", 0, 10 * ROWS);
    let new_writer = spawn("b", 1, 20 * ROWS);
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    stop.store(true, Ordering::SeqCst);
    let mut ledger = old_writer.join().unwrap();
    ledger.extend(new_writer.join().unwrap());
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let wrong = mismatches(&mut c, "t", "id", "b", &ledger);
    println!("{} ledger entries, {wrong} mismatches", ledger.len());
    assert_eq!(wrong, 0);
    let (state, batches): (String, i64) = {
        let r = c.query_one("SELECT j.state, (SELECT count(*) FROM zdm.batches WHERE migration_id = $1) FROM zdm.jobs j WHERE migration_id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state, "completed");
    assert!(batches > 10, "expected many batches, got {batches}");
}

/// pause / resume / cancel / restart, and options changed mid-run showing up
/// in the per-batch history.
#[test]
fn pause_resume_cancel_restart_and_live_options() {
    let cluster = Cluster::start("ctl", &[]);
    let mut c = cluster.create_db("ctl");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.query_one("SELECT zdm.start_backfill($1, batch_size => 1000, pause_ms => 50, target_batch_ms => 0)", &[&id]).unwrap();
    let _ = wait_for("first batches", Duration::from_secs(30), || (rows_done(&mut c, id) >= 3000).then_some(()));
    // the worker is visible
    let pid = worker_pid(&mut c, id).expect("worker in pg_stat_activity");
    assert!(pid > 0);
    // a second start while it runs is refused
    let (code, _) = sqlstate(c.query_one("SELECT zdm.start_backfill($1)", &[&id]));
    assert_eq!(code, "55000");

    // change the batch size live: it shows in the history
    c.execute("SELECT zdm.set_options($1, batch_size => 3000)", &[&id]).unwrap();
    wait_for("batch_size 3000 in history", Duration::from_secs(30), || {
        let n: i64 = c.query_one("SELECT count(*) FROM zdm.batches WHERE migration_id = $1 AND batch_size = 3000", &[&id]).unwrap().get(0);
        (n > 0).then_some(())
    });
    // pause: progress stops
    c.execute("SELECT zdm.pause($1)", &[&id]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let at_pause = rows_done(&mut c, id);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rows_done(&mut c, id), at_pause, "no progress while paused");
    let reason: Option<String> = c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert!(reason.unwrap_or_default().contains("paused"));
    let (code, _) = sqlstate(c.execute("SELECT zdm.pause($1)", &[&id]));
    assert_eq!(code, "55000", "pausing a paused job");
    // resume: progress again
    c.execute("SELECT zdm.resume($1)", &[&id]).unwrap();
    wait_for("progress after resume", Duration::from_secs(30), || (rows_done(&mut c, id) > at_pause).then_some(()));
    // cancel: the worker exits within a batch, the phase stays backfilling
    c.execute("SELECT zdm.cancel($1)", &[&id]).unwrap();
    wait_for("worker exit after cancel", Duration::from_secs(30), || worker_pid(&mut c, id).is_none().then_some(()));
    let (phase, state, at_cancel, _) = status_row(&mut c, id);
    assert_eq!((phase.as_str(), state.as_deref()), ("backfilling", Some("cancelled")));
    let (code, msg) = sqlstate(c.query_one("SELECT zdm.wait($1)", &[&id]));
    assert_eq!(code, "55000", "{msg}");
    // restart: resumes from the cursor and finishes; every row counted once
    c.execute("SELECT zdm.start_backfill($1, pause_ms => 0, batch_size => 20000)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let (_, _, done, _) = status_row(&mut c, id);
    assert!(done > at_cancel);
    assert_eq!(done, ROWS, "each row backfilled exactly once");
    let left: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a", &[]).unwrap().get(0);
    assert_eq!(left, 0);
}

/// The worker killed with pg_terminate_backend mid-run: the launcher resumes
/// it from its cursor; the rows it counts equal the rows that needed work.
#[test]
fn killed_worker_is_resumed_by_the_launcher() {
    let cluster = Cluster::start("kill", &[]);
    let mut c = cluster.create_db("postgres_kill");
    // The launcher watches zdm.database; point it at this database.
    c.batch_execute("ALTER SYSTEM SET zdm.database = 'postgres_kill'").unwrap();
    cluster.pg_ctl(&["restart", "-w", "-m", "fast", "-l", cluster.dir.join("server.log").to_str().unwrap()]);
    let mut c = cluster.connect("postgres_kill");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 2000, target_batch_ms => 0, pause_ms => 30)", &[&id]).unwrap();
    let _ = wait_for("some progress", Duration::from_secs(30), || (rows_done(&mut c, id) >= 10_000).then_some(()));
    let pid = worker_pid(&mut c, id).expect("worker");
    let killed: bool = c.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap().get(0);
    assert!(killed);
    // a new worker (a different process) takes over
    let new_pid = wait_for("a new worker", Duration::from_secs(30), || worker_pid(&mut c, id).filter(|p| *p != pid));
    assert_ne!(new_pid, pid);
    c.execute("SELECT zdm.set_options($1, pause_ms => 0, batch_size => 20000)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    assert_eq!(rows_done(&mut c, id), ROWS, "rows counted = rows that needed a backfill");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(mismatches(&mut c, "t", "id", "b", &Default::default()), 0);
}

/// The worker killed without a launcher: start_backfill restarts it.
#[test]
fn killed_worker_restarted_with_start_backfill() {
    let cluster = Cluster::start("kill2", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("k2");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 2000, target_batch_ms => 0, pause_ms => 30)", &[&id]).unwrap();
    let _ = wait_for("some progress", Duration::from_secs(30), || (rows_done(&mut c, id) >= 10_000).then_some(()));
    let pid = worker_pid(&mut c, id).expect("worker");
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    wait_for("worker gone", Duration::from_secs(30), || worker_pid(&mut c, id).is_none().then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    let state: String = c.query_one("SELECT state FROM zdm.jobs WHERE migration_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(state, "running", "recorded as running, worker gone");
    c.query_one("SELECT zdm.start_backfill($1, pause_ms => 0, batch_size => 20000)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    assert_eq!(rows_done(&mut c, id), ROWS);
}

/// Crash (pg_ctl restart -m immediate) mid-backfill: the launcher resumes the
/// job on its own and it finishes, each row counted once.
#[test]
fn crash_restart_resumes_on_its_own() {
    let cluster = Cluster::start("crash", &[]);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION zdm").unwrap();
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 2000, target_batch_ms => 0, pause_ms => 30)", &[&id]).unwrap();
    let _ = wait_for("some progress", Duration::from_secs(30), || (rows_done(&mut c, id) >= 10_000).then_some(()));
    drop(c);
    cluster.restart_immediate();
    let mut c = cluster.connect("postgres");
    let before = rows_done(&mut c, id);
    assert!(before < ROWS, "the crash should come mid-backfill");
    c.execute("SELECT zdm.set_options($1, pause_ms => 0, batch_size => 20000)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    assert_eq!(rows_done(&mut c, id), ROWS, "each row backfilled exactly once across the crash");
    let left: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a", &[]).unwrap().get(0);
    assert_eq!(left, 0);
}

/// The worker runs as the migration's role: without UPDATE privilege the
/// backfill does not happen, and the reason shows in zdm.status.
#[test]
fn role_without_update_privilege_fails_visibly() {
    let cluster = Cluster::start("priv", &[]);
    let mut admin = cluster.create_db("priv");
    admin.batch_execute("CREATE ROLE app LOGIN; GRANT CREATE ON SCHEMA public TO app;").unwrap();
    let mut app = cluster.connect_as("priv", "app");
    make_table(&mut app, "t", 10_000);
    // The owner gives up its own UPDATE right; superuser would not care.
    app.batch_execute("REVOKE UPDATE ON t FROM app").unwrap();
    let id: i64 = app.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    let (code, msg) = sqlstate(app.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]));
    assert_eq!(code, "55000");
    assert!(msg.contains("permission denied"), "{msg}");
    let (phase, state, done, error) = status_row(&mut app, id);
    assert_eq!(state.as_deref(), Some("failed"));
    assert_ne!(phase, "backfilled");
    assert_eq!(done, 0);
    assert!(error.unwrap_or_default().contains("permission denied for table t"));
    let filled: i64 = admin.query_one("SELECT count(*) FROM t WHERE b IS NOT NULL", &[]).unwrap().get(0);
    assert_eq!(filled, 0, "no row was touched");
}

/// No free worker slot: start_backfill fails with 53000 and a hint;
/// expand_rename still succeeds (the job stays queued). And zdm.wait refuses
/// inside the transaction that queued the job.
#[test]
fn no_worker_slot_and_wait_in_own_transaction() {
    // max_worker_processes = 3: the logical replication launcher, the zdm
    // supervisor and this database's zdm launcher take all three.
    let cluster = Cluster::start("slots", &["max_worker_processes = 3", "zdm.database = 'slots'"]);
    let mut c = cluster.create_db("slots");
    make_table(&mut c, "t", 1000);
    wait_for("launcher", Duration::from_secs(30), || {
        let n: i64 = c.query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'zdm launcher'", &[]).unwrap().get(0);
        (n == 1).then_some(())
    });
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    let state: String = c.query_one("SELECT state FROM zdm.jobs WHERE migration_id = $1", &[&id]).unwrap().get(0);
    assert_eq!(state, "queued");
    let err = c.query_one("SELECT zdm.start_backfill($1)", &[&id]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "53000");
    assert!(db.hint().unwrap_or_default().contains("max_worker_processes"));
    // Rolled back with its subtransaction, a start_backfill queued nothing:
    // the commit goes through.
    c.batch_execute(&format!("BEGIN; SAVEPOINT s; SELECT zdm.start_backfill({id}); ROLLBACK TO s; COMMIT;")).unwrap();

    let mut tx = c.transaction().unwrap();
    tx.batch_execute("CREATE TABLE u (id int PRIMARY KEY, a text)").unwrap();
    let id2: i64 = tx.query_one("SELECT zdm.expand_rename('u', 'a', 'b')", &[]).unwrap().get(0);
    let (code, msg) = sqlstate(tx.query_one("SELECT zdm.wait($1)", &[&id2]));
    assert_eq!(code, "25001", "{msg}");
}

/// zdm.wait in a transaction that holds what the worker needs — the job's
/// row (set_options in the same transaction, a savepoint's too) or a lock
/// that blocks the worker's writes — refuses
/// with 25001 rather than wait for itself; after a plain read it waits and
/// returns, and a migration this transaction finished (abort) is answered.
#[test]
fn wait_refuses_to_wait_for_its_own_transaction() {
    let cluster = Cluster::start("ownwait", &[]);
    let mut c = cluster.create_db("ownwait");
    make_table(&mut c, "t", 20_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    // slow enough to be running throughout (about 200 batches a second apart)
    c.execute(
        "SELECT zdm.start_backfill($1, batch_size => 100, target_batch_ms => 0, pause_ms => 1000, lock_timeout => '20s')",
        &[&id],
    )
    .unwrap();
    for (before, names) in [
        (format!("SELECT zdm.set_options({id}, pause_ms => 900)"), "changed zdm migration"),
        (format!("SAVEPOINT s; SELECT zdm.set_options({id}, pause_ms => 900); RELEASE s"), "changed zdm migration"),
        ("LOCK TABLE t IN SHARE MODE".to_string(), "ShareLock on public.t"),
    ] {
        c.batch_execute(&format!("BEGIN; {before}")).unwrap();
        let (code, msg) = sqlstate(c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]));
        assert_eq!(code, "25001", "{before}: {msg}");
        assert!(msg.contains(names), "{before}: {msg}");
        c.batch_execute("ROLLBACK").unwrap();
    }
    c.execute("SELECT zdm.set_options($1, pause_ms => 0, batch_size => 5000)", &[&id]).unwrap();
    c.batch_execute("BEGIN; SELECT count(*) FROM t").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.batch_execute("COMMIT").unwrap();
    c.batch_execute("CREATE TABLE u (id int PRIMARY KEY, a text)").unwrap();
    let id2: i64 = c.query_one("SELECT zdm.expand_rename('u', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.batch_execute(&format!("BEGIN; SELECT zdm.abort({id2})")).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1)", &[&id2]).unwrap().get(0);
    assert_eq!(phase, "aborted");
    c.batch_execute("COMMIT").unwrap();
}

/// The global kill switch holds every worker; a batch that exceeds its
/// statement_timeout is retried with half the size, a bounded number of
/// times, then the job fails with the reason.
#[test]
fn pause_all_and_statement_timeout_retries() {
    let cluster = Cluster::start("knobs", &[]);
    let mut c = cluster.create_db("knobs");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.batch_execute("ALTER SYSTEM SET zdm.pause_all = on").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.query_one("SELECT zdm.start_backfill($1, batch_size => 2000, pause_ms => 0, target_batch_ms => 0)", &[&id]).unwrap();
    wait_for("the pause_all reason", Duration::from_secs(30), || {
        let reason: Option<String> = c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
        reason.filter(|r| r.contains("pause_all"))
    });
    let held = rows_done(&mut c, id);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rows_done(&mut c, id), held, "no batch while zdm.pause_all is on");
    c.batch_execute("ALTER SYSTEM RESET zdm.pause_all").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");

    make_table(&mut c, "u", ROWS);
    let id2: i64 = c.query_one("SELECT zdm.expand_rename('u', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.query_one(
        "SELECT zdm.start_backfill($1, batch_size => 100000, target_batch_ms => 0, pause_ms => 0, statement_timeout => '1 ms')",
        &[&id2],
    )
    .unwrap();
    let (code, msg) = sqlstate(c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id2]));
    assert_eq!(code, "55000", "{msg}");
    assert!(msg.contains("gave up after 5 attempts") && msg.contains("statement timeout"), "{msg}");
    let size: i32 = c.query_one("SELECT current_batch_size FROM zdm.jobs WHERE migration_id = $1", &[&id2]).unwrap().get(0);
    assert_eq!(size, 100000 / 32, "halved after each of the 5 attempts");
    assert_eq!(rows_done(&mut c, id2), 0, "timed-out batches roll back with their cursor");
}

/// The adaptive throttle: while as many sessions as there are cores keep the
/// CPUs busy, batches wait longer and say why in zdm.batches; once nobody
/// else works, they wait less and say so (on a machine shared with other
/// tests: the most they may take, half of the time).
#[test]
fn adaptive_throttle_follows_the_workload() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cluster = Cluster::start("adaptive", &[]);
    let mut c = cluster.create_db("adaptive");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    // Busy until the throttle has been seen yielding to them.
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..cores)
        .map(|_| {
            let mut s = cluster.connect("adaptive");
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    s.batch_execute("DO $$ BEGIN WHILE clock_timestamp() < now() + interval '500 ms' LOOP END LOOP; END $$").unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    c.query_one("SELECT zdm.start_backfill($1, batch_size => 200, pause_ms => 100, target_batch_ms => 0)", &[&id]).unwrap();
    let yielded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("a batch that waited for the busy workload", Duration::from_secs(60), || {
            c.query_opt(
                "SELECT wait_reason FROM zdm.batches WHERE migration_id = $1 \
                    AND (wait_reason LIKE '%CPU saturated%' OR wait_reason ~ 'workload uses [0-9.]+ of [0-9]+ cores: batches take ([0-9]|[1-3][0-9])% of') LIMIT 1",
                &[&id],
            )
            .unwrap()
            .map(|r| r.get::<_, String>(0))
        })
    }));
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        t.join().unwrap();
    }
    if let Err(e) = yielded {
        std::panic::resume_unwind(e);
    }
    // Nobody else runs statements now (this session only polls, briefly).
    wait_for("a batch that hurried on the idle database", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        c.query_opt(
            "SELECT wait_reason FROM zdm.batches WHERE migration_id = $1 \
                AND (wait_reason LIKE '%database idle%' OR wait_reason LIKE '%batches take 50% of the time%') LIMIT 1",
            &[&id],
        )
        .unwrap()
        .map(|r| r.get::<_, String>(0))
    });
    c.query_one("SELECT zdm.set_options($1, batch_size => 50000, pause_ms => 0)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
}

/// Rows the application rewrote after expand need no backfill, so batches
/// stretch over them; one that runs into rows needing work again updates a
/// few batches' worth (at most 8× the table's average range), not every
/// remaining row in one transaction. Every row ends in sync.
#[test]
fn batches_stay_near_their_size_after_rows_already_done() {
    let cluster = Cluster::start("stretch", &[]);
    let mut c = cluster.create_db("st");
    make_table(&mut c, "t", 100_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    // The first 80%: rewritten by the application (moved to new blocks at
    // the end, synced by the trigger); the old blocks hold dead versions.
    c.batch_execute("UPDATE t SET a = a || '!' WHERE id <= 80000").unwrap();
    let mut most = 0i64;
    loop {
        let rows: i64 = c.query_one("SELECT zdm.backfill_batch($1, 200)", &[&id]).unwrap().get(0);
        if rows == 0 {
            break;
        }
        most = most.max(rows);
    }
    let (left, wrong): (i64, i64) = {
        let r = c.query_one("SELECT count(*) FILTER (WHERE b IS NULL), count(*) FILTER (WHERE b IS DISTINCT FROM a) FROM t", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((left, wrong), (0, 0));
    assert!(most > 0 && most <= 2000, "largest batch {most} rows for batch_size 200");
}

/// The rows a job's batches wrote per second, per worker and all together:
/// a batch starts only once the rows of the one before it fit under the cap,
/// so each worker's batches but its last, over the time from its first
/// batch's start to its last one's (a batch's start: `at`, recorded after
/// its work, less its `duration_ms`). (largest per worker, all workers,
/// largest batch)
fn written_rate(c: &mut postgres::Client, id: i64, filter: &str) -> (f64, f64, i64) {
    let r = c
        .query_one(
            &format!(
                "WITH b AS (SELECT worker_pid, rows, at - duration_ms * interval '1 ms' AS began, \
                                   row_number() OVER (PARTITION BY worker_pid ORDER BY id DESC) AS from_last \
                              FROM zdm.batches WHERE migration_id = $1 AND {filter}), \
                      per AS (SELECT sum(rows) FILTER (WHERE from_last > 1)::float8 AS rows, \
                                     extract(epoch FROM max(began) - min(began))::float8 AS secs FROM b GROUP BY worker_pid) \
                 SELECT (SELECT max(rows / nullif(secs, 0)) FROM per), \
                        (SELECT sum(rows) FROM per) / nullif((SELECT extract(epoch FROM max(began) - min(began))::float8 FROM b), 0), \
                        (SELECT max(rows) FROM b)"
            ),
            &[&id],
        )
        .unwrap();
    (r.get::<_, Option<f64>>(0).unwrap_or(0.0), r.get::<_, Option<f64>>(1).unwrap_or(0.0), r.get::<_, Option<i64>>(2).unwrap_or(0))
}

/// `max_rows_per_second` holds a backfill to that many rows written a
/// second, all workers together, in batches of about a fifth of a second's
/// worth — even where the throttle would run at full speed (an idle
/// database, `pause_ms => 0`); the waits say why; `set_options` removes it
/// live (0), and a negative cap is 22023.
#[test]
fn max_rows_per_second_caps_the_backfill() {
    let cluster = Cluster::start("cap", &[]);
    let mut c = cluster.create_db("cap");
    make_table(&mut c, "t", 40_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    expect_err(&mut c, &format!("SELECT zdm.start_backfill({id}, max_rows_per_second => -1)"), "22023");
    // (target_batch_ms 0: without the cap, batches grow ×1.2 a batch up to 5000 rows)
    c.query_one("SELECT zdm.start_backfill($1, pause_ms => 0, batch_size => 5000, target_batch_ms => 0, max_rows_per_second => 5000)", &[&id])
        .unwrap();
    expect_err(&mut c, &format!("SELECT zdm.set_options({id}, max_rows_per_second => -5)"), "22023");
    // while it waits for the cap, zdm.status says so
    wait_for("the cap as the throttle reason", Duration::from_secs(60), || {
        let why: Option<String> = c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
        why.filter(|w| w.starts_with("max_rows_per_second 5000: next batch in"))
    });
    wait_for("12000 rows under the cap", Duration::from_secs(60), || (rows_done(&mut c, id) >= 12_000).then_some(()));
    let capped_until: i64 = c.query_one("SELECT max(id) FROM zdm.batches WHERE migration_id = $1", &[&id]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, max_rows_per_second => 0)", &[&id]).unwrap();
    let (one, all, largest) = written_rate(&mut c, id, &format!("id <= {capped_until}"));
    println!("capped at 5000 rows/s: {one:.0} rows/s, batches of at most {largest} rows");
    assert!(one > 0.0 && one <= 5000.0 * 1.02 && all <= 5000.0 * 1.02, "{one:.0} rows/s under a cap of 5000");
    // (a batch covers whole pages: its size in rows is approximate)
    assert!(largest <= 1250, "batches of about a fifth of a second's worth (1000 rows), got {largest}");
    let why: String = c
        .query_one(
            "SELECT coalesce(string_agg(DISTINCT regexp_replace(wait_reason, '[0-9]+ ms', 'N ms'), ' | '), '') FROM zdm.batches \
              WHERE migration_id = $1 AND id <= $2",
            &[&id, &capped_until],
        )
        .unwrap()
        .get(0);
    assert!(why.contains("max_rows_per_second 5000: next batch in N ms"), "{why}");
    // the cap removed: batches grow again, the job finishes, every row in sync
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let (cap, grown): (Option<i32>, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT max_rows_per_second FROM zdm.jobs WHERE migration_id = $1), \
                        (SELECT max(rows) FROM zdm.batches WHERE migration_id = $1 AND id > $2::bigint + 1)",
                &[&id, &capped_until],
            )
            .unwrap();
        (r.get(0), r.get::<_, Option<i64>>(1).unwrap_or(0))
    };
    assert_eq!(cap, None);
    assert!(grown > 1250, "batches grow once the cap is gone, got {grown}");
    let wrong: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);

    // Two workers share one cap; update_in_batches takes it too.
    make_table(&mut c, "u", 20_000);
    let id: i64 = c
        .query_one("SELECT zdm.update_in_batches('u', 'pad = upper(pad)', \"where\" => 'pad <> upper(pad)', workers => 2, pause_ms => 0, max_rows_per_second => 4000)", &[])
        .unwrap()
        .get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let (one, all, largest) = written_rate(&mut c, id, "true");
    let workers: i64 = c.query_one("SELECT count(DISTINCT worker_pid) FROM zdm.batches WHERE migration_id = $1", &[&id]).unwrap().get(0);
    println!("2 workers capped at 4000 rows/s: {all:.0} rows/s together, {one:.0} the faster one, batches of at most {largest} rows, {workers} workers");
    assert!(workers >= 2, "the job's two workers shared the cap");
    assert!(one <= 2000.0 * 1.02 && all <= 4000.0 * 1.02, "{all:.0} rows/s together, {one:.0} one worker, under a cap of 4000");
    assert!(largest <= 500, "about a fifth of a second of one worker's share (400 rows), got {largest}");
    let left: i64 = c.query_one("SELECT count(*) FROM u WHERE pad <> upper(pad)", &[]).unwrap().get(0);
    assert_eq!(left, 0);
    // (the WHERE excludes rows done: each row updated once, README "Which rows")
    assert_eq!(status_row(&mut c, id).2, 20_000);
}
