//! Host side: zdm.safe_ddl (issue 28) — the lock queue a plain ALTER builds
//! behind a long transaction, bounded; rewrites, scans and index builds of
//! large tables refused or warned about; what is exempt; the escape hatch;
//! pg_dump | pg_restore into a database with safe_ddl = on; psql -1 and
//! Alembic migrations of plain DDL.

mod common;

use common::*;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn big_and_small(c: &mut Client) {
    c.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, qty int, v varchar(20), n int);
         INSERT INTO big SELECT g, g, 'v' || g, g FROM generate_series(1, 40000) g;
         CREATE TABLE small (id int PRIMARY KEY, qty int, v varchar(20), n int);
         INSERT INTO small SELECT g, g, 'v', g FROM generate_series(1, 10) g;
         CREATE TABLE ref (id int PRIMARY KEY); INSERT INTO ref SELECT generate_series(1, 40000);",
    )
    .unwrap();
    c.batch_execute("VACUUM ANALYZE big, small, ref").unwrap();
}

/// A reader that selects from `table` every 200 ms until stopped; returns the
/// longest a read took.
fn reader(cluster: &Cluster, db: &str, table: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    let mut c = cluster.connect(db);
    let sql = format!("SELECT count(*) FROM {table} WHERE id = 1");
    std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            c.query_one(sql.as_str(), &[]).unwrap();
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(200));
        }
        worst
    })
}

/// A transaction holding ACCESS SHARE on `table` for `secs`.
fn long_reader(cluster: &Cluster, db: &str, table: &str, secs: f64) -> std::thread::JoinHandle<()> {
    let mut c = cluster.connect(db);
    c.batch_execute(&format!("BEGIN; SELECT count(*) FROM {table}")).unwrap();
    std::thread::spawn(move || {
        c.batch_execute(&format!("SELECT pg_sleep({secs}); COMMIT")).unwrap();
    })
}

/// The lock queue: a 4 s reader transaction, a plain ALTER TABLE … ADD
/// COLUMN with no lock_timeout from another session, a third session reading
/// every 200 ms. With safe_ddl, no read waits much longer than one
/// zdm.lock_timeout attempt (300 ms) and the ALTER succeeds once the reader
/// ends — alone, and inside BEGIN … COMMIT with other statements; with
/// safe_ddl off, reads stall behind the queued ALTER for seconds.
#[test]
fn lock_queue_is_bounded() {
    let cluster = Cluster::start("sdqueue", &[]);
    let mut c = cluster.create_db("q");
    big_and_small(&mut c);
    c.batch_execute("ALTER DATABASE q SET zdm.lock_timeout = '300ms'; ALTER DATABASE q SET zdm.lock_retries = 100").unwrap();
    let run = |mode: &str, script: &str, column: &str| -> (Duration, Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let holder = long_reader(&cluster, "q", "big", 4.0);
        let watcher = reader(&cluster, "q", "big", stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let mut ddl = cluster.connect("q");
        ddl.batch_execute(&format!("SET zdm.safe_ddl = {mode}")).unwrap();
        let lock_timeout: String = ddl.query_one("SHOW lock_timeout", &[]).unwrap().get(0);
        assert_eq!(lock_timeout, "0", "the DDL session must have no lock_timeout of its own");
        let t = Instant::now();
        ddl.batch_execute(script).unwrap();
        let took = t.elapsed();
        holder.join().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, Ordering::SeqCst);
        let worst = watcher.join().unwrap();
        let has: bool = cluster
            .connect("q")
            .query_one("SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = $1)", &[&column])
            .unwrap()
            .get(0);
        assert!(has, "{script}: column {column} missing");
        println!("safe_ddl = {mode}: the ALTER took {took:?}, the slowest read {worst:?}");
        (took, worst)
    };
    let (took, worst) = run("warn", "ALTER TABLE big ADD COLUMN c1 int", "c1");
    assert!(took > Duration::from_millis(3000), "the ALTER could not have had its lock before the reader ended: {took:?}");
    assert!(worst < Duration::from_millis(1500), "a read waited {worst:?} behind the ALTER");
    // Inside a migration tool's transaction, with other statements: the
    // transaction survives the timed-out attempts and commits.
    let (_, worst) = run(
        "on",
        "BEGIN; CREATE TABLE migration_log (v text); ALTER TABLE big ADD COLUMN c2 int; INSERT INTO migration_log VALUES ('c2'); COMMIT",
        "c2",
    );
    assert!(worst < Duration::from_millis(1500), "a read waited {worst:?} behind the ALTER in a transaction");
    let logged: i64 = c.query_one("SELECT count(*) FROM migration_log", &[]).unwrap().get(0);
    assert_eq!(logged, 1);
    // Without safe_ddl: PostgreSQL's own queue, reads stall behind the ALTER.
    let (_, worst) = run("off", "ALTER TABLE big ADD COLUMN c3 int", "c3");
    assert!(worst > Duration::from_millis(2000), "reads should have stalled without safe_ddl, slowest {worst:?}");
    // A session that chose its own lock_timeout keeps it.
    let holder = long_reader(&cluster, "q", "big", 2.0);
    let mut own = cluster.connect("q");
    own.batch_execute("SET lock_timeout = '100ms'").unwrap();
    expect_err(&mut own, "ALTER TABLE big ADD COLUMN c4 int", "55P03");
    holder.join().unwrap();
    // Giving up: 55P03 naming the blocker.
    let mut blocker = cluster.connect("q");
    let pid: i32 = blocker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    blocker.batch_execute("BEGIN; SELECT count(*) FROM big").unwrap();
    let mut ddl = cluster.connect("q");
    ddl.batch_execute("SET zdm.lock_timeout = '100ms'; SET zdm.lock_retries = 2").unwrap();
    let msg = expect_err(&mut ddl, "ALTER TABLE big ADD COLUMN c5 int", "55P03");
    assert!(msg.contains(&pid.to_string()), "{msg}");
    blocker.batch_execute("COMMIT").unwrap();
}

fn hint_of(r: Result<(), postgres::Error>) -> (String, String, String) {
    let e = r.expect_err("expected an error");
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    (db.code().code().to_string(), db.message().to_string(), db.hint().unwrap_or_default().to_string())
}

/// On a table above zdm.large_table, each statement that rewrites, scans or
/// builds an index under a lock that stops writes is refused (54000, the
/// size, the zdm call in the hint); the same statements pass on a small
/// table, on a table created in the same transaction, on a temporary table,
/// with safe_ddl off, and as WARNINGs with warn. What is already safe passes
/// untouched, and zdm's own DDL is never refused.
#[test]
fn large_tables_refused_small_and_new_ones_not() {
    let cluster = Cluster::start("sdlarge", &[]);
    let mut c = cluster.create_db("l");
    big_and_small(&mut c);
    c.batch_execute("ALTER DATABASE l SET zdm.safe_ddl = on; ALTER DATABASE l SET zdm.large_table = '512kB'").unwrap();
    let mut c = cluster.connect("l");
    let unsafe_statements: &[(&str, &str)] = &[
        ("ALTER TABLE {t} ALTER COLUMN qty TYPE bigint", "zdm.expand_change_type('public.{t}', 'qty', 'bigint')"),
        ("ALTER TABLE {t} ADD COLUMN u float8 DEFAULT random()", "zdm.add_column('public.{t}', 'u', 'double precision', default_expr => 'random()')"),
        ("ALTER TABLE {t} ALTER COLUMN n SET NOT NULL", "zdm.validate_not_null('public.{t}', 'n')"),
        ("CREATE INDEX {t}_v ON {t} (v)", "zdm.create_index('CREATE INDEX {t}_v ON {t} (v)')"),
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_pos CHECK (qty > 0)", "zdm.add_check('public.{t}', '{t}_pos', '(qty > 0)')"),
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_fk FOREIGN KEY (n) REFERENCES ref (id)", "zdm.add_foreign_key('public.{t}', ARRAY['n'], 'public.ref'"),
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_uq UNIQUE (n)", "zdm.create_index("),
        ("VACUUM FULL {t}", ""),
        ("CLUSTER {t} USING {t}_pkey", ""),
        ("REINDEX TABLE {t}", "REINDEX TABLE public.{t} CONCURRENTLY"),
    ];
    for (stmt, call) in unsafe_statements {
        let sql = stmt.replace("{t}", "big");
        let (code, msg, hint) = hint_of(c.batch_execute(&sql));
        assert_eq!(code, "54000", "{sql}: {msg}");
        assert!(msg.contains("public.big") && msg.contains(" MB"), "{sql}: {msg}");
        assert!(hint.contains(&call.replace("{t}", "big")), "{sql}: hint {hint:?} lacks {call}");
        assert!(hint.contains("SET zdm.safe_ddl = off"), "{hint}");
        // The same on a small table goes through.
        c.batch_execute(&stmt.replace("{t}", "small")).unwrap_or_else(|e| panic!("{stmt} on small: {e}"));
    }
    // Already safe: concurrent builds, NOT VALID, catalog-only changes.
    for sql in [
        "CREATE INDEX CONCURRENTLY big_v ON big (v)",
        "ALTER TABLE big ADD CONSTRAINT big_pos CHECK (qty > 0) NOT VALID",
        "ALTER TABLE big VALIDATE CONSTRAINT big_pos",
        "ALTER TABLE big ADD COLUMN note text DEFAULT 'x'",
        "ALTER TABLE big ALTER COLUMN v TYPE varchar(50)",
        "ALTER TABLE big ALTER COLUMN v TYPE text",
        "ALTER TABLE big ADD CONSTRAINT big_fk FOREIGN KEY (n) REFERENCES ref (id) NOT VALID",
        "DROP INDEX CONCURRENTLY big_v",
        "REINDEX TABLE CONCURRENTLY big",
    ] {
        c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    // A table created and loaded in this transaction, a temporary table.
    c.batch_execute("BEGIN; CREATE TABLE fresh AS SELECT * FROM big; ALTER TABLE fresh ALTER COLUMN qty TYPE bigint; CREATE INDEX ON fresh (v); COMMIT")
        .unwrap();
    c.batch_execute("CREATE TEMP TABLE scratch AS SELECT * FROM big").unwrap();
    c.batch_execute("ALTER TABLE scratch ALTER COLUMN qty TYPE bigint").unwrap();
    // warn: the statement runs, with a WARNING carrying the same hint.
    let out = cluster.client_program(
        "psql",
        &["-X", "-d", "l", "-v", "ON_ERROR_STOP=1", "-c", "SET zdm.safe_ddl = warn", "-c", "ALTER TABLE big ALTER COLUMN qty TYPE bigint"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("WARNING:  zdm.safe_ddl") && stderr.contains("zdm.expand_change_type"), "{stderr}");
    // The escape hatch.
    c.batch_execute("SET zdm.safe_ddl = off; ALTER TABLE big ALTER COLUMN qty TYPE int; RESET zdm.safe_ddl").unwrap();
    // Per role: a role with safe_ddl off is not stopped.
    c.batch_execute("CREATE ROLE ops LOGIN; GRANT CREATE ON SCHEMA public TO ops; ALTER TABLE big OWNER TO ops; ALTER ROLE ops IN DATABASE l SET zdm.safe_ddl = off").unwrap();
    let mut ops = cluster.connect_as("l", "ops");
    let setting: String = ops.query_one("SHOW zdm.safe_ddl", &[]).unwrap().get(0);
    assert_eq!(setting, "off");
    ops.batch_execute("CREATE INDEX big_n ON big (n)").unwrap();
    c.batch_execute("ALTER TABLE big OWNER TO postgres").unwrap();
    // zdm's own DDL (expand, contract of a type change) is not refused.
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('big', 'qty', 'bigint')", &[]).unwrap().get(0);
    let state: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(state, "backfilled");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    // A database without zdm is not touched by the hook.
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE plain").unwrap();
    let mut p = cluster.connect("plain");
    p.batch_execute("SET zdm.safe_ddl = on; SET zdm.large_table = '64kB'").unwrap();
    p.batch_execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 40000) g").unwrap();
    p.batch_execute("ALTER TABLE t ALTER COLUMN id TYPE bigint").unwrap();
}

/// pg_dump of a database with large tables, restored into a database with
/// safe_ddl = on: refused as plain pg_restore (its index and key builds run
/// on loaded tables), possible as documented — PGOPTIONS='-c
/// zdm.safe_ddl=off', or --single-transaction (tables created in the same
/// transaction are exempt).
#[test]
fn pg_restore_into_safe_ddl_on() {
    let cluster = Cluster::start("sdrestore", &[]);
    let mut src = cluster.create_db("src");
    big_and_small(&mut src);
    src.batch_execute("CREATE INDEX big_v ON big (v); ALTER TABLE big ADD CONSTRAINT big_fk FOREIGN KEY (n) REFERENCES ref (id)").unwrap();
    let dump = format!("{}/src.dump", cluster.data());
    let out = cluster.client_program("pg_dump", &["-Fc", "-d", "src", "-f", &dump]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut admin = cluster.connect("postgres");
    let restore = |db: &str, extra: &[&str], env_off: bool| -> std::process::Output {
        let mut admin = cluster.connect("postgres");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        admin
            .batch_execute(&format!("ALTER DATABASE {db} SET zdm.safe_ddl = on; ALTER DATABASE {db} SET zdm.large_table = '512kB'"))
            .unwrap();
        let mut args = vec!["-d", db, "--exit-on-error"];
        args.extend_from_slice(extra);
        args.push(dump.as_str());
        if env_off {
            cluster.client_program_env("pg_restore", &args, &[("PGOPTIONS", "-c zdm.safe_ddl=off")])
        } else {
            cluster.client_program("pg_restore", &args)
        }
    };
    let out = restore("dst1", &[], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("zdm.safe_ddl"), "plain pg_restore should be refused: {stderr}");
    for (db, extra, env_off) in [("dst2", &[][..], true), ("dst3", &["--single-transaction"][..], false)] {
        let out = restore(db, extra, env_off);
        assert!(out.status.success(), "{db}: {}", String::from_utf8_lossy(&out.stderr));
        let mut d = cluster.connect(db);
        let (rows, indexes): (i64, i64) = {
            let r = d.query_one("SELECT (SELECT count(*) FROM big), (SELECT count(*) FROM pg_index WHERE indrelid = 'big'::regclass)", &[]).unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((rows, indexes), (40000, 2), "{db}");
    }
    admin.batch_execute("SELECT 1").unwrap();
}

/// Plain DDL from migration tools under safe_ddl = on: a psql -1 file whose
/// ALTER waits behind a reader commits as one transaction; one that
/// rewrites a large table is refused with 54000. Alembic: op.add_column
/// waits its turn, op.alter_column to bigint is refused with the hint.
#[test]
fn psql_single_transaction_and_alembic() {
    let cluster = Cluster::start("sdtools", &[]);
    let mut c = cluster.create_db("t");
    big_and_small(&mut c);
    c.batch_execute(
        "CREATE TABLE migration_log (v text);
         ALTER DATABASE t SET zdm.safe_ddl = on; ALTER DATABASE t SET zdm.large_table = '512kB';
         ALTER DATABASE t SET zdm.lock_timeout = '200ms'; ALTER DATABASE t SET zdm.lock_retries = 100",
    )
    .unwrap();
    let file = format!("{}/migration.sql", cluster.data());
    let write = |sql: &str| {
        std::fs::write(&file, sql).unwrap();
        let _ = std::process::Command::new("chmod").args(["644", &file]).status();
    };
    write("INSERT INTO migration_log VALUES ('psql');\nALTER TABLE big ADD COLUMN from_psql text;\nINSERT INTO migration_log VALUES ('psql done');\n");
    let holder = long_reader(&cluster, "t", "big", 2.0);
    let out = cluster.client_program("psql", &["-X", "-1", "-v", "ON_ERROR_STOP=1", "-d", "t", "-f", &file]);
    holder.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logged: i64 = c.query_one("SELECT count(*) FROM migration_log WHERE v LIKE 'psql%'", &[]).unwrap().get(0);
    assert_eq!(logged, 2);
    write("INSERT INTO migration_log VALUES ('refused');\nALTER TABLE big ALTER COLUMN qty TYPE bigint;\n");
    let out = cluster.client_program("psql", &["-X", "-1", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-d", "t", "-f", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("54000"), "{stderr}");
    let refused: i64 = c.query_one("SELECT count(*) FROM migration_log WHERE v = 'refused'", &[]).unwrap().get(0);
    assert_eq!(refused, 0, "psql -1 rolled the whole file back");

    // Alembic, from PyPI in the virtualenv the Alembic example uses.
    let venv = std::env::var("ZDM_EXAMPLE_VENV").unwrap_or_else(|_| "/tmp/zdm-example-venv".into());
    let alembic = format!("{venv}/bin/alembic");
    if !std::path::Path::new(&alembic).exists() {
        let ok = std::process::Command::new("python3").args(["-m", "venv", &venv]).status().map(|s| s.success()).unwrap_or(false)
            && std::process::Command::new(format!("{venv}/bin/pip"))
                .args(["install", "-q", "alembic>=1.13,<2", "psycopg[binary]>=3.1,<4"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(ok, "could not install Alembic into {venv}");
    }
    let ini = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/safe_ddl/alembic/alembic.ini");
    let url = format!("postgresql+psycopg://postgres@/t?host={}&port={}", cluster.socket_dir(), cluster.port);
    let alembic_run = |target: &str| {
        std::process::Command::new(&alembic).args(["-c", ini, "upgrade", target]).env("ZDM_TEST_URL", &url).output().unwrap()
    };
    let holder = long_reader(&cluster, "t", "big", 2.0);
    let out = alembic_run("0001");
    holder.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = alembic_run("0002");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("zdm.safe_ddl") && stderr.contains("zdm.expand_change_type('public.big', 'qty', 'bigint')"), "{stderr}");
    let version: String = c.query_one("SELECT version_num FROM alembic_version", &[]).unwrap().get(0);
    assert_eq!(version, "0001");
}

/// safe_ddl takes no lock PostgreSQL itself would not take: not for a role
/// that does not own what it names (DROP INDEX of someone else's index —
/// PostgreSQL refuses it before locking anything: 42501, not a wait, not
/// 54000), not on the siblings of a partition being detached, and zdm.plan
/// keeps no lock on the tables it looked at.
#[test]
fn no_lock_postgres_would_not_take() {
    let cluster = Cluster::start("sdnolock", &[]);
    let mut c = cluster.create_db("n");
    big_and_small(&mut c);
    c.batch_execute(
        "ALTER DATABASE n SET zdm.safe_ddl = on; ALTER DATABASE n SET zdm.large_table = '512kB';
         ALTER DATABASE n SET zdm.lock_timeout = '300ms'; ALTER DATABASE n SET zdm.lock_retries = 2;
         CREATE INDEX big_v ON big (v);
         CREATE ROLE mallory LOGIN; GRANT CREATE ON SCHEMA public TO mallory; GRANT SELECT ON big TO mallory;
         CREATE TABLE pt (id int, k int) PARTITION BY RANGE (k);
         CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (10);
         CREATE TABLE pt2 PARTITION OF pt FOR VALUES FROM (10) TO (20);
         INSERT INTO pt SELECT g, g % 20 FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let mut m = cluster.connect_as("n", "mallory");
    m.batch_execute("CREATE TABLE mine (id int); CREATE INDEX mine_idx ON mine (id)").unwrap();
    // A reader on big: a queued ACCESS EXCLUSIVE there would show.
    let mut reader = cluster.connect("n");
    reader.batch_execute("BEGIN; SELECT count(*) FROM big").unwrap();
    // (Had zdm queued for big's lock first, these would end in 55P03.)
    expect_err(&mut m, "DROP INDEX mine_idx, big_v", "42501");
    expect_err(&mut m, "ALTER TABLE big ALTER COLUMN qty TYPE bigint", "42501");
    // zdm.plan looks at big (a CHECK's expression is analysed against it)
    // and keeps no lock on it.
    m.batch_execute("BEGIN").unwrap();
    m.query("SELECT * FROM zdm.plan('ALTER TABLE big ADD CONSTRAINT c CHECK (qty > 0)')", &[]).unwrap();
    let held: i64 = m
        .query_one("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'big'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "zdm.plan left a lock on big");
    m.batch_execute("COMMIT").unwrap();
    reader.batch_execute("COMMIT").unwrap();
    // A reader of partition pt2 does not hold up DETACH of pt1 (which locks
    // pt and pt1 only) nor SET TABLESPACE of pt (pt alone, catalog only).
    reader.batch_execute("BEGIN; SELECT count(*) FROM pt2").unwrap();
    c.batch_execute("ALTER TABLE pt DETACH PARTITION pt1").unwrap();
    c.batch_execute("ALTER TABLE pt SET TABLESPACE pg_default").unwrap();
    // … but it does hold up a change every partition takes part in.
    expect_err(&mut c, "ALTER TABLE pt ADD COLUMN note text", "55P03");
    reader.batch_execute("COMMIT").unwrap();
    c.batch_execute("ALTER TABLE pt ADD COLUMN note text").unwrap();
}
