//! Host side: the second hostile review of v0.2 (issue "Nothing lost, nobody
//! blocked, nothing leaked — second round"). Each test reproduces one way
//! v0.2 lost a write, let one role block others, or leaked a row value, on a
//! real cluster with real sessions; plus the sync trigger's whole decision
//! table, checked against PostgreSQL alone.

mod common;

use common::*;
use postgres::Client;
use std::io::Write;
use std::time::Duration;

fn roles(c: &mut Client) {
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'owner') THEN CREATE ROLE owner LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outsider') THEN CREATE ROLE outsider LOGIN; END IF;
         END $$;
         GRANT ALL ON SCHEMA public TO owner;",
    )
    .unwrap();
}

fn one_i64(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// A domain with a DEFAULT: the old application's INSERTs, COPY and upserts
/// keep what they wrote (v0.2 stored the domain's default in both columns),
/// also after ALTER DOMAIN … SET DEFAULT, through backfill and contract.
#[test]
fn a_domain_default_never_overwrites_what_the_old_application_writes() {
    let cluster = Cluster::start("domaindefault", &[]);
    let mut c = cluster.create_db("dom");
    c.batch_execute(
        "CREATE DOMAIN email_t AS text DEFAULT 'unknown@example.invalid';
         CREATE TABLE users (id int PRIMARY KEY, email email_t);
         INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let id = one_i64(&mut c, "SELECT zdm.expand_rename('users', 'email', 'email_address', background => false)");
    // Existing rows: the new column is NULL until the backfill, not the domain's default.
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM users WHERE email_address IS NOT NULL"), 0);
    c.batch_execute("INSERT INTO users (id, email) VALUES (1001, 'alice@example.com'), (1002, 'bob@example.com')").unwrap();
    c.batch_execute("INSERT INTO users (id, email) VALUES (5, 'five@example.com') ON CONFLICT (id) DO UPDATE SET email = excluded.email").unwrap();
    c.batch_execute("INSERT INTO users (id, email) VALUES (1003, 'carol@example.com') ON CONFLICT (id) DO UPDATE SET email = excluded.email").unwrap();
    let mut w = c.copy_in("COPY users (id, email) FROM STDIN").unwrap();
    w.write_all(b"1004\tdan@example.com\n1005\terin@example.com\n").unwrap();
    w.finish().unwrap();
    c.batch_execute("ALTER DOMAIN email_t SET DEFAULT 'changed@example.invalid'").unwrap();
    c.batch_execute("INSERT INTO users (id, email) VALUES (1006, 'frank@example.com')").unwrap();
    // Neither column named: the old column's (domain) default, in both.
    c.batch_execute("INSERT INTO users (id) VALUES (1007)").unwrap();
    let expected = [
        (1001, "alice@example.com"),
        (1002, "bob@example.com"),
        (5, "five@example.com"),
        (1003, "carol@example.com"),
        (1004, "dan@example.com"),
        (1005, "erin@example.com"),
        (1006, "frank@example.com"),
        (1007, "changed@example.invalid"),
    ];
    let check = |c: &mut Client, both: bool| {
        for (k, v) in expected {
            let r = c.query_one("SELECT email::text, email_address::text FROM users WHERE id = $1", &[&k]).unwrap();
            if both {
                assert_eq!((r.get::<_, Option<String>>(0).as_deref(), r.get::<_, Option<String>>(1).as_deref()), (Some(v), Some(v)), "row {k}");
            } else {
                assert_eq!(r.get::<_, Option<String>>(0).as_deref(), Some(v), "row {k}");
            }
        }
    };
    check(&mut c, true);
    while one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id}, 300)")) > 0 {}
    check(&mut c, true);
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM users WHERE email_address IS DISTINCT FROM email"), 0);
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    for (k, v) in expected {
        let got: Option<String> = c.query_one("SELECT email_address::text FROM users WHERE id = $1", &[&k]).unwrap().get(0);
        assert_eq!(got.as_deref(), Some(v), "row {k} after contract");
    }
    // After contract the domain's default applies again, as without zdm.
    c.batch_execute("INSERT INTO users (id) VALUES (2000)").unwrap();
    let got: String = c.query_one("SELECT email_address::text FROM users WHERE id = 2000", &[]).unwrap().get(0);
    assert_eq!(got, "changed@example.invalid");
}

/// A NULL written through the new column is a write, on a row the backfill
/// has not reached: UPDATE, MERGE, an upsert and an explicit INSERT keep it
/// (v0.2 brought back the old value, or the old column's default).
#[test]
fn a_null_written_through_the_new_column_is_kept() {
    let cluster = Cluster::start("nullwrite", &[]);
    let mut c = cluster.create_db("nulls");
    c.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text DEFAULT 'none@example.invalid', pad text DEFAULT repeat('x', 200));
         INSERT INTO users (id, email) SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    let id = one_i64(&mut c, "SELECT zdm.expand_rename('users', 'email', 'email_address', background => false)");
    assert!(one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id}, 100)")) > 0);
    let waiting = |c: &mut Client, k: i32| -> bool {
        c.query_one("SELECT email_address IS NULL AND email IS NOT NULL FROM users WHERE id = $1", &[&k]).unwrap().get(0)
    };
    for k in [1990, 1991, 1992] {
        assert!(waiting(&mut c, k), "row {k} should not be backfilled yet");
    }
    c.batch_execute("UPDATE users SET email_address = NULL WHERE id = 1990").unwrap();
    c.batch_execute(
        "MERGE INTO users u USING (VALUES (1991)) s(id) ON u.id = s.id WHEN MATCHED THEN UPDATE SET email_address = NULL",
    )
    .unwrap();
    c.batch_execute(
        "INSERT INTO users (id, email_address) VALUES (1992, NULL) ON CONFLICT (id) DO UPDATE SET email_address = excluded.email_address",
    )
    .unwrap();
    c.batch_execute("INSERT INTO users (id, email_address) VALUES (5000, NULL)").unwrap();
    c.batch_execute(
        "INSERT INTO users (id, email_address) VALUES (5001, NULL) ON CONFLICT (id) DO UPDATE SET email_address = excluded.email_address",
    )
    .unwrap();
    let nulls = "SELECT count(*) FROM users WHERE id IN (1990, 1991, 1992, 5000, 5001) AND email IS NULL AND email_address IS NULL";
    assert_eq!(one_i64(&mut c, nulls), 5);
    while one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id}, 500)")) > 0 {}
    assert_eq!(one_i64(&mut c, nulls), 5);
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(
        one_i64(&mut c, "SELECT count(*) FROM users WHERE id IN (1990, 1991, 1992, 5000, 5001) AND email_address IS NULL"),
        5
    );
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM users WHERE id < 1990 AND email_address IS DISTINCT FROM 'user' || id || '@example.com'"), 0);
}

/// The decision table (trigger/written.rs), exhaustively: every statement
/// kind (INSERT, UPDATE, upsert on a new and an existing row, MERGE's UPDATE
/// and INSERT, COPY, SET … = DEFAULT) × through the old or the new column ×
/// NULL or a value × a row backfilled, waiting for the backfill, all NULL or
/// absent × a column default, a domain default or none. Each statement also
/// runs on a reference table with just the one column, as PostgreSQL alone
/// would keep it; both columns of every row must equal the reference,
/// before the backfill, after it and after contract.
#[test]
fn the_sync_trigger_decides_from_what_the_statement_wrote() {
    let cluster = Cluster::start("decisions", &[]);
    let mut c = cluster.create_db("decide");
    c.batch_execute("CREATE DOMAIN dom_t AS text DEFAULT 'domain-default'").unwrap();
    let shapes = [("coldef", "text DEFAULT 'column-default'"), ("domdef", "dom_t"), ("nodef", "text")];
    let prestates = ["synced", "waiting", "nulls", "absent"];
    let values = [Some("written"), None];
    let mut cases = Vec::new();
    let mut k = 0;
    for (shape, _) in shapes {
        for pre in prestates {
            for through in ["old", "new"] {
                for value in values {
                    for stmt in ["insert", "insert_omit", "update", "update_other", "update_default", "upsert", "merge", "copy"] {
                        k += 1;
                        cases.push((shape, pre, through, value, stmt, k));
                    }
                }
            }
        }
    }
    for (shape, ty) in shapes {
        c.batch_execute(&format!(
            "CREATE TABLE t_{shape} (id int PRIMARY KEY, a {ty}, other int DEFAULT 0);
             CREATE TABLE r_{shape} (id int PRIMARY KEY, v {ty}, other int DEFAULT 0);"
        ))
        .unwrap();
    }
    for &(shape, pre, _, _, _, k) in &cases {
        let v = match pre {
            "synced" | "waiting" => "'orig'",
            "nulls" => "NULL",
            _ => continue,
        };
        c.batch_execute(&format!("INSERT INTO t_{shape} (id, a) VALUES ({k}, {v}); INSERT INTO r_{shape} (id, v) VALUES ({k}, {v});")).unwrap();
    }
    let mut ids = Vec::new();
    for (shape, _) in shapes {
        ids.push(one_i64(&mut c, &format!("SELECT zdm.expand_rename('t_{shape}', 'a', 'b', background => false)")));
    }
    for &(shape, pre, _, _, _, k) in &cases {
        if pre == "synced" {
            c.batch_execute(&format!("UPDATE t_{shape} SET b = a WHERE id = {k}")).unwrap();
        }
    }
    for &(shape, _, through, value, stmt, k) in &cases {
        let lit = value.map(|v| format!("'{v}'")).unwrap_or_else(|| "NULL".into());
        for (table, col) in [(format!("t_{shape}"), if through == "old" { "a" } else { "b" }), (format!("r_{shape}"), "v")] {
            let sql = match stmt {
                // A key that exists makes the INSERT fail on both tables alike.
                "insert" => format!("INSERT INTO {table} (id, {col}) VALUES ({k}, {lit}) ON CONFLICT (id) DO NOTHING"),
                "insert_omit" => format!("INSERT INTO {table} (id, other) VALUES ({k}, 1) ON CONFLICT (id) DO NOTHING"),
                "update" => format!("UPDATE {table} SET {col} = {lit} WHERE id = {k}"),
                "update_other" => format!("UPDATE {table} SET other = other + 1 WHERE id = {k}"),
                "update_default" => format!("UPDATE {table} SET {col} = DEFAULT WHERE id = {k}"),
                "upsert" => format!(
                    "INSERT INTO {table} (id, {col}) VALUES ({k}, {lit}) ON CONFLICT (id) DO UPDATE SET {col} = excluded.{col}"
                ),
                "merge" => format!(
                    "MERGE INTO {table} t USING (VALUES ({k}, {lit}::text)) s(id, val) ON t.id = s.id \
                     WHEN MATCHED THEN UPDATE SET {col} = s.val WHEN NOT MATCHED THEN INSERT (id, {col}) VALUES (s.id, s.val)"
                ),
                "copy" => {
                    if c.query_one(&format!("SELECT count(*) FROM {table} WHERE id = {k}"), &[]).unwrap().get::<_, i64>(0) == 0 {
                        let mut w = c.copy_in(&format!("COPY {table} (id, {col}) FROM STDIN")).unwrap();
                        w.write_all(format!("{k}\t{}\n", value.unwrap_or("\\N")).as_bytes()).unwrap();
                        w.finish().unwrap();
                    }
                    continue;
                }
                _ => unreachable!(),
            };
            c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    let wrong = |c: &mut Client, stage: &str, contracted: bool| {
        let mut bad = Vec::new();
        for &(shape, pre, through, value, stmt, k) in &cases {
            let cols = if contracted { "b::text, b::text" } else { "a::text, b::text" };
            let got = c.query_opt(&format!("SELECT {cols} FROM t_{shape} WHERE id = {k}"), &[]).unwrap();
            let want = c.query_opt(&format!("SELECT v::text FROM r_{shape} WHERE id = {k}"), &[]).unwrap();
            let got = got.map(|r| (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)));
            let want = want.map(|r| r.get::<_, Option<String>>(0));
            // A waiting row the statement did not write (an INSERT of an
            // existing key) still waits for the backfill.
            let untouched = pre == "waiting" && !contracted && stage.starts_with("before") && matches!(stmt, "insert" | "insert_omit" | "copy");
            let waits = untouched && got.as_ref().map(|(a, b)| (a.clone(), b.clone())) == want.as_ref().map(|v| (v.clone(), None));
            if !waits && got.as_ref().map(|(a, b)| (a.clone(), b.clone())) != want.as_ref().map(|v| (v.clone(), v.clone())) {
                bad.push(format!("{stage}: {shape} {pre} via {through} {value:?} {stmt}: got {got:?}, PostgreSQL alone {want:?}"));
            }
        }
        bad
    };
    let bad = wrong(&mut c, "before the backfill", false);
    assert!(bad.is_empty(), "{} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    for &id in &ids {
        while one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id}, 1000)")) > 0 {}
    }
    let bad = wrong(&mut c, "after the backfill", false);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    for &id in &ids {
        c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    }
    let bad = wrong(&mut c, "after contract", true);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Carried foreign keys act as the original would, whichever fires first:
/// ON DELETE SET DEFAULT leaves the default (v0.2: NULL), and CASCADE, SET
/// NULL and ON UPDATE CASCADE leave what PostgreSQL alone leaves.
#[test]
fn carried_foreign_key_actions_match_the_original() {
    let cluster = Cluster::start("fkactions", &[]);
    let mut c = cluster.create_db("fk");
    c.batch_execute(
        "CREATE TABLE parent (id int PRIMARY KEY);
         INSERT INTO parent SELECT generate_series(0, 20);
         CREATE TABLE c_default (id int PRIMARY KEY, pid int DEFAULT 0 REFERENCES parent ON DELETE SET DEFAULT);
         CREATE TABLE c_null (id int PRIMARY KEY, pid int REFERENCES parent ON DELETE SET NULL);
         CREATE TABLE c_cascade (id int PRIMARY KEY, pid int REFERENCES parent ON DELETE CASCADE ON UPDATE CASCADE);
         INSERT INTO c_default SELECT g, g % 5 + 1 FROM generate_series(1, 100) g;
         INSERT INTO c_null SELECT g, g % 5 + 1 FROM generate_series(1, 100) g;
         INSERT INTO c_cascade SELECT g, g % 5 + 1 FROM generate_series(1, 100) g;",
    )
    .unwrap();
    // Triggers fire in name order, RI_ConstraintTrigger_a_<oid>: OIDs past
    // 100000 make the copies' triggers sort (and fire) before the originals'
    // (5-digit OIDs).
    c.batch_execute("SELECT count(lo_create(0)) FROM generate_series(1, 100000 - (SELECT max(oid)::int FROM pg_class))").unwrap();
    let mut ids = Vec::new();
    for t in ["c_default", "c_null", "c_cascade"] {
        ids.push(one_i64(&mut c, &format!("SELECT zdm.expand_rename('{t}', 'pid', 'parent_id', background => false)")));
    }
    let copies_first = one_i64(
        &mut c,
        "SELECT count(*) FROM pg_trigger o JOIN pg_trigger k ON k.tgrelid = o.tgrelid AND k.tgtype = o.tgtype
          WHERE o.tgrelid = 'parent'::regclass AND o.oid < 100000 AND k.oid >= 100000 AND k.tgname < o.tgname",
    );
    assert!(copies_first > 0, "the carried keys' action triggers should sort before the originals'");
    // Half the rows backfilled, half waiting.
    for &id in &ids {
        c.query_one(&format!("SELECT zdm.backfill_batch({id}, 50)"), &[]).unwrap();
    }
    c.batch_execute("DELETE FROM parent WHERE id IN (1, 3)").unwrap();
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM c_default WHERE id % 5 + 1 IN (1, 3) AND (pid, parent_id) IS DISTINCT FROM (0, 0)"), 0);
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM c_default WHERE pid = 0 AND parent_id = 0"), 40);
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM c_null WHERE pid IS NULL AND parent_id IS NULL"), 40);
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM c_cascade"), 60);
    c.batch_execute("DELETE FROM c_default WHERE pid = 2; DELETE FROM c_null WHERE pid = 2; UPDATE parent SET id = 102 WHERE id = 2").unwrap();
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM c_cascade WHERE pid = 102 AND parent_id = 102"), 20);
    for &id in &ids {
        while one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id}, 1000)")) > 0 {}
    }
    for t in ["c_default", "c_null", "c_cascade"] {
        assert_eq!(one_i64(&mut c, &format!("SELECT count(*) FROM {t} WHERE pid IS DISTINCT FROM parent_id")), 0, "{t}");
    }
}

/// zdm.wait between polls stops advertising an xmin only when the caller
/// holds no other snapshot: a cursor opened before a DELETE keeps every row
/// while a VACUUM runs during the wait (v0.2: 500 of 1000 rows gone).
#[test]
fn wait_keeps_the_rows_a_callers_cursor_still_sees() {
    let cluster = Cluster::start("waitcursor", &[]);
    let mut c = cluster.create_db("cur");
    make_table(&mut c, "t", 3000);
    // A slow table: the backfill takes well over the wait below.
    c.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.003); RETURN NEW; END $$;
         CREATE TRIGGER a_slow BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow();
         CREATE TABLE seen (id int); INSERT INTO seen SELECT generate_series(1, 1000);",
    )
    .unwrap();
    c.batch_execute("VACUUM seen").unwrap();
    let id = one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b')");
    let mut reader = cluster.connect("cur");
    reader.batch_execute("BEGIN; DECLARE cur CURSOR FOR SELECT * FROM seen;").unwrap();
    c.batch_execute("DELETE FROM seen WHERE id <= 500").unwrap();
    let vacuum = {
        let mut v = cluster.connect("cur");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            v.batch_execute("VACUUM seen").unwrap();
        })
    };
    reader.batch_execute("SAVEPOINT w").unwrap();
    match reader.query_one("SELECT zdm.wait($1, '5 seconds')", &[&id]) {
        Ok(_) => reader.batch_execute("RELEASE w").unwrap(),
        Err(e) => {
            assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
            reader.batch_execute("ROLLBACK TO w").unwrap();
        }
    }
    vacuum.join().unwrap();
    let moved = reader.execute("MOVE ALL FROM cur", &[]).unwrap();
    reader.batch_execute("COMMIT").unwrap();
    assert_eq!(moved, 1000, "the cursor lost rows a VACUUM removed during zdm.wait");
}

/// The sync trigger is zdm's, enabled ALWAYS, from expand to contract: the
/// guard refuses replacing it, re-enabling it (ALWAYS → ORIGIN) by name or
/// with ALL, and changing the old column's default; contract refuses a
/// trigger changed behind the guard's back (session_replication_role =
/// replica silences event triggers).
#[test]
fn the_sync_trigger_cannot_be_replaced_or_reenabled() {
    let cluster = Cluster::start("triggerguard", &[]);
    let mut su = cluster.create_db("trg");
    roles(&mut su);
    su.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text DEFAULT 'd'); ALTER TABLE t OWNER TO owner; INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;").unwrap();
    let mut owner = cluster.connect_as("trg", "owner");
    owner.batch_execute("CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$").unwrap();
    let id = one_i64(&mut owner, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)");
    let tg = format!("zdm_sync_{id}");
    for sql in [
        format!("CREATE OR REPLACE TRIGGER {tg} BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION noop()"),
        format!("ALTER TABLE t ENABLE TRIGGER {tg}"),
        "ALTER TABLE t ENABLE TRIGGER ALL".into(),
        "ALTER TABLE t ENABLE TRIGGER USER".into(),
        format!("ALTER TABLE t DISABLE TRIGGER {tg}"),
        "ALTER TABLE t ALTER COLUMN a SET DEFAULT 'other'".into(),
        "ALTER TABLE t ALTER COLUMN a DROP DEFAULT".into(),
        "ALTER TABLE t ALTER COLUMN b SET DEFAULT 'x'".into(),
    ] {
        let msg = expect_err(&mut owner, &sql, "55000");
        assert!(msg.contains(&format!("zdm migration {id}")), "{sql}: {msg}");
    }
    while one_i64(&mut owner, &format!("SELECT zdm.backfill_batch({id})")) > 0 {}
    // Behind the guard's back: a superuser silencing event triggers.
    su.batch_execute(&format!(
        "SET session_replication_role = replica; ALTER TABLE t ENABLE TRIGGER {tg}; RESET session_replication_role;"
    ))
    .unwrap();
    let msg = expect_err(&mut owner, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("ALWAYS"), "{msg}");
    su.batch_execute(&format!(
        "SET session_replication_role = replica; ALTER TABLE t ENABLE ALWAYS TRIGGER {tg};
         CREATE OR REPLACE TRIGGER {tg} BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION noop();
         ALTER TABLE t ENABLE ALWAYS TRIGGER {tg}; RESET session_replication_role;"
    ))
    .unwrap();
    let msg = expect_err(&mut owner, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("zdm's function"), "{msg}");
    owner.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
}

/// Row values in error texts are not for everyone: a failed unique build
/// and a failed conversion quote values; no role but the owner's members
/// finds them in any catalog table or view it can read.
#[test]
fn error_texts_with_row_values_are_shown_to_the_owners_members_only() {
    let cluster = Cluster::start("leaks", &[]);
    let mut su = cluster.create_db("leak");
    roles(&mut su);
    su.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, ssn text, age text);
         INSERT INTO people SELECT g, 'ssn-' || g, (g % 90)::text FROM generate_series(1, 2000) g;
         UPDATE people SET ssn = '078-05-1120' WHERE id IN (7, 8);
         UPDATE people SET age = 'secret-age-77' WHERE id = 1500;
         ALTER TABLE people OWNER TO owner;",
    )
    .unwrap();
    let mut owner = cluster.connect_as("leak", "owner");
    let mut outsider = cluster.connect_as("leak", "outsider");
    let idx = one_i64(&mut owner, "SELECT zdm.create_index('CREATE UNIQUE INDEX people_ssn ON people (ssn)')");
    let ct = one_i64(&mut owner, "SELECT zdm.expand_change_type('people', 'age', 'integer', 'age::integer')");
    for id in [idx, ct] {
        let _ = owner.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]);
        wait_for("the job to fail", Duration::from_secs(120), || {
            let s: Option<String> = owner.query_one("SELECT job_state FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
            (s.as_deref() == Some("failed") || s.is_none()).then_some(())
        });
    }
    let leaked = |c: &mut Client, secret: &str| -> Vec<String> {
        let readable: Vec<String> = c
            .query(
                "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables
                  WHERE table_schema = 'zdm' AND has_table_privilege(format('%I.%I', table_schema, table_name), 'SELECT')",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        readable
            .into_iter()
            .filter(|t| {
                c.query_one(&format!("SELECT count(*) FROM {t} x WHERE x::text LIKE '%' || $1 || '%'"), &[&secret]).unwrap().get::<_, i64>(0) > 0
            })
            .collect()
    };
    for secret in ["078-05-1120", "secret-age-77"] {
        assert_eq!(leaked(&mut outsider, secret), Vec::<String>::new(), "{secret} visible to outsider");
    }
    // The owner (and superusers) read the text in zdm.status.
    let shown: String = owner.query_one("SELECT last_error FROM zdm.status WHERE id = $1", &[&idx]).unwrap().get(0);
    assert!(shown.contains("078-05-1120"), "{shown}");
    let hidden: String = outsider.query_one("SELECT last_error FROM zdm.status WHERE id = $1", &[&idx]).unwrap().get(0);
    assert!(hidden.contains("23505") && hidden.contains("owner"), "{hidden}");
}
