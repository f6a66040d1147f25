//! Host side: zdm.plan against what PostgreSQL really does (issue 28). For
//! each statement kind, the lock the plan names is compared with the lock
//! another session really holds (or waits for) in pg_locks while the
//! statement runs, and the work it names with the table's relfilenode (a
//! rewrite) and seq_scan count (a scan, an index build) before and after.

mod common;

use common::*;
use postgres::Client;
use std::time::Duration;

const MODES: [&str; 9] = [
    "",
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

fn strength(mode: &str) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

const FIXTURE: &str = "
DROP TABLE IF EXISTS p, p2, r CASCADE;
CREATE TABLE r (id int PRIMARY KEY);
INSERT INTO r SELECT generate_series(0, 20000);
CREATE TABLE p (id int PRIMARY KEY, a int, v varchar(20), t text, c int CHECK (c IS NOT NULL), n int);
INSERT INTO p SELECT g, g, 'x' || g, 'y', 1, g FROM generate_series(1, 20000) g;
ALTER TABLE p ADD CONSTRAINT n_positive CHECK (n > 0) NOT VALID;
CREATE INDEX p_n_idx ON p (n);
ANALYZE p; ANALYZE r;";

/// The statement's (plan, reality) on table p: strongest lock, and the
/// work the plan names vs whether p was rewritten / scanned.
struct Seen {
    plan_lock: String,
    plan_works: Vec<String>,
    real_lock: String,
    rewritten: bool,
    scanned: bool,
}

fn seq_scans(c: &mut Client, oid: u32) -> i64 {
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    c.query_one(
        "SELECT coalesce(seq_scan, 0) FROM pg_stat_all_tables WHERE relid = $1::oid",
        &[&oid],
    )
    .unwrap()
    .get(0)
}

fn filenode(c: &mut Client, oid: u32) -> u32 {
    c.query_one("SELECT pg_relation_filenode($1::oid)::oid", &[&oid])
        .unwrap()
        .get(0)
}

/// Run `stmt` in a session of its own with safe_ddl off (PostgreSQL
/// alone): inside BEGIN, reading its granted locks before COMMIT; or, for
/// a statement that cannot run in a transaction block, behind a session
/// holding `holder_mode` (the weakest mode that makes it wait at its table
/// lock, not at an earlier lookup), reading the lock it waits for.
fn observe(cluster: &Cluster, db: &str, stmt: &str, holder_mode: Option<&str>) -> Seen {
    let mut a = cluster.connect(db);
    a.batch_execute(FIXTURE).unwrap();
    let oid: u32 = a
        .query_one("SELECT 'p'::regclass::oid", &[])
        .unwrap()
        .get(0);
    let plan = a
        .query(
            "SELECT lock, work FROM zdm.plan($1) WHERE relation = 'public.p'",
            &[&stmt],
        )
        .unwrap();
    assert!(!plan.is_empty(), "{stmt}: the plan has no step on p");
    let plan_lock = plan
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .max_by_key(|m| strength(m))
        .unwrap();
    let plan_works = plan
        .iter()
        .map(|r| r.get::<_, String>(1))
        .collect::<Vec<_>>();
    let mut b = cluster.connect(db);
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    b.batch_execute("SET zdm.safe_ddl = off").unwrap();
    let (scans_before, node_before) = (seq_scans(&mut b, oid), filenode(&mut a, oid));
    let locks_of = |a: &mut Client, granted: bool| -> String {
        a.query(
            "SELECT mode FROM pg_locks WHERE pid = $1 AND locktype = 'relation' AND relation = $2::oid AND granted = $3",
            &[&b_pid, &oid, &granted],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .max_by_key(|m| strength(m))
        .unwrap_or_default()
    };
    let real_lock = if let Some(mode) = holder_mode {
        let mut holder = cluster.connect(db);
        holder
            .batch_execute(&format!("BEGIN; LOCK TABLE p IN {mode} MODE"))
            .unwrap();
        let stmt_owned = stmt.to_string();
        let runner = std::thread::spawn(move || {
            b.batch_execute(&stmt_owned)
                .unwrap_or_else(|e| panic!("{stmt_owned}: {e}"));
            b
        });
        let l = wait_for(
            &format!("{stmt} to wait for its lock"),
            Duration::from_secs(20),
            || {
                let l = locks_of(&mut a, false);
                (!l.is_empty()).then_some(l)
            },
        );
        holder.batch_execute("COMMIT").unwrap();
        b = runner.join().unwrap();
        l
    } else {
        b.batch_execute("BEGIN").unwrap();
        b.batch_execute(stmt)
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        let l = locks_of(&mut a, true);
        b.batch_execute("COMMIT").unwrap();
        l
    };
    let (scans_after, node_after) = (seq_scans(&mut b, oid), filenode(&mut a, oid));
    Seen {
        plan_lock,
        plan_works,
        real_lock,
        rewritten: node_before != node_after,
        scanned: scans_after > scans_before,
    }
}

/// Every statement kind the plan covers: its lock and its work match the
/// server's, on this major.
#[test]
fn plan_matches_what_postgres_does() {
    let cluster = Cluster::start("plan", &[]);
    let _ = cluster.create_db("pl");
    // (statement, None: run in a transaction block, or the lock another
    // session holds while it runs outside one)
    let mut cases: Vec<(&str, Option<&str>)> = vec![
        ("ALTER TABLE p ADD COLUMN x int", None),
        ("ALTER TABLE p ADD COLUMN x int DEFAULT 5", None),
        ("ALTER TABLE p ADD COLUMN x timestamptz DEFAULT now()", None),
        ("ALTER TABLE p ADD COLUMN x float8 DEFAULT random()", None),
        ("ALTER TABLE p ADD COLUMN x int NOT NULL DEFAULT 0", None),
        (
            "ALTER TABLE p ADD COLUMN x int GENERATED ALWAYS AS IDENTITY",
            None,
        ),
        ("ALTER TABLE p ADD COLUMN x int CHECK (x > 0)", None),
        ("ALTER TABLE p ALTER COLUMN v TYPE varchar(50)", None),
        ("ALTER TABLE p ALTER COLUMN v TYPE text", None),
        ("ALTER TABLE p ALTER COLUMN v TYPE varchar(10)", None),
        ("ALTER TABLE p ALTER COLUMN a TYPE bigint", None),
        ("ALTER TABLE p ALTER COLUMN a TYPE int USING a", None),
        ("ALTER TABLE p ALTER COLUMN a TYPE int USING a + 0", None),
        ("ALTER TABLE p ALTER COLUMN a SET NOT NULL", None),
        ("ALTER TABLE p ALTER COLUMN c SET NOT NULL", None),
        ("ALTER TABLE p ALTER COLUMN a SET DEFAULT 3", None),
        ("ALTER TABLE p DROP COLUMN t", None),
        ("ALTER TABLE p ADD CONSTRAINT ck CHECK (a > 0)", None),
        (
            "ALTER TABLE p ADD CONSTRAINT ck CHECK (a > 0) NOT VALID",
            None,
        ),
        (
            "ALTER TABLE p ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id)",
            None,
        ),
        (
            "ALTER TABLE p ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id) NOT VALID",
            None,
        ),
        ("ALTER TABLE p ADD CONSTRAINT uq UNIQUE (a)", None),
        ("ALTER TABLE p VALIDATE CONSTRAINT n_positive", None),
        ("ALTER TABLE p RENAME COLUMN t TO t2", None),
        ("ALTER TABLE p RENAME TO p2", None),
        ("ALTER TABLE p SET TABLESPACE pg_default", None),
        ("CREATE INDEX ON p (a)", None),
        ("CREATE INDEX CONCURRENTLY ON p (a)", Some("SHARE")),
        ("DROP INDEX p_n_idx", None),
        ("DROP INDEX CONCURRENTLY p_n_idx", Some("SHARE")),
        ("REINDEX TABLE p", None),
        ("REINDEX TABLE CONCURRENTLY p", Some("SHARE")),
        ("VACUUM FULL p", Some("ACCESS SHARE")),
        ("CLUSTER p USING p_pkey", None),
    ];
    if pg_major() >= 18 {
        // 18: NOT NULL constraints of their own, NOT VALID ones too.
        cases.push(("ALTER TABLE p ADD CONSTRAINT a_nn NOT NULL a", None));
        cases.push((
            "ALTER TABLE p ADD CONSTRAINT a_nn NOT NULL a NOT VALID",
            None,
        ));
        cases.push(("ALTER TABLE p ADD CONSTRAINT c_nn NOT NULL c", None));
    }
    let mut wrong = Vec::new();
    for (stmt, holder) in &cases {
        let s = observe(&cluster, "pl", stmt, *holder);
        let heavy = s
            .plan_works
            .iter()
            .any(|w| matches!(w.as_str(), "rewrite" | "scan" | "index build" | "file copy"));
        let says_rewrite = s.plan_works.iter().any(|w| w == "rewrite");
        let ok = s.plan_lock == s.real_lock && says_rewrite == s.rewritten && heavy == s.scanned;
        println!(
            "{stmt:<75} plan {:<24} {:<28} | server {:<24} rewrite={} scan={}",
            s.plan_lock,
            s.plan_works.join(","),
            s.real_lock,
            s.rewritten,
            s.scanned
        );
        if !ok {
            wrong.push(stmt.to_string());
        }
    }
    assert!(
        wrong.is_empty(),
        "the plan differs from the server for: {wrong:#?}"
    );
}

/// The plan of a foreign key names the referenced table's lock as well, as
/// pg_locks shows it; the plan's zdm calls run as written.
#[test]
fn plan_alternatives_and_referenced_table() {
    let cluster = Cluster::start("planalt", &[]);
    let mut c = cluster.create_db("pa");
    c.batch_execute(FIXTURE).unwrap();
    let r: String = c
        .query_one("SELECT lock FROM zdm.plan('ALTER TABLE p ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id)') WHERE relation = 'public.r'", &[])
        .unwrap()
        .get(0);
    let mut b = cluster.connect("pa");
    let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    b.batch_execute("SET zdm.safe_ddl = off; BEGIN; ALTER TABLE p ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id)").unwrap();
    let real: String = c
        .query_one(
            "SELECT mode FROM pg_locks WHERE pid = $1 AND relation = 'r'::regclass AND granted ORDER BY mode DESC LIMIT 1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    b.batch_execute("ROLLBACK").unwrap();
    assert_eq!(r, real);

    // Each unsafe step's alternative is a zdm call that works as written.
    let statements = [
        (
            "ALTER TABLE p ALTER COLUMN a TYPE bigint",
            "zdm.expand_change_type('public.p', 'a', 'bigint')",
        ),
        (
            "ALTER TABLE p ADD COLUMN u uuid DEFAULT gen_random_uuid()",
            "zdm.add_column('public.p', 'u', 'uuid', default_expr => 'gen_random_uuid()')",
        ),
        (
            "ALTER TABLE p ALTER COLUMN n SET NOT NULL",
            "zdm.validate_not_null('public.p', 'n')",
        ),
        (
            "CREATE INDEX p_v ON p (v)",
            "zdm.create_index('CREATE INDEX p_v ON p (v)')",
        ),
        (
            "ALTER TABLE p ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id) ON DELETE CASCADE",
            "zdm.add_foreign_key('public.p', ARRAY['a'], 'public.r', ARRAY['id'], on_delete => 'CASCADE', constraint_name => 'fk')",
        ),
        (
            "ALTER TABLE p ADD CONSTRAINT a_pos CHECK (a > 0)",
            "zdm.add_check('public.p', 'a_pos', '(a > 0)')",
        ),
    ];
    for (stmt, call) in statements {
        c.batch_execute(FIXTURE).unwrap();
        let alt: Option<String> = c
            .query_one(
                "SELECT alternative FROM zdm.plan($1) WHERE alternative IS NOT NULL LIMIT 1",
                &[&stmt],
            )
            .unwrap()
            .get(0);
        let alt = alt.unwrap_or_default();
        assert!(
            alt.contains(call),
            "{stmt}: alternative {alt:?} does not contain {call:?}"
        );
        let sql = alt
            .split(" -- ")
            .next()
            .unwrap()
            .split("; then")
            .next()
            .unwrap()
            .to_string();
        let id: i64 = c
            .query_one(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        let state: String = c
            .query_one("SELECT zdm.wait($1, '2 minutes')", &[&id])
            .unwrap()
            .get(0);
        assert!(!state.contains("failed"), "{sql}: {state}");
        c.query(
            "SELECT zdm.contract(id) FROM zdm.migrations WHERE id = $1 AND phase = 'backfilled'",
            &[&id],
        )
        .unwrap();
    }
}

/// Who holds a conflicting lock, and the snapshots a concurrent build waits
/// for, are named with their pid; a non-conflicting lock is not.
#[test]
fn plan_names_blockers_and_zdm_steps() {
    let cluster = Cluster::start("planblk", &[]);
    let mut c = cluster.create_db("pb");
    c.batch_execute(FIXTURE).unwrap();
    c.batch_execute("CREATE VIEW pv AS SELECT id, a FROM p; CREATE INDEX p_a ON p (a)")
        .unwrap();
    let mut reader = cluster.connect("pb");
    let pid: i32 = reader
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM p")
        .unwrap();
    let blockers = |c: &mut Client, stmt: &str| -> Vec<String> {
        let r = c
            .query_one(
                "SELECT blockers FROM zdm.plan($1) WHERE relation = 'public.p' LIMIT 1",
                &[&stmt],
            )
            .unwrap();
        r.get::<_, Vec<String>>(0)
    };
    let add = blockers(&mut c, "ALTER TABLE p ADD COLUMN z int");
    assert!(
        add.iter()
            .any(|b| b.starts_with(&format!("pid {pid} holds AccessShareLock"))),
        "{add:?}"
    );
    // SHARE (a plain index build) does not conflict with ACCESS SHARE.
    assert!(blockers(&mut c, "CREATE INDEX ON p (v)").is_empty());
    // A concurrent build waits for the reader's snapshot.
    let cic = blockers(&mut c, "CREATE INDEX CONCURRENTLY ON p (v)");
    std::thread::sleep(Duration::from_millis(1100));
    let cic2 = blockers(&mut c, "CREATE INDEX CONCURRENTLY ON p (v)");
    assert!(
        cic.iter()
            .chain(cic2.iter())
            .any(|b| b.starts_with(&format!("pid {pid} has held a snapshot"))),
        "{cic2:?}"
    );
    reader.batch_execute("COMMIT").unwrap();

    // A zdm call: its brief locks, its background work, what it carries and
    // what contract will refuse (the view).
    let steps: Vec<(String, Option<String>, String)> = c
        .query("SELECT action, lock, work FROM zdm.plan('SELECT zdm.expand_change_type(''p'', ''a'', ''bigint'')')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let text = format!("{steps:#?}");
    assert!(
        steps
            .iter()
            .any(|(a, _, w)| a.starts_with("expand") && w == "catalog only"),
        "{text}"
    );
    assert!(
        steps.iter().any(|(a, l, w)| a.starts_with("backfill")
            && l.as_deref() == Some("RowExclusiveLock")
            && w == "batches"),
        "{text}"
    );
    assert!(
        steps
            .iter()
            .any(|(a, _, w)| a.contains("carry") && a.contains("p_a") && w == "index build"),
        "{text}"
    );
    assert!(
        steps
            .iter()
            .any(|(a, _, _)| a.starts_with("blocker") && a.contains("pv")),
        "{text}"
    );
    assert!(
        steps.iter().any(|(a, _, _)| a.starts_with("contract")),
        "{text}"
    );
    // A statement plan does not run it.
    let before: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'p'::regclass AND attnum > 0",
            &[],
        )
        .unwrap()
        .get(0);
    c.query(
        "SELECT * FROM zdm.plan('ALTER TABLE p ADD COLUMN q int; CREATE INDEX ON p (q)')",
        &[],
    )
    .unwrap();
    let after: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'p'::regclass AND attnum > 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, after);
}
