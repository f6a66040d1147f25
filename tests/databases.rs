//! Host side: every database served (issue 29) — a launcher in each
//! database where zdm is installed, under the supervisor, with
//! `zdm.database` unset: jobs in two databases resumed after a crash; a
//! database created at runtime served once CREATE EXTENSION commits; DROP
//! DATABASE (with and without FORCE), ALTER DATABASE … RENAME / SET
//! TABLESPACE and CREATE DATABASE … TEMPLATE while a job runs there never
//! blocked; zdm.max_workers bounding workers across
//! databases; templates untouched.

mod common;

use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

const EVERY_DATABASE: &str = "zdm.database = ''";

fn slow_rename(c: &mut Client, rows: i64) -> i64 {
    make_table(c, "t", rows);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 1000, pause_ms => 50, target_batch_ms => 0)", &[&id]).unwrap();
    id
}

fn rows_done(c: &mut Client, id: i64) -> i64 {
    c.query_one("SELECT rows_done FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0)
}

fn launchers_in(c: &mut Client, db: &str) -> i64 {
    c.query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'zdm launcher' AND datname = $1", &[&db])
        .unwrap()
        .get(0)
}

/// Wait until `db` has one launcher; on timeout, show zdm's processes and
/// the server log's end.
fn one_launcher(cluster: &Cluster, admin: &mut Client, db: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while launchers_in(admin, db) != 1 {
        if Instant::now() > deadline {
            let procs: Vec<String> = admin
                .query(
                    "SELECT concat_ws(' ', backend_type, datname, pid, state, wait_event) FROM pg_stat_activity WHERE backend_type LIKE 'zdm%'",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            panic!("timed out waiting for {what} in {db}; zdm processes: {procs:?}\n{}", cluster.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Half-done renames in two databases, an immediate restart: both are
/// resumed and finish (before, only `zdm.database`'s were). Template
/// databases get no zdm process, so CREATE DATABASE from template1 works.
#[test]
fn jobs_in_every_database_resume_after_a_crash() {
    let cluster = Cluster::start("everydb", &[EVERY_DATABASE]);
    let mut a = cluster.create_db("shop_a");
    let mut b = cluster.create_db("shop_b");
    let (ia, ib) = (slow_rename(&mut a, 200_000), slow_rename(&mut b, 200_000));
    wait_for("progress in both", Duration::from_secs(60), || (rows_done(&mut a, ia) > 5_000 && rows_done(&mut b, ib) > 5_000).then_some(()));
    drop((a, b));
    cluster.restart_immediate();
    let mut admin = cluster.connect("postgres");
    for (db, id) in [("shop_a", ia), ("shop_b", ib)] {
        let mut c = cluster.connect(db);
        c.execute("SELECT zdm.set_options($1, pause_ms => 0)", &[&id]).unwrap();
        let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
        assert_eq!(phase, "backfilled", "{db}");
        assert_eq!(launchers_in(&mut admin, db), 1, "{db}");
    }
    let on_templates: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname IN ('template0', 'template1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(on_templates, 0);
    admin.batch_execute("CREATE DATABASE from_template").unwrap();
    // A database without zdm keeps no zdm process either.
    wait_for("no launcher where zdm is not installed", Duration::from_secs(30), || {
        (launchers_in(&mut admin, "postgres") == 0 && launchers_in(&mut admin, "from_template") == 0).then_some(())
    });
}

/// CREATE DATABASE + CREATE EXTENSION at runtime: a launcher serves it once
/// the extension's transaction commits, and resumes a killed worker's job.
/// The supervisor terminated: its successor's launcher takes over. DROP
/// EXTENSION: the launcher goes.
#[test]
fn a_database_created_at_runtime_is_served() {
    let cluster = Cluster::start("newdb", &[EVERY_DATABASE]);
    let mut admin = cluster.connect("postgres");
    let mut c = cluster.create_db("late");
    one_launcher(&cluster, &mut admin, "late", "a launcher in the new database");
    let id = slow_rename(&mut c, 100_000);
    let pid = wait_for("worker", Duration::from_secs(30), || worker_pid(&mut c, id));
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    wait_for("the job resumed", Duration::from_secs(30), || worker_pid(&mut c, id).filter(|p| *p != pid));
    // The supervisor terminated: the new one's launcher takes over from the
    // old one's (which leaves), and one launcher serves the database.
    let launcher = |admin: &mut Client| -> Vec<i32> {
        admin
            .query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'zdm launcher' AND datname = 'late'", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let old = launcher(&mut admin);
    admin.batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'zdm supervisor'").unwrap();
    wait_for("the new supervisor's launcher alone", Duration::from_secs(60), || {
        let now = launcher(&mut admin);
        (now.len() == 1 && !old.contains(&now[0])).then_some(())
    });
    c.execute("SELECT zdm.set_options($1, pause_ms => 0)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.batch_execute(&format!("SELECT zdm.abort({id}); DROP EXTENSION zdm CASCADE")).unwrap();
    wait_for("the launcher gone after DROP EXTENSION", Duration::from_secs(30), || (launchers_in(&mut admin, "late") == 0).then_some(()));
}

/// DROP DATABASE (plain, by its owner who is not a superuser, and WITH
/// (FORCE)), ALTER DATABASE … RENAME and SET TABLESPACE, and CREATE
/// DATABASE … TEMPLATE while a job runs there: never blocked by a zdm
/// process (PostgreSQL refuses them while another session is connected);
/// afterwards the jobs go on in the renamed, moved and copied databases —
/// the copy's half-done job too, in the copy.
#[test]
fn drop_and_rename_database_while_a_job_runs() {
    let cluster = Cluster::start("dropdb", &[EVERY_DATABASE, "zdm.max_workers = 8"]);
    let mut admin = cluster.connect("postgres");
    for db in ["gone", "gone_forced", "renamed", "moved", "source"] {
        let mut c = cluster.create_db(db);
        let id = slow_rename(&mut c, 100_000);
        wait_for("a worker", Duration::from_secs(30), || worker_pid(&mut c, id));
        one_launcher(&cluster, &mut admin, db, "a launcher");
    }
    // A database owner who is not a superuser drops their own database
    // while zdm's launcher and a worker run there.
    admin.batch_execute("CREATE ROLE tenant LOGIN CREATEDB; ALTER DATABASE gone OWNER TO tenant").unwrap();
    let mut tenant = cluster.connect_as("postgres", "tenant");
    tenant.batch_execute("DROP DATABASE gone").unwrap();
    admin.batch_execute("DROP DATABASE gone_forced WITH (FORCE)").unwrap();
    admin.batch_execute("ALTER DATABASE renamed RENAME TO renamed_2").unwrap();
    let left: i64 = admin
        .query_one("SELECT count(*) FROM pg_database WHERE datname IN ('gone', 'gone_forced')", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let dir = cluster.tablespace_dir("ts");
    admin.batch_execute(&format!("CREATE TABLESPACE ts LOCATION '{dir}'")).unwrap();
    admin.batch_execute("ALTER DATABASE moved SET TABLESPACE ts").unwrap();
    admin.batch_execute("CREATE DATABASE copy TEMPLATE source").unwrap();
    // The launchers, stopped for the statements, are started again by OID.
    for db in ["renamed_2", "moved", "source", "copy"] {
        one_launcher(&cluster, &mut admin, db, "the launcher back");
        let mut c = cluster.connect(db);
        let id: i64 = c.query_one("SELECT max(id) FROM zdm.migrations", &[]).unwrap().get(0);
        c.execute("SELECT zdm.set_options($1, pause_ms => 0)", &[&id]).unwrap();
        let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
        assert_eq!(phase, "backfilled", "in {db}");
        let behind: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a", &[]).unwrap().get(0);
        assert_eq!(behind, 0, "rows not backfilled in {db}");
        assert_eq!(launchers_in(&mut admin, db), 1);
    }
}

/// zdm.max_workers = 1 across two databases: one job works at a time — the
/// batches of one database's job all end before the other's begin — and
/// both finish.
#[test]
fn max_workers_counts_every_database() {
    let cluster = Cluster::start("maxw", &[EVERY_DATABASE, "zdm.max_workers = 1"]);
    let mut a = cluster.create_db("mw_a");
    let mut b = cluster.create_db("mw_b");
    make_table(&mut a, "t", 60_000);
    make_table(&mut b, "t", 60_000);
    let ia: i64 = a.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let ib: i64 = b.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    a.query_one("SELECT zdm.start_backfill($1, batch_size => 1000, pause_ms => 20)", &[&ia]).unwrap();
    b.query_one("SELECT zdm.start_backfill($1, batch_size => 1000, pause_ms => 20)", &[&ib]).unwrap();
    for (c, id) in [(&mut a, ia), (&mut b, ib)] {
        let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
        assert_eq!(phase, "backfilled");
    }
    let span = |c: &mut Client, id: i64| -> (f64, f64) {
        let r = c
            .query_one(
                "SELECT extract(epoch FROM min(at))::float8 - (array_agg(duration_ms ORDER BY at))[1] / 1000, extract(epoch FROM max(at))::float8 \
                   FROM zdm.batches WHERE migration_id = $1 AND rows > 0",
                &[&id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (sa, ea) = span(&mut a, ia);
    let (sb, eb) = span(&mut b, ib);
    assert!(ea <= sb || eb <= sa, "the two databases' jobs worked at once: a {sa}..{ea}, b {sb}..{eb}");
}
