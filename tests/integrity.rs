//! Host side: the integrity and privilege model (issue: "Nothing lost, nobody
//! escalates"). Every test here reproduces a way v0.1 lost data or let a role
//! act with rights it does not have, on a real cluster with real workers,
//! with two non-superuser roles (`owner`, `outsider`) besides the superuser.

mod common;

use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// A database owned by `owner` (so it can ALTER DATABASE … SET), with zdm
/// installed by the superuser and no GRANT on schema zdm to anybody.
fn tenant_db(cluster: &Cluster, db: &str) -> (Client, Client, Client) {
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'owner') THEN CREATE ROLE owner LOGIN; END IF;
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outsider') THEN CREATE ROLE outsider LOGIN; END IF;
             END $$;",
        )
        .unwrap();
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db} OWNER owner")).unwrap();
    let mut su = cluster.connect(db);
    su.batch_execute("CREATE EXTENSION zdm; GRANT ALL ON SCHEMA public TO owner;").unwrap();
    (su, cluster.connect_as(db, "owner"), cluster.connect_as(db, "outsider"))
}

fn backfilled(c: &mut Client, id: i64) {
    let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
}

fn catalog_rows(c: &mut Client) -> i64 {
    c.query_one("SELECT (SELECT count(*) FROM zdm.migrations) + (SELECT count(*) FROM zdm.jobs)", &[]).unwrap().get(0)
}

fn columns(c: &mut Client, table: &str) -> String {
    c.query_one(
        "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
        &[&table],
    )
    .unwrap()
    .get(0)
}

/// The table owner plants code everywhere zdm might run it — a BEFORE UPDATE
/// trigger that moves `public` before pg_catalog for the rest of the session,
/// a CHECK function, an index expression, a column default, look-alike
/// `clock_timestamp()` / `now()` in public, and `ALTER DATABASE/ROLE … SET
/// search_path` — and every function logs the `current_user` it runs as and
/// tries to make `owner` a superuser. A superuser then drives the
/// migration (restart, contract). Nothing ever runs as anybody but `owner`.
#[test]
fn user_code_never_runs_with_rights_it_does_not_have() {
    let cluster = Cluster::start("escalate", &[]);
    let (mut su, mut owner, mut outsider) = tenant_db(&cluster, "esc");
    owner
        .batch_execute(
            r#"
        CREATE TABLE seen (src text, who text);
        GRANT INSERT, SELECT ON seen TO PUBLIC;
        CREATE FUNCTION public.log_it(src text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$
        BEGIN
          INSERT INTO public.seen VALUES (src, current_user);
          BEGIN EXECUTE 'ALTER ROLE owner SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
          PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog', false);
          RETURN true;
        END $f$;
        CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $f$
          BEGIN PERFORM public.log_it('clock_timestamp'); RETURN pg_catalog.clock_timestamp(); END $f$;
        CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
          BEGIN PERFORM public.log_it('now'); RETURN pg_catalog.now(); END $f$;
        CREATE FUNCTION public.chk(v text) RETURNS boolean LANGUAGE plpgsql AS $f$
          BEGIN PERFORM public.log_it('check'); RETURN v IS NOT NULL; END $f$;
        CREATE FUNCTION public.idx(v text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
          BEGIN PERFORM public.log_it('index'); RETURN pg_catalog.lower(v); END $f$;
        CREATE FUNCTION public.dflt() RETURNS text LANGUAGE plpgsql AS $f$
          BEGIN PERFORM public.log_it('default'); RETURN 'x'; END $f$;
        CREATE FUNCTION public.trg() RETURNS trigger LANGUAGE plpgsql AS $f$
          BEGIN PERFORM public.log_it('trigger'); RETURN NEW; END $f$;
        CREATE TABLE t (id bigint PRIMARY KEY, a text CHECK (public.chk(a)), pad text DEFAULT public.dflt());
        INSERT INTO t (id, a) SELECT g, 'orig-' || g FROM generate_series(1, 20000) g;
        CREATE INDEX t_idx ON t ((public.idx(pad)));
        CREATE TRIGGER t_trg BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION public.trg();
        ALTER DATABASE esc SET search_path = public, pg_catalog;
        ALTER ROLE owner SET search_path = public, pg_catalog;
        TRUNCATE seen;
        "#,
        )
        .unwrap();
    // The owner starts it: no GRANT on schema zdm was needed.
    let id: i64 = owner.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    owner.execute("SELECT zdm.set_options($1, batch_size => 500, pause_ms => 10, target_batch_ms => 0)", &[&id]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // A superuser cancels and restarts it: the work still runs as owner.
    let _ = su.execute("SELECT zdm.cancel($1)", &[&id]);
    wait_for("cancelled", Duration::from_secs(30), || worker_pid(&mut su, id).is_none().then_some(()));
    su.query_one("SELECT zdm.start_backfill($1, pause_ms => 0)", &[&id]).unwrap();
    backfilled(&mut su, id);
    // The superuser contracts: the CHECK's validation and the verify scan run as owner.
    su.execute("SELECT zdm.contract($1)", &[&id]).unwrap();

    let by_source: Vec<(String, String, i64)> = su
        .query("SELECT src, who, count(*) FROM seen GROUP BY 1, 2 ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    println!("{by_source:?}");
    assert!(by_source.iter().all(|(_, who, _)| who == "owner"), "user code ran as another role: {by_source:?}");
    for src in ["trigger", "check", "index"] {
        assert!(by_source.iter().any(|(s, _, _)| s == src), "{src} code was expected to run (as owner): {by_source:?}");
    }
    assert!(!by_source.iter().any(|(s, _, _)| s == "clock_timestamp" || s == "now"), "zdm resolved a look-alike: {by_source:?}");
    let superuser: bool = su.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'owner'", &[]).unwrap().get(0);
    assert!(!superuser, "owner became superuser");
    let mismatched: i64 = su.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM 'orig-' || id", &[]).unwrap().get(0);
    assert_eq!(mismatched, 0);
    // A superuser session that inherits the tenant's search_path (ALTER
    // DATABASE … SET) with look-alike `=` operators on name and oid: DDL
    // (which fires zdm's guard) and zdm calls never run them as superuser.
    owner
        .batch_execute(
            "CREATE FUNCTION public.name_eq_spy(a name, b name) RETURNS boolean LANGUAGE plpgsql AS $f$
               BEGIN PERFORM public.log_it('operator'); RETURN pg_catalog.nameeq(a, b); END $f$;
             CREATE FUNCTION public.oid_eq_spy(a oid, b oid) RETURNS boolean LANGUAGE plpgsql AS $f$
               BEGIN PERFORM public.log_it('operator'); RETURN pg_catalog.oideq(a, b); END $f$;
             CREATE OPERATOR public.= (leftarg = name, rightarg = name, function = public.name_eq_spy);
             CREATE OPERATOR public.= (leftarg = oid, rightarg = oid, function = public.oid_eq_spy);",
        )
        .unwrap();
    let mut su2 = cluster.connect("esc");
    let path: String = su2.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert_eq!(path, "public, pg_catalog", "the superuser's new session inherits the tenant's setting");
    su2.batch_execute("CREATE TABLE scratch (x int); DROP TABLE scratch;").unwrap();
    let id2: i64 = su2.query_one("SELECT zdm.expand_rename('t', 'b', 'c', background => false)", &[]).unwrap().get(0);
    su2.batch_execute(&format!(
        "SELECT zdm.backfill_batch({id2}); SELECT zdm.add_check('t', 'spy_check', 'id > 0'); SELECT zdm.abort({id2});"
    ))
    .unwrap();
    let _ = su2.batch_execute("ALTER TABLE t RENAME COLUMN id TO id2; ALTER TABLE t RENAME COLUMN id2 TO id;");
    let by_superuser: i64 = su.query_one("SELECT count(*) FROM seen WHERE who <> 'owner'", &[]).unwrap().get(0);
    let spied: i64 = su.query_one("SELECT count(*) FROM seen WHERE src = 'operator'", &[]).unwrap().get(0);
    println!("operator look-alike ran {spied} time(s), {by_superuser} of them not as owner");
    assert_eq!(by_superuser, 0, "a look-alike ran with the superuser's rights");
    // The outsider may read zdm.status (USAGE for PUBLIC) but control nothing.
    let n: i64 = outsider.query_one("SELECT count(*) FROM zdm.status", &[]).unwrap().get(0);
    assert!(n >= 1);
    expect_err(&mut outsider, "SELECT * FROM zdm.claim_lock FOR UPDATE", "42501");
    expect_err(&mut outsider, "SELECT * FROM zdm.jobs FOR UPDATE", "42501");
}

/// An outsider can neither control a migration nor hold its locks; each
/// refusal is 42501 and changes nothing.
#[test]
fn outsiders_control_nothing_and_lock_nothing() {
    let cluster = Cluster::start("outsider", &[]);
    let (_su, mut owner, mut outsider) = tenant_db(&cluster, "o");
    make_table(&mut owner, "t", 5000);
    let id: i64 = owner.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let before = catalog_rows(&mut owner);
    for sql in [
        format!("SELECT zdm.backfill_batch({id})"),
        format!("SELECT zdm.start_backfill({id})"),
        format!("SELECT zdm.set_options({id}, batch_size => 1)"),
        format!("SELECT zdm.pause({id})"),
        format!("SELECT zdm.resume({id})"),
        format!("SELECT zdm.cancel({id})"),
        format!("SELECT zdm.wait({id}, '1 second')"),
        format!("SELECT zdm.contract({id})"),
        format!("SELECT zdm.abort({id})"),
    ] {
        expect_err(&mut outsider, &sql, "42501");
    }
    expect_err(&mut outsider, "SELECT zdm.expand_rename('t', 'a', 'c')", "42501");
    expect_err(&mut outsider, "SELECT zdm.validate_not_null('t', 'a')", "42501");
    assert_eq!(catalog_rows(&mut owner), before);
    // An outsider's transaction that called backfill_batch does not hold the
    // migration's row: the owner's batch goes through at once.
    outsider.batch_execute("BEGIN").unwrap();
    let _ = outsider.batch_execute(&format!("SELECT zdm.backfill_batch({id})"));
    owner.batch_execute("SET statement_timeout = '5s'").unwrap();
    owner.query_one("SELECT zdm.backfill_batch($1)", &[&id]).unwrap();
    outsider.batch_execute("ROLLBACK").unwrap();
}

/// Two renames on one table (one release renaming two columns): each
/// backfill's UPDATEs still fire the other migration's trigger.
#[test]
fn two_renames_on_one_table_lose_nothing() {
    let cluster = Cluster::start("tworenames", &[]);
    let mut c = cluster.create_db("two");
    make_table(&mut c, "t", 100_000);
    c.batch_execute("ALTER TABLE t ADD COLUMN c text; UPDATE t SET c = 'orig-' || id").unwrap();
    c.batch_execute("VACUUM ANALYZE t").unwrap();
    let m1: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    let m2: i64 = c.query_one("SELECT zdm.expand_rename('t', 'c', 'd')", &[]).unwrap().get(0);
    for id in [m1, m2] {
        c.execute("SELECT zdm.set_options($1, pause_ms => 0)", &[&id]).unwrap();
    }
    backfilled(&mut c, m1);
    backfilled(&mut c, m2);
    c.execute("SELECT zdm.contract($1)", &[&m1]).unwrap();
    c.execute("SELECT zdm.contract($1)", &[&m2]).unwrap();
    let lost: i64 = c
        .query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM 'orig-' || id OR d IS DISTINCT FROM 'orig-' || id", &[])
        .unwrap()
        .get(0);
    assert_eq!(lost, 0);
}

/// RLS that would hide rows from the owner and inheritance on either side
/// are refused up front (0A000), leaving nothing behind.
#[test]
fn rls_and_inheritance_are_refused_up_front() {
    let cluster = Cluster::start("refuse", &[]);
    let (_su, mut owner, _) = tenant_db(&cluster, "r");
    make_table(&mut owner, "t", 1000);
    owner
        .batch_execute(
            "ALTER TABLE t ENABLE ROW LEVEL SECURITY; ALTER TABLE t FORCE ROW LEVEL SECURITY;
             CREATE POLICY p ON t USING (id % 2 = 0);",
        )
        .unwrap();
    let before = catalog_rows(&mut owner);
    let msg = expect_err(&mut owner, "SELECT zdm.expand_rename('t', 'a', 'b')", "0A000");
    assert!(msg.contains("ROW LEVEL SECURITY"), "{msg}");
    expect_err(&mut owner, "SELECT zdm.validate_not_null('t', 'a')", "0A000");
    assert_eq!(columns(&mut owner, "t"), "id,a,pad");
    // Without FORCE the owner sees every row: allowed.
    owner.batch_execute("ALTER TABLE t NO FORCE ROW LEVEL SECURITY").unwrap();
    let id: i64 = owner.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    while owner.query_one("SELECT zdm.backfill_batch($1)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    owner.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let n: i64 = owner.query_one("SELECT count(*) FROM t WHERE b = 'orig-' || id", &[]).unwrap().get(0);
    assert_eq!(n, 1000, "every row, including those the policy hides from others");

    // Deferred constraint triggers cannot fire in zdm's security-restricted batches.
    make_table(&mut owner, "d", 10);
    owner
        .batch_execute(
            "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER late AFTER UPDATE ON d DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION noop();",
        )
        .unwrap();
    let msg = expect_err(&mut owner, "SELECT zdm.expand_rename('d', 'a', 'b')", "0A000");
    assert!(msg.contains("INITIALLY DEFERRED"), "{msg}");

    make_table(&mut owner, "p", 100);
    owner.batch_execute("CREATE TABLE ch () INHERITS (p)").unwrap();
    let before = catalog_rows(&mut owner).max(before);
    let msg = expect_err(&mut owner, "SELECT zdm.expand_rename('p', 'a', 'b')", "0A000");
    assert!(msg.contains("inheritance parent"), "{msg}");
    let msg = expect_err(&mut owner, "SELECT zdm.expand_rename('ch', 'a', 'b')", "0A000");
    assert!(msg.contains("inheritance child"), "{msg}");
    assert_eq!(columns(&mut owner, "p"), "id,a,pad");
    assert_eq!(catalog_rows(&mut owner), before);
}

/// The guard refuses DDL that would break an in-flight migration (55000
/// naming it); zdm's own DDL passes; with the guard bypassed and the table
/// dropped anyway, the job fails clearly and abort closes the migration.
#[test]
fn guard_refuses_breaking_ddl_and_a_dropped_table_can_be_aborted() {
    let cluster = Cluster::start("guard", &[]);
    let (mut su, mut owner, _) = tenant_db(&cluster, "g");
    make_table(&mut owner, "t", 20_000);
    make_table(&mut owner, "other", 10);
    let id: i64 = owner.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    for sql in [
        "ALTER TABLE t RENAME TO t2",
        "ALTER TABLE t RENAME COLUMN a TO z",
        "ALTER TABLE t RENAME COLUMN b TO z",
        "ALTER TABLE t ALTER COLUMN a TYPE varchar(100)",
        "ALTER TABLE t DROP COLUMN b",
        "ALTER TABLE t DROP COLUMN a CASCADE",
        "DROP TABLE t",
        "CREATE SCHEMA s2; ALTER TABLE t SET SCHEMA s2",
        "CREATE TABLE kid () INHERITS (t)",
        "ALTER TABLE other INHERIT t",
        &format!("DROP TRIGGER zdm_sync_{id} ON t"),
        &format!("ALTER TABLE t DISABLE TRIGGER zdm_sync_{id}"),
        &format!("ALTER TRIGGER zdm_sync_{id} ON t RENAME TO quiet"),
        "ALTER TABLE t DISABLE TRIGGER ALL",
    ] {
        let msg = expect_err(&mut owner, sql, "55000");
        assert!(msg.contains(&format!("zdm migration {id}")), "{sql}: {msg}");
    }
    let msg = expect_err(&mut owner, "DROP SCHEMA public CASCADE", "55000");
    assert!(msg.contains("zdm migration"), "{msg}");
    let msg = expect_err(&mut su, "ALTER TABLE t OWNER TO outsider", "55000");
    assert!(msg.contains("change the owner"), "{msg}");
    // A default on the new column would win over every old-version INSERT.
    let msg = expect_err(&mut owner, "ALTER TABLE t ALTER COLUMN b SET DEFAULT 'x'", "55000");
    assert!(msg.contains("default or identity"), "{msg}");
    expect_err(&mut owner, "ALTER TABLE t ALTER COLUMN b ADD GENERATED ALWAYS AS IDENTITY", "55000");
    owner
        .batch_execute("CREATE TABLE pt (id bigint NOT NULL, a text, pad text, b text) PARTITION BY RANGE (id)")
        .unwrap();
    expect_err(&mut owner, "ALTER TABLE pt ATTACH PARTITION t FOR VALUES FROM (0) TO (1000000)", "55000");
    // A default on the old column too: the new column's mark carries its value.
    let msg = expect_err(&mut owner, "ALTER TABLE t ALTER COLUMN a SET DEFAULT 'dflt'", "55000");
    assert!(msg.contains("change the default"), "{msg}");
    // Unrelated DDL on the table is fine.
    owner.batch_execute("ALTER TABLE t ADD COLUMN extra int; ALTER TABLE t DROP COLUMN extra; ALTER TABLE t RENAME COLUMN pad TO pad2").unwrap();
    assert_eq!(columns(&mut owner, "t"), "id,a,pad2,b");

    // A superuser bypasses event triggers (session_replication_role) and drops it.
    su.batch_execute("SET session_replication_role = replica; DROP TABLE t; RESET session_replication_role").unwrap();
    expect_err(&mut owner, &format!("SELECT zdm.backfill_batch({id})"), "42P01");
    let msg = expect_err(&mut owner, &format!("SELECT zdm.contract({id})"), "42P01");
    assert!(msg.contains("no longer exists"), "{msg}");
    owner.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
    let (phase, _, _, _) = status_row(&mut owner, id);
    assert_eq!(phase, "aborted");
    // After the migration the same DDL is allowed again.
    let id2: i64 = owner.query_one("SELECT zdm.expand_rename('other', 'a', 'b', background => false)", &[]).unwrap().get(0);
    owner.execute("SELECT zdm.abort($1)", &[&id2]).unwrap();
    owner.batch_execute("ALTER TABLE other RENAME TO other2").unwrap();
}

/// A background backfill whose table is dropped (guard bypassed) fails with
/// the reason; `wait` reports it; abort closes the migration.
#[test]
fn table_dropped_mid_job_fails_the_job_clearly() {
    let cluster = Cluster::start("dropmid", &[]);
    let mut c = cluster.create_db("d");
    make_table(&mut c, "t", 100_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 500, pause_ms => 200, target_batch_ms => 0)", &[&id]).unwrap();
    wait_for("first batch", Duration::from_secs(30), || (status_row(&mut c, id).2 > 0).then_some(()));
    c.batch_execute("SET session_replication_role = replica; DROP TABLE t; RESET session_replication_role").unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.wait({id}, '1 minute')"), "55000");
    assert!(msg.contains("no longer exists"), "{msg}");
    c.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
    assert_eq!(status_row(&mut c, id).0, "aborted");
}

/// `expand_rename` then `validate_not_null` on the new column in one
/// transaction (a `psql -1` file): the constraint waits for the backfill
/// instead of failing on the NULLs it has not filled yet. Repeated, since
/// the v0.1 race lost 12 of 16 tries.
#[test]
fn not_null_on_the_new_column_waits_for_the_backfill() {
    let cluster = Cluster::start("order", &[]);
    let mut c = cluster.create_db("ord");
    for round in 0..4 {
        let t = format!("t{round}");
        make_table(&mut c, &t, 10_000);
        let mut tx = c.transaction().unwrap();
        let id: i64 = tx.query_one(&format!("SELECT zdm.expand_rename('{t}', 'a', 'b')"), &[]).unwrap().get(0);
        let nn: i64 = tx.query_one(&format!("SELECT zdm.validate_not_null('{t}', 'b')"), &[]).unwrap().get(0);
        tx.commit().unwrap();
        let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&nn]).unwrap().get(0);
        assert_eq!(phase, "contracted", "round {round}");
        assert_eq!(status_row(&mut c, id).0, "backfilled");
        let notnull: bool = c
            .query_one(&format!("SELECT attnotnull FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'b'"), &[])
            .unwrap()
            .get(0);
        assert!(notnull);
        c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    }
}

/// Pause and cancel on a constraint migration take effect (between steps):
/// here it waits for a rename that is never backfilled, is paused, then
/// cancelled; nothing is added and `wait` says so.
#[test]
fn pause_and_cancel_work_on_constraint_migrations() {
    let cluster = Cluster::start("cpause", &[]);
    let mut c = cluster.create_db("cp");
    make_table(&mut c, "t", 1000);
    let mut tx = c.transaction().unwrap();
    let _id: i64 = tx.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let nn: i64 = tx.query_one("SELECT zdm.validate_not_null('t', 'b')", &[]).unwrap().get(0);
    tx.commit().unwrap();
    wait_for("waiting for the backfill", Duration::from_secs(30), || {
        let r: Option<String> = c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&nn]).unwrap().get(0);
        r.filter(|r| r.contains("waiting for the backfill")).map(|_| ())
    });
    c.execute("SELECT zdm.pause($1)", &[&nn]).unwrap();
    wait_for("paused", Duration::from_secs(10), || {
        let r: Option<String> = c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&nn]).unwrap().get(0);
        r.filter(|r| r.contains("paused")).map(|_| ())
    });
    c.execute("SELECT zdm.cancel($1)", &[&nn]).unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.wait({nn}, '30 seconds')"), "55000");
    assert!(msg.contains("cancelled"), "{msg}");
    let checks: i64 = c.query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'c'", &[]).unwrap().get(0);
    assert_eq!(checks, 0);
}

/// Two sessions expand the same column at once: the second waits for the
/// first's lock, then sees its migration and refuses (55000). Only one
/// migration exists and writes keep working.
#[test]
fn concurrent_expands_of_one_column() {
    let cluster = Cluster::start("concurrent", &[]);
    let mut c1 = cluster.create_db("cc");
    make_table(&mut c1, "t", 1000);
    let mut c2 = cluster.connect("cc");
    c1.batch_execute("BEGIN; SELECT zdm.expand_rename('t', 'a', 'b', background => false)").unwrap();
    let h = std::thread::spawn(move || {
        let r = c2.query_one("SELECT zdm.expand_rename('t', 'a', 'c', background => false)", &[]);
        sqlstate(r)
    });
    std::thread::sleep(Duration::from_millis(1500));
    c1.batch_execute("COMMIT").unwrap();
    let (code, msg) = h.join().unwrap();
    assert_eq!(code, "55000", "{msg}");
    let n: i64 = c1.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    assert_eq!(columns(&mut c1, "t"), "id,a,pad,b");
}

/// Constraints put on the old column after expand block contract (2BP01,
/// listed); a 63-byte CHECK name is carried; contract refuses (55000, with
/// the count) while rows are out of sync, and drops nothing.
#[test]
fn contract_refuses_to_lose_constraints_or_rows() {
    let cluster = Cluster::start("contract", &[]);
    let mut c = cluster.create_db("ct");
    let long = "c".repeat(63);
    c.batch_execute(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, a text CONSTRAINT {long} CHECK (a <> ''));
         INSERT INTO t SELECT g, 'orig-' || g FROM generate_series(1, 5000) g;"
    ))
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    while c.query_one("SELECT zdm.backfill_batch($1)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    c.batch_execute("ALTER TABLE t ADD CONSTRAINT late CHECK (length(a) < 100)").unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "2BP01");
    assert!(msg.contains("late"), "{msg}");
    c.batch_execute("ALTER TABLE t DROP CONSTRAINT late; ALTER TABLE t ALTER COLUMN a SET NOT NULL").unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "2BP01");
    assert!(msg.contains("NOT NULL"), "{msg}");
    c.batch_execute("ALTER TABLE t ALTER COLUMN a DROP NOT NULL").unwrap();
    // The sync trigger fires under session_replication_role = replica too
    // (ENABLE ALWAYS): what a logical replication subscription applies stays in sync.
    c.batch_execute("SET session_replication_role = replica; UPDATE t SET a = 'replicated' WHERE id = 100; RESET session_replication_role").unwrap();
    let b: String = c.query_one("SELECT b FROM t WHERE id = 100", &[]).unwrap().get(0);
    assert_eq!(b, "replicated");
    // A superuser who bypasses the guard and disables the trigger leaves rows out of sync.
    c.batch_execute(&format!(
        "SET session_replication_role = replica; ALTER TABLE t DISABLE TRIGGER zdm_sync_{id};
         UPDATE t SET a = 'changed' WHERE id <= 7;
         ALTER TABLE t ENABLE ALWAYS TRIGGER zdm_sync_{id}; RESET session_replication_role"
    ))
    .unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("7 row(s)"), "{msg}");
    assert_eq!(columns(&mut c, "t"), "id,a,b");
    c.batch_execute("UPDATE t SET b = a WHERE b IS DISTINCT FROM a").unwrap();
    // An inheritance child attached with the guard bypassed has neither
    // trigger nor backfill, and dropping the old column would recurse into
    // it: contract refuses (55000) and drops nothing.
    c.batch_execute(
        "SET session_replication_role = replica; CREATE TABLE kid () INHERITS (t);
         INSERT INTO kid (id, a) VALUES (900001, 'kid'); RESET session_replication_role",
    )
    .unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("inheritance parent"), "{msg}");
    assert_eq!(columns(&mut c, "kid"), "id,a,b");
    c.batch_execute("SET session_replication_role = replica; ALTER TABLE kid NO INHERIT t; RESET session_replication_role").unwrap();
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let kid: String = c.query_one("SELECT a FROM kid", &[]).unwrap().get(0);
    assert_eq!(kid, "kid");
    let name: String = c.query_one("SELECT conname::text FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'c'", &[]).unwrap().get(0);
    assert_eq!(name, long);
}

/// The launcher never starts a second worker for a job whose worker is
/// starting: a worker that cannot claim its job yet (row locked) is the only
/// one for that job, however long it waits.
#[test]
fn launcher_starts_one_worker_per_job() {
    let cluster = Cluster::start("launcher", &[]);
    let c = cluster.create_db("postgres_zdm");
    drop(c);
    // The launcher serves zdm.database = 'postgres'.
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS zdm").unwrap();
    make_table(&mut c, "t", 200_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 500, pause_ms => 100, target_batch_ms => 0)", &[&id]).unwrap();
    let pid = wait_for("worker", Duration::from_secs(30), || worker_pid(&mut c, id));
    let mut holder = cluster.connect("postgres");
    holder.batch_execute(&format!("BEGIN; SELECT * FROM zdm.jobs WHERE migration_id = {id} FOR UPDATE")).unwrap();
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let mut most = 0i64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'zdm backfill'", &[])
            .unwrap()
            .get(0);
        most = most.max(n);
        std::thread::sleep(Duration::from_millis(100));
    }
    holder.batch_execute("ROLLBACK").unwrap();
    assert!(most <= 1, "{most} workers for one job");
    backfilled(&mut c, id);
}

/// Without a launcher, `wait` on a job whose worker was killed fails at once
/// with 55000 and what to do, instead of sitting out its timeout.
#[test]
fn wait_fails_fast_when_nothing_will_resume_the_job() {
    let cluster = Cluster::start("nolauncher", &["shared_preload_libraries = ''"]);
    let mut c = cluster.create_db("nl");
    make_table(&mut c, "t", 200_000);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 500, pause_ms => 200, target_batch_ms => 0)", &[&id]).unwrap();
    let pid = wait_for("worker", Duration::from_secs(30), || worker_pid(&mut c, id));
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let started = Instant::now();
    let msg = expect_err(&mut c, &format!("SELECT zdm.wait({id}, '5 minutes')"), "55000");
    assert!(msg.contains("no zdm launcher"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // A worker that dies while `wait` already runs: the same, not the
    // timeout (pg_stat_activity is read once per transaction unless wait
    // drops its copy between polls).
    c.query_one("SELECT zdm.start_backfill($1, batch_size => 500, pause_ms => 200, target_batch_ms => 0)", &[&id]).unwrap();
    let pid = wait_for("a new worker", Duration::from_secs(30), || worker_pid(&mut c, id).filter(|p| *p != pid));
    let mut waiter = cluster.connect("nl");
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        let msg = expect_err(&mut waiter, &format!("SELECT zdm.wait({id}, '5 minutes')"), "55000");
        (msg, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let (msg, took) = waiting.join().unwrap();
    assert!(msg.contains("no zdm launcher"), "{msg}");
    assert!(took < Duration::from_secs(60), "wait noticed the worker's end after {took:?}");
    c.query_one("SELECT zdm.start_backfill($1, pause_ms => 0)", &[&id]).unwrap();
    backfilled(&mut c, id);
}

/// pg_dump of a database with a rename half-backfilled, restored into a
/// fresh cluster (new OIDs for the table and the role): zdm finishes it.
#[test]
fn pg_dump_restore_with_a_migration_in_flight() {
    let source = Cluster::start("dump", &[]);
    let (_su, mut owner, _) = tenant_db(&source, "src");
    make_table(&mut owner, "t", 50_000);
    let id: i64 = owner.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    for _ in 0..5 {
        owner.query_one("SELECT zdm.backfill_batch($1, 2000)", &[&id]).unwrap();
    }
    owner.execute("UPDATE t SET a = 'new-' || id WHERE id % 100 = 0", &[]).unwrap();
    // and a type change half-way: its trigger's conversion names built-in
    // functions by OID, which a restore keeps
    owner.batch_execute("CREATE TABLE u (id int PRIMARY KEY, n int); INSERT INTO u SELECT g, g FROM generate_series(1, 20000) g;").unwrap();
    let ct: i64 = owner.query_one("SELECT zdm.expand_change_type('u', 'n', 'bigint', background => false)", &[]).unwrap().get(0);
    owner.query_one("SELECT zdm.backfill_batch($1, 2000)", &[&ct]).unwrap();
    let dump = source.dir.join("src.dump");
    let out = source.client_program("pg_dump", &["-U", "postgres", "-Fc", "-f", dump.to_str().unwrap(), "src"]);
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));

    let target = Cluster::start("restore", &[]);
    let mut admin = target.connect("postgres");
    admin.batch_execute("CREATE ROLE filler; CREATE ROLE outsider LOGIN; CREATE ROLE owner LOGIN").unwrap();
    admin.batch_execute("CREATE DATABASE dst OWNER owner").unwrap();
    let out = target.client_program("pg_restore", &["-U", "postgres", "-d", "dst", dump.to_str().unwrap()]);
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut owner = target.connect_as("dst", "owner");
    let (phase, _, done, _) = status_row(&mut owner, id);
    assert!(phase == "backfilling" || phase == "expanded", "{phase}");
    assert!(done > 0);
    // Writes after the restore still go through the restored sync trigger.
    owner.execute("UPDATE t SET a = 'after-' || id WHERE id % 100 = 1", &[]).unwrap();
    owner.query_one("SELECT zdm.start_backfill($1, pause_ms => 0)", &[&id]).unwrap();
    backfilled(&mut owner, id);
    owner.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let wrong: i64 = owner
        .query_one(
            "SELECT count(*) FROM t WHERE b IS DISTINCT FROM CASE WHEN id % 100 = 0 THEN 'new-' || id \
                 WHEN id % 100 = 1 THEN 'after-' || id ELSE 'orig-' || id END",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    owner.execute("UPDATE u SET n = n + 1000000 WHERE id % 10 = 0", &[]).unwrap();
    owner.query_one("SELECT zdm.start_backfill($1, pause_ms => 0)", &[&ct]).unwrap();
    backfilled(&mut owner, ct);
    owner.execute("SELECT zdm.contract($1)", &[&ct]).unwrap();
    let wrong: i64 = owner
        .query_one("SELECT count(*) FROM u WHERE n IS DISTINCT FROM CASE WHEN id % 10 = 0 THEN id + 1000000 ELSE id END", &[])
        .unwrap()
        .get(0);
    let ty: String = owner.query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'u'::regclass AND attname = 'n'", &[]).unwrap().get(0);
    assert_eq!((wrong, ty.as_str()), (0, "bigint"), "the restored type change finishes");
}

/// Calls of a zdm trigger function counted in this transaction
/// (`track_functions = all` counts C functions).
fn trigger_calls(c: &mut postgres::Transaction, function: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions WHERE schemaname = 'zdm' AND funcname = $1",
        &[&function],
    )
    .unwrap()
    .get(0)
}

/// A rename's batches run without the migration's own sync trigger (their
/// `SET new = old` leaves each row as it would; PostgreSQL would lock every
/// row before calling it): it is not called for a backfilled row, yet it is
/// for a write a user's AFTER trigger makes after a batch row and for the
/// application's writes; the user's triggers fire for every backfilled row.
/// Beside a user's BEFORE UPDATE trigger that changes the old column, and on
/// a table with rules, the batches keep the sync trigger: every row in sync.
/// A type change's batches still call its convert trigger.
#[test]
fn a_renames_batches_leave_out_only_its_own_trigger() {
    let cluster = Cluster::start("bypass", &[]);
    let mut c = cluster.create_db("bypass");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text);
         INSERT INTO t (id, a) SELECT g, 'orig-' || g FROM generate_series(1, 2000) g;
         CREATE TABLE log (id int);
         CREATE FUNCTION logit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO public.log VALUES (NEW.id);
             IF NEW.id = 7 AND NEW.a = 'orig-7' THEN UPDATE public.t SET a = 'nested' WHERE id = 8; END IF;
             RETURN NULL;
           END $$;
         CREATE TRIGGER z_log AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION logit();
         CREATE TABLE u (id int PRIMARY KEY, a text);
         INSERT INTO u (id, a) SELECT g, 'orig-' || g FROM generate_series(1, 300) g;
         CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.a := upper(NEW.a); RETURN NEW; END $$;
         CREATE TRIGGER a_shout BEFORE UPDATE ON u FOR EACH ROW EXECUTE FUNCTION shout();
         CREATE TABLE r (id int PRIMARY KEY, a text);
         INSERT INTO r (id, a) SELECT g, 'orig-' || g FROM generate_series(1, 200) g;
         CREATE RULE r_also AS ON UPDATE TO r DO ALSO NOTIFY r_changed;
         CREATE TABLE n (id int PRIMARY KEY, v int);
         INSERT INTO n SELECT g, g FROM generate_series(1, 500) g;
         CREATE TABLE p (id int NOT NULL, a text) PARTITION BY RANGE (id);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (1) TO (101);
         CREATE TABLE p2 (a text, dropped int, id int NOT NULL);
         ALTER TABLE p2 DROP COLUMN dropped;
         ALTER TABLE p ATTACH PARTITION p2 FOR VALUES FROM (101) TO (201);
         INSERT INTO p SELECT g, 'orig-' || g FROM generate_series(1, 200) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let shouted: i64 = c.query_one("SELECT zdm.expand_rename('u', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let tree: i64 = c.query_one("SELECT zdm.expand_rename('p', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let ruled: i64 = c.query_one("SELECT zdm.expand_rename('r', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let ct: i64 = c.query_one("SELECT zdm.expand_change_type('n', 'v', 'bigint', background => false)", &[]).unwrap().get(0);
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SET LOCAL track_functions = 'all'").unwrap();
    while tx.query_one("SELECT zdm.backfill_batch($1, 100000)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    // Only the write the user's AFTER trigger made (row 8) went through it.
    assert_eq!(trigger_calls(&mut tx, "sync_trigger"), 1, "the sync trigger ran for backfilled rows");
    tx.batch_execute("UPDATE t SET a = 'app' WHERE id = 1").unwrap();
    assert_eq!(trigger_calls(&mut tx, "sync_trigger"), 2, "the application's write must go through the sync trigger");
    // A partitioned table's batches, leaf by leaf (one with another column
    // order and a dropped column): the leaves' clones are left out too.
    for _ in 0..20 {
        tx.query_one("SELECT zdm.backfill_batch($1, 100000)", &[&tree]).unwrap();
        let phase: String = tx.query_one("SELECT phase::text FROM zdm.migrations WHERE id = $1", &[&tree]).unwrap().get(0);
        if phase == "backfilled" {
            break;
        }
    }
    assert_eq!(trigger_calls(&mut tx, "sync_trigger"), 2, "the sync trigger ran for a leaf's backfilled rows");
    while tx.query_one("SELECT zdm.backfill_batch($1, 100000)", &[&shouted]).unwrap().get::<_, i64>(0) > 0 {}
    assert_eq!(trigger_calls(&mut tx, "sync_trigger"), 2 + 300, "beside another BEFORE UPDATE trigger the batches keep the sync trigger");
    // A rule's action comes from the batch's own text (an INSTEAD rule's
    // UPDATE would stand in for it): a table with rules keeps its trigger.
    while tx.query_one("SELECT zdm.backfill_batch($1, 100000)", &[&ruled]).unwrap().get::<_, i64>(0) > 0 {}
    assert_eq!(trigger_calls(&mut tx, "sync_trigger"), 2 + 300 + 200, "on a table with rules the batches keep the sync trigger");
    while tx.query_one("SELECT zdm.backfill_batch($1, 100000)", &[&ct]).unwrap().get::<_, i64>(0) > 0 {}
    let converted = trigger_calls(&mut tx, "convert_trigger");
    assert!(converted >= 500, "a type change's batches convert through their trigger ({converted} calls for 500 rows)");
    tx.commit().unwrap();
    for table in ["t", "u", "r", "p"] {
        let out_of_sync: i64 = c.query_one(&format!("SELECT count(*) FROM {table} WHERE a IS DISTINCT FROM b"), &[]).unwrap().get(0);
        assert_eq!(out_of_sync, 0, "rows of {table} out of sync");
    }
    let row8: String = c.query_one("SELECT b FROM t WHERE id = 8", &[]).unwrap().get(0);
    assert_eq!(row8, "nested");
    let row1: String = c.query_one("SELECT b FROM t WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(row1, "app");
    let logged: i64 = c.query_one("SELECT count(*) FROM log", &[]).unwrap().get(0);
    assert_eq!(logged, 2000 + 1 + 1, "the user's AFTER trigger fires for every backfilled row, the nested write and the application's");
    for m in [id, tree, shouted, ruled, ct] {
        c.execute("SELECT zdm.contract($1)", &[&m]).unwrap();
    }
    let unconverted: i64 = c.query_one("SELECT count(*) FROM n WHERE v IS DISTINCT FROM id::bigint", &[]).unwrap().get(0);
    assert_eq!(unconverted, 0);
}
