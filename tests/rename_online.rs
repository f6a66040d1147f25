//! Host-side: the rename loop under real concurrent sessions.
//!
//! Session 1 commits expand_rename on a 100k-row table; session 2 writes
//! through the OLD column while session 3 writes through the NEW one; session
//! 4 loops backfill_batch to 0; then contract. Every value written is kept in
//! a ledger, and the test counts rows whose surviving column differs from the
//! value last written (or the original value for rows nobody touched).

mod common;

use common::{mismatches, sqlstate, Cluster, Writer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ROWS: i64 = 100_000;

struct Case {
    db: &'static str,
    /// qualified, quoted table name
    table: &'static str,
    /// quoted key column
    key: &'static str,
    old: &'static str,
    new: &'static str,
    create: &'static str,
    not_null: bool,
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn run_case(cluster: &Cluster, case: Case) {
    let mut setup = cluster.create_db(case.db);
    setup.batch_execute(case.create).unwrap();
    setup
        .batch_execute(&format!(
            "INSERT INTO {t} ({k}, {old}) SELECT g, 'orig-' || g FROM generate_series(1, {ROWS}) g; ANALYZE {t};",
            t = case.table,
            k = case.key,
            old = q(case.old)
        ))
        .unwrap();

    // Session 1: expand, committed.
    let id: i64 = setup
        .query_one("SELECT zdm.expand_rename($1::text::regclass, $2, $3, background => false)", &[&case.table, &case.old, &case.new])
        .unwrap()
        .get(0);

    let done = Arc::new(AtomicBool::new(false));
    let spawn_writer = |column: &'static str, residue: i64, base: i64| {
        let w = Writer {
            table: case.table.into(),
            key: case.key.into(),
            column: column.into(),
            residue,
            rows: ROWS,
            insert_base: base,
            min_writes: 600,
        };
        let (c, done) = (cluster.connect(case.db), done.clone());
        std::thread::spawn(move || w.run(c, done))
    };
    // Sessions 2 and 3: old-version and new-version application code.
    let old_writer = spawn_writer(case.old, 0, 10 * ROWS);
    let new_writer = spawn_writer(case.new, 1, 20 * ROWS);

    // Session 4: backfill in small batches until it reports completion.
    let mut backfiller = cluster.connect(case.db);
    let mut batches = 0;
    loop {
        let n: i64 = backfiller.query_one("SELECT zdm.backfill_batch($1, 500)", &[&id]).unwrap().get(0);
        batches += 1;
        if n == 0 {
            break;
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut ledger = old_writer.join().unwrap();
    ledger.extend(new_writer.join().unwrap());
    assert!(batches > 10, "backfill should take many batches, took {batches}");

    // Old application retired: contract.
    setup.execute("SELECT zdm.contract($1)", &[&id]).unwrap();

    let wrong = mismatches(&mut setup, case.table, case.key, case.new, &ledger);
    let inserted = ledger.keys().filter(|k| **k > ROWS).count() as i64;
    let total: i64 = setup.query_one(&format!("SELECT count(*) FROM {}", case.table), &[]).unwrap().get(0);
    println!("{}: {} ledger entries, {batches} batches, {wrong} mismatches", case.table, ledger.len());
    assert_eq!(wrong, 0, "rows whose surviving column differs from what was last written, or written rows missing");
    assert_eq!(total, ROWS + inserted);

    // the old column is gone, the trigger too
    let old_left: i64 = setup
        .query_one("SELECT count(*) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped", &[&case.table, &case.old])
        .unwrap()
        .get(0);
    assert_eq!(old_left, 0);
    let triggers: i64 = setup.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass", &[&case.table]).unwrap().get(0);
    assert_eq!(triggers, 0);
    // NOT NULL carried over as a real NOT NULL, and no check left behind
    let (not_null, checks): (bool, i64) = {
        let r = setup
            .query_one(
                "SELECT a.attnotnull, (SELECT count(*) FROM pg_constraint WHERE conrelid = a.attrelid AND contype = 'c') \
                   FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                &[&case.table, &case.new],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(not_null, case.not_null);
    assert_eq!(checks, 0, "no leftover check constraint");
    let phase: String = setup.query_one("SELECT phase FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
}

#[test]
fn concurrent_rename_with_primary_key() {
    let cluster = Cluster::start("pk", &[]);
    run_case(
        &cluster,
        Case {
            db: "pk",
            table: "public.accounts",
            key: "id",
            old: "email",
            new: "email_address",
            create: "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, pad text DEFAULT repeat('x', 40))",
            not_null: true,
        },
    );
}

#[test]
fn concurrent_rename_without_any_key() {
    let cluster = Cluster::start("nokey", &[]);
    run_case(
        &cluster,
        Case {
            db: "nokey",
            table: "public.events",
            key: "k",
            old: "payload",
            new: "body",
            create: "CREATE TABLE events (k bigint, payload text, pad text DEFAULT repeat('x', 40))",
            not_null: false,
        },
    );
}

#[test]
fn concurrent_rename_with_quoted_identifiers() {
    let cluster = Cluster::start("quoted", &[]);
    run_case(
        &cluster,
        Case {
            db: "Quoted DB",
            table: "\"Sales Data\".\"Order Items\"",
            key: "\"Order ID\"",
            old: "e-mail",
            new: "user",
            create: "CREATE SCHEMA \"Sales Data\"; CREATE TABLE \"Sales Data\".\"Order Items\" (\"Order ID\" bigint PRIMARY KEY, \"e-mail\" text NOT NULL)",
            not_null: true,
        },
    );
}

#[test]
fn expand_in_rolled_back_transaction_leaves_nothing() {
    let cluster = Cluster::start("rollback", &[]);
    let mut c = cluster.create_db("rb");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text); INSERT INTO t SELECT g, 'a' || g FROM generate_series(1, 1000) g;").unwrap();
    let mut tx = c.transaction().unwrap();
    let id: i64 = tx.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    assert!(id > 0);
    tx.rollback().unwrap();
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'b'), \
                    (SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass), \
                    (SELECT count(*) FROM zdm.migrations), (SELECT count(*) FROM zdm.jobs), (SELECT count(*) FROM zdm.events)",
            &[],
        )
        .unwrap();
    for i in 0..5 {
        assert_eq!(r.get::<_, i64>(i), 0, "column {i} of the leftover check");
    }
    // Nothing started in the background either: give a worker time to show up.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let workers: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'zdm%' AND query LIKE '%backfill%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(workers, 0);
}

#[test]
fn non_superuser_owner_runs_the_whole_loop() {
    let cluster = Cluster::start("owner", &[]);
    let mut admin = cluster.create_db("app");
    admin.batch_execute("CREATE ROLE app LOGIN; GRANT CREATE ON SCHEMA public TO app;").unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n'); INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 5000) g;").unwrap();
    let id: i64 = app.query_one("SELECT zdm.expand_rename('orders', 'note', 'remark')", &[]).unwrap().get(0);
    while app.query_one("SELECT zdm.backfill_batch($1, 1000)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    app.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let (owner, phase): (String, String) = {
        let r = app.query_one("SELECT started_by::text, phase FROM zdm.status WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((owner.as_str(), phase.as_str()), ("app", "contracted"));
    // but app cannot write zdm's catalog directly
    let (code, _) = sqlstate(app.execute("UPDATE zdm.migrations SET phase = 'aborted'", &[]));
    assert_eq!(code, "42501");
}

/// COPY and INSERT … ON CONFLICT through either column go through the sync
/// trigger like any other write.
#[test]
fn copy_and_upsert_through_both_columns() {
    use std::io::Write;
    let cluster = Cluster::start("copy", &[]);
    let mut c = cluster.create_db("copy");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text); INSERT INTO t SELECT g, 'orig-' || g FROM generate_series(1, 1000) g;").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let mut w = c.copy_in("COPY t (id, a) FROM STDIN").unwrap();
    for i in 2001..=2500 {
        writeln!(w, "{i}\tcopied-old-{i}").unwrap();
    }
    w.finish().unwrap();
    let mut w = c.copy_in("COPY t (id, b) FROM STDIN").unwrap();
    for i in 3001..=3500 {
        writeln!(w, "{i}\tcopied-new-{i}").unwrap();
    }
    w.finish().unwrap();
    c.batch_execute(
        "INSERT INTO t (id, a) SELECT g, 'upsert-old' FROM generate_series(1, 10) g ON CONFLICT (id) DO UPDATE SET a = excluded.a;
         INSERT INTO t (id, b) SELECT g, 'upsert-new' FROM generate_series(11, 20) g ON CONFLICT (id) DO UPDATE SET b = excluded.b;",
    )
    .unwrap();
    while c.query_one("SELECT zdm.backfill_batch($1, 300)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    let out_of_sync: i64 = c.query_one("SELECT count(*) FROM t WHERE a IS DISTINCT FROM b", &[]).unwrap().get(0);
    assert_eq!(out_of_sync, 0);
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE b = 'copied-old-' || id), count(*) FILTER (WHERE b = 'copied-new-' || id), \
                    count(*) FILTER (WHERE b = 'upsert-old'), count(*) FILTER (WHERE b = 'upsert-new'), count(*) FILTER (WHERE b = 'orig-' || id) FROM t",
            &[],
        )
        .unwrap();
    let counts: Vec<i64> = (0..5).map(|i| r.get(i)).collect();
    assert_eq!(counts, vec![500, 500, 10, 10, 980]);
}
