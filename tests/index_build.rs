//! Host side: concurrent index builds requested from inside a transaction
//! (`zdm.create_index`, `zdm.drop_index`), run by a worker at top level after
//! commit — the machinery a rename uses to carry indexes over (issue 9).

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn index_valid(c: &mut postgres::Client, name: &str) -> Option<bool> {
    c.query_opt("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1", &[&name])
        .unwrap()
        .map(|r| r.get(0))
}

/// Inside BEGIN … COMMIT the build starts after commit; inside BEGIN …
/// ROLLBACK nothing happens; bad definitions are refused up front and
/// record nothing; drop_index drops concurrently.
#[test]
fn create_index_from_a_transaction_builds_after_commit() {
    let cluster = Cluster::start("cidx", &[]);
    let mut c = cluster.create_db("ci");
    make_table(&mut c, "t", 50_000);
    let mut tx = c.transaction().unwrap();
    let id: i64 = tx.query_one("SELECT zdm.create_index('CREATE INDEX t_a_idx ON t (lower(a))')", &[]).unwrap().get(0);
    let inside: i64 = tx.query_one("SELECT count(*) FROM pg_class WHERE relname = 't_a_idx'", &[]).unwrap().get(0);
    assert_eq!(inside, 0, "nothing is built inside the transaction");
    tx.commit().unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    assert_eq!(index_valid(&mut c, "t_a_idx"), Some(true));
    let def: String = c.query_one("SELECT pg_get_indexdef('t_a_idx'::regclass)", &[]).unwrap().get(0);
    assert_eq!(def, "CREATE INDEX t_a_idx ON public.t USING btree (lower(a))");

    let rows_before: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT zdm.create_index('CREATE INDEX t_pad_idx ON t (pad)')", &[]).unwrap();
    tx.rollback().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(index_valid(&mut c, "t_pad_idx"), None);
    let rows_after: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(rows_before, rows_after);
    let workers: i64 = c.query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'zdm index'", &[]).unwrap().get(0);
    assert_eq!(workers, 0);

    for (sql, code) in [
        ("SELECT zdm.create_index('DROP TABLE t')", "42601"),
        ("SELECT zdm.create_index('CREATE INDEX x ON t (a); DROP TABLE t')", "42601"),
        ("SELECT zdm.create_index('CREATE INDEX ON t (a)')", "22023"),
        ("SELECT zdm.create_index('CREATE INDEX x ON nope (a)')", "42P01"),
        ("SELECT zdm.create_index('CREATE INDEX x ON t (nope)')", "42703"),
        ("SELECT zdm.create_index('CREATE INDEX x ON t (nosuchfunc(a))')", "42883"),
        ("SELECT zdm.create_index('CREATE INDEX t_a_idx ON t (a)')", "42P07"),
        ("SELECT zdm.drop_index('t')", "42809"),
        ("SELECT zdm.drop_index('t_pkey')", "2BP01"),
    ] {
        match c.batch_execute(sql) {
            Ok(()) => panic!("{sql} was accepted"),
            Err(e) => assert_eq!(e.as_db_error().map(|d| d.code().code()), Some(code), "{sql}: {e}"),
        }
    }
    let rows_after: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(rows_before, rows_after, "refusals record nothing");
    c.batch_execute("CREATE ROLE stranger LOGIN").unwrap();
    let mut stranger = cluster.connect_as("ci", "stranger");
    expect_err(&mut stranger, "SELECT zdm.create_index('CREATE INDEX x ON public.t (a)')", "42501");

    let id: i64 = c.query_one("SELECT zdm.drop_index('t_a_idx')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    assert_eq!(index_valid(&mut c, "t_a_idx"), None);
}

/// A unique build that meets a duplicate fails with 23505 and its reason in
/// zdm.status, and leaves no INVALID index; after fixing the data, the same
/// call builds it. Writers keep writing during a build: no lock that blocks
/// them is ever seen on the table.
#[test]
fn unique_build_failure_leaves_nothing_and_writers_never_wait() {
    let cluster = Cluster::start("uidx", &[]);
    let mut c = cluster.create_db("ui");
    make_table(&mut c, "t", 200_000);
    c.batch_execute("UPDATE t SET a = 'dup' WHERE id IN (10, 20)").unwrap();
    let id: i64 = c.query_one("SELECT zdm.create_index('CREATE UNIQUE INDEX t_a_key ON t (a)')", &[]).unwrap().get(0);
    let msg = expect_err(&mut c, &format!("SELECT zdm.wait({id}, '2 minutes')"), "23505");
    assert!(msg.contains("t_a_key"), "{msg}");
    let (_, state, _, error) = status_row(&mut c, id);
    assert_eq!(state.as_deref(), Some("failed"));
    assert!(error.unwrap_or_default().contains("duplicate"));
    let invalid: i64 = c.query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[]).unwrap().get(0);
    assert_eq!(invalid, 0, "no INVALID index left behind");

    c.batch_execute("UPDATE t SET a = 'orig-20' WHERE id = 20").unwrap();
    // Writers and a lock sampler while the build runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (cluster.connect("ui"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0i64;
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let started = std::time::Instant::now();
                w.execute("UPDATE t SET pad = $1 WHERE id = $2", &[&format!("w{n}"), &(n % 190_000 + 1000)]).unwrap();
                slowest = slowest.max(started.elapsed());
            }
            (n, slowest)
        })
    };
    let id: i64 = c.query_one("SELECT zdm.create_index('CREATE UNIQUE INDEX t_a_key ON t (a)')", &[]).unwrap().get(0);
    let mut sampler = cluster.connect("ui");
    let mut blocking = Vec::new();
    let mut samples = 0;
    loop {
        let phase: String = sampler.query_one("SELECT phase FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
        if phase == "contracted" || phase == "aborted" {
            break;
        }
        samples += 1;
        for r in sampler
            .query(
                "SELECT mode FROM pg_locks WHERE locktype = 'relation' AND relation = 't'::regclass AND granted
                   AND mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')",
                &[],
            )
            .unwrap()
        {
            blocking.push(r.get::<_, String>(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let (writes, slowest) = writer.join().unwrap();
    println!("{samples} lock samples during the build, {writes} writes, slowest {slowest:?}");
    assert!(blocking.is_empty(), "locks that block writers: {blocking:?}");
    assert_eq!(status_row(&mut c, id).0, "contracted");
    assert_eq!(index_valid(&mut c, "t_a_key"), Some(true));
    let (code, _) = sqlstate(c.execute("INSERT INTO t (id, a) VALUES (-1, 'orig-5')", &[]));
    assert_eq!(code, "23505", "the new unique index is enforced");
}
