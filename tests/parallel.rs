//! Host-side: a backfill shared by several workers of one job (`workers =>
//! N`), with real writers, killed helpers and leaders, a crash, a table
//! rewrite and a caller's own batches beside the workers. Exactly-once is
//! checked on the batch history: the committed batches cover every heap
//! block of the scan once, no more, no less (a killed batch rolls back with
//! its history row and its range's cursor).

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ROWS: i64 = 200_000;

/// Keep every batch in zdm.batches, for the coverage check.
const HISTORY: &str = "zdm.batch_history = 1000000";

fn rows_done(c: &mut postgres::Client, id: i64) -> i64 {
    status_row(c, id).2
}

/// Pids of the job's processes (leader and helpers) now.
fn job_pids(c: &mut postgres::Client, id: i64) -> Vec<i32> {
    c.query(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'zdm backfill' \
            AND (application_name = $1 OR application_name LIKE $1 || ' worker %') ORDER BY pid",
        &[&format!("zdm backfill {id}")],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Rows of zdm.backfill_ranges the migration has now.
fn ranges_of(c: &mut postgres::Client, id: i64) -> i64 {
    c.query_one("SELECT count(*) FROM zdm.backfill_ranges WHERE migration_id = $1", &[&id]).unwrap().get(0)
}

fn helper_pids(c: &mut postgres::Client, id: i64) -> Vec<i32> {
    let leader = worker_pid(c, id);
    job_pids(c, id).into_iter().filter(|p| Some(*p) != leader).collect()
}

/// The committed batches' block ranges, sorted, must tile [0, rel_blocks):
/// each block visited exactly once. Returns (batches, distinct worker pids).
fn assert_blocks_covered_once(c: &mut postgres::Client, id: i64) -> (usize, usize) {
    let rel_blocks: i64 = c.query_one("SELECT rel_blocks FROM zdm.migrations WHERE id = $1", &[&id]).unwrap().get(0);
    let batches: Vec<(i64, i64, i32)> = c
        .query(
            "SELECT first_block, blocks, worker_pid FROM zdm.batches WHERE migration_id = $1 AND blocks > 0 ORDER BY first_block",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut next = 0;
    for (first, blocks, _) in &batches {
        assert_eq!(*first, next, "blocks [{next}, {first}) skipped, or visited twice (batches: {batches:?})");
        next = first + blocks;
    }
    assert_eq!(next, rel_blocks, "the batches end at block {next}, the scan at {rel_blocks}");
    let pids: std::collections::HashSet<i32> = batches.iter().map(|b| b.2).collect();
    (batches.len(), pids.len())
}

fn writers(cluster: &Cluster, db: &str, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<HashMap<i64, String>>> {
    [("a", 0, 10 * ROWS), ("b", 1, 20 * ROWS)]
        .into_iter()
        .map(|(column, residue, base)| {
            let w = Writer { table: "t".into(), key: "id".into(), column: column.into(), residue, rows: ROWS, insert_base: base, min_writes: 300 };
            let (conn, stop) = (cluster.connect(db), stop.clone());
            std::thread::spawn(move || w.run(conn, stop))
        })
        .collect()
}

/// Three workers under writers through both columns: every block visited
/// once by the committed batches, at least two processes did batches, 0
/// mismatches after contract, the ranges gone once it is complete.
#[test]
fn parallel_backfill_under_writers_visits_every_block_once() {
    let cluster = Cluster::start("par", &[HISTORY]);
    let mut c = cluster.create_db("par");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.query_one("SELECT zdm.start_backfill($1, workers => 3, batch_size => 2000, target_batch_ms => 0, pause_ms => 20)", &[&id])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let threads = writers(&cluster, "par", &stop);
    let seen = wait_for("three processes on the job", Duration::from_secs(30), || {
        let pids = job_pids(&mut c, id);
        (pids.len() == 3).then_some(pids)
    });
    println!("job processes: {seen:?}");
    // (helpers start with the leader: the split comes with the first batch)
    let ranges = wait_for("the scan split into ranges", Duration::from_secs(30), || {
        let ranges = ranges_of(&mut c, id);
        (ranges >= 3).then_some(ranges)
    });
    let percent: f64 = c.query_one("SELECT percent::float8 FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert!(percent < 99.9, "progress counts the ranges' cursors, not the split ({percent}%)");
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    stop.store(true, Ordering::SeqCst);
    let mut ledger = HashMap::new();
    for t in threads {
        ledger.extend(t.join().unwrap());
    }
    let (batches, pids) = assert_blocks_covered_once(&mut c, id);
    println!("{batches} batches by {pids} processes");
    assert!(pids >= 2, "expected batches from more than one process");
    let left = ranges_of(&mut c, id);
    assert_eq!(left, 0, "ranges are folded into the migration when complete");
    let done = rows_done(&mut c, id);
    assert!(done > 0 && done <= ROWS, "rows counted: {done}");
    wait_for("helpers gone", Duration::from_secs(10), || job_pids(&mut c, id).is_empty().then_some(()));
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let wrong = mismatches(&mut c, "t", "id", "b", &ledger);
    println!("{} ledger entries, {wrong} mismatches", ledger.len());
    assert_eq!(wrong, 0);
}

/// A helper killed mid-range is started again by its leader; the leader
/// killed is replaced by the launcher (its helpers stop and new ones come);
/// then a crash (immediate restart): the job finishes on its own, every
/// block visited once, every row counted once, 0 mismatches.
#[test]
fn killed_helper_killed_leader_and_crash_resume_per_range() {
    let cluster = Cluster::start("parkill", &[HISTORY]);
    let mut c = cluster.connect("postgres"); // zdm.database: the launcher resumes jobs here
    c.batch_execute("CREATE EXTENSION zdm").unwrap();
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.query_one("SELECT zdm.start_backfill($1, workers => 2, batch_size => 1000, target_batch_ms => 0, pause_ms => 30)", &[&id])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let threads = writers(&cluster, "postgres", &stop);

    let helper = wait_for("a helper", Duration::from_secs(30), || helper_pids(&mut c, id).first().copied());
    wait_for("progress", Duration::from_secs(30), || (rows_done(&mut c, id) >= 5_000).then_some(()));
    assert!(c.query_one("SELECT pg_terminate_backend($1)", &[&helper]).unwrap().get::<_, bool>(0));
    let again = wait_for("the helper started again", Duration::from_secs(30), || {
        helper_pids(&mut c, id).into_iter().find(|p| *p != helper)
    });
    println!("helper {helper} killed, {again} took its place");

    let leader = worker_pid(&mut c, id).expect("leader");
    assert!(c.query_one("SELECT pg_terminate_backend($1)", &[&leader]).unwrap().get::<_, bool>(0));
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || worker_pid(&mut c, id).filter(|p| *p != leader));
    wait_for("the old helper gone, a new one", Duration::from_secs(30), || {
        let h = helper_pids(&mut c, id);
        (h.len() == 1 && h[0] != again).then_some(())
    });
    println!("leader {leader} killed, {new_leader} resumed the job");
    stop.store(true, Ordering::SeqCst);
    let mut ledger = HashMap::new();
    for t in threads {
        ledger.extend(t.join().unwrap());
    }

    let before = rows_done(&mut c, id);
    drop(c);
    cluster.restart_immediate();
    let mut c = cluster.connect("postgres");
    let phase: String = c.query_one("SELECT phase FROM zdm.migrations WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilling", "the crash should come mid-backfill ({before} rows done)");
    c.execute("SELECT zdm.set_options($1, pause_ms => 0, batch_size => 10000)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let (batches, pids) = assert_blocks_covered_once(&mut c, id);
    println!("{batches} batches by {pids} processes across two kills and a crash");
    // Rows the writers did not touch were each backfilled by exactly one batch.
    let untouched = ROWS - ledger.keys().filter(|k| **k <= ROWS).count() as i64;
    let done = rows_done(&mut c, id);
    assert!(done >= untouched && done <= ROWS, "rows counted {done}, untouched rows {untouched}");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(mismatches(&mut c, "t", "id", "b", &ledger), 0);
}

/// A table rewrite (VACUUM FULL) mid-way restarts the split scan; a caller's
/// own zdm.backfill_batch loop runs beside the workers; the job shrinks to
/// one worker and grows again; pause sends the helper away and resume brings
/// it back; zdm.max_workers caps the processes whatever `workers` says;
/// cancel stops every process of the job; bad `workers` values are refused
/// with 22023.
#[test]
fn rewrite_manual_batches_resize_and_cancel() {
    let cluster = Cluster::start("parmix", &[HISTORY]);
    let mut c = cluster.create_db("parmix");
    make_table(&mut c, "t", ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    for bad in [0, 33] {
        let msg = expect_err(&mut c, &format!("SELECT zdm.start_backfill({id}, workers => {bad})"), "22023");
        assert!(msg.contains("workers must be between 1 and 32"), "{msg}");
    }
    // Throttled so that the job is still running at the cancel below (a
    // faster trigger once let it finish first).
    c.query_one("SELECT zdm.start_backfill($1, workers => 2, batch_size => 1000, target_batch_ms => 0, pause_ms => 200)", &[&id])
        .unwrap();
    wait_for("two processes", Duration::from_secs(30), || (job_pids(&mut c, id).len() == 2).then_some(()));
    wait_for("progress", Duration::from_secs(30), || (rows_done(&mut c, id) >= 5_000).then_some(()));
    c.batch_execute("VACUUM FULL t").unwrap();
    wait_for("the scan restarted", Duration::from_secs(30), || {
        let n: i64 = c
            .query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step LIKE '%table rewritten%'", &[&id])
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    });
    // One worker, then two again.
    c.execute("SELECT zdm.set_options($1, workers => 1)", &[&id]).unwrap();
    wait_for("the helper stops", Duration::from_secs(30), || (job_pids(&mut c, id).len() == 1).then_some(()));
    c.execute("SELECT zdm.set_options($1, workers => 2)", &[&id]).unwrap();
    wait_for("a helper again", Duration::from_secs(30), || (job_pids(&mut c, id).len() == 2).then_some(()));
    // The caller's own loop beside the workers, each call its own transaction.
    let mut manual = 0;
    for _ in 0..20 {
        let n: i64 = c.query_one("SELECT zdm.backfill_batch($1, 500)", &[&id]).unwrap().get(0);
        manual += n;
        if n == 0 {
            break;
        }
    }
    println!("{manual} rows by the caller's own batches");
    assert!(manual > 0);
    // Paused: the helper gives its slot back; resumed: it comes back.
    c.execute("SELECT zdm.pause($1)", &[&id]).unwrap();
    wait_for("only the leader while paused", Duration::from_secs(30), || (job_pids(&mut c, id).len() == 1).then_some(()));
    c.execute("SELECT zdm.resume($1)", &[&id]).unwrap();
    wait_for("the helper after resume", Duration::from_secs(30), || (job_pids(&mut c, id).len() == 2).then_some(()));
    // More workers than zdm.max_workers (4 here) allows: it runs 4 processes, no more.
    c.execute("SELECT zdm.set_options($1, workers => 8, pause_ms => 2000)", &[&id]).unwrap();
    wait_for("4 processes", Duration::from_secs(30), || (job_pids(&mut c, id).len() == 4).then_some(()));
    for _ in 0..10 {
        let n = job_pids(&mut c, id).len();
        assert!(n <= 4, "zdm.max_workers caps the job's processes, found {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("going on with fewer"), "the server log says why");
    c.execute("SELECT zdm.cancel($1)", &[&id]).unwrap();
    wait_for("every process of the job gone", Duration::from_secs(30), || job_pids(&mut c, id).is_empty().then_some(()));
    let before = rows_done(&mut c, id);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows_done(&mut c, id), before, "nothing ran after cancel");
    // Finish by hand: ranges left by the cancelled job are taken one by one.
    while c.query_one("SELECT zdm.backfill_batch($1, 5000)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    let left = ranges_of(&mut c, id);
    assert_eq!(left, 0);
    assert_eq!(status_row(&mut c, id).0, "backfilled");
    let wrong: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
}
