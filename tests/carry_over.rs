//! Host side: what a rename carries over to the new column (issue 9, first
//! part): column attributes and privileges at expand, fresh statistics on the
//! new column once the backfill completes.

mod common;

use common::*;

/// Statistics target, n_distinct, storage, compression and a column-level
/// GRANT follow the column; the new column is analysed before contract; a
/// reader with only the column grant can still read it afterwards.
#[test]
fn column_attributes_and_privileges_follow_the_rename() {
    let cluster = Cluster::start("carry", &[]);
    let mut c = cluster.create_db("carry");
    make_table(&mut c, "t", 20_000);
    c.batch_execute(
        "CREATE ROLE reader LOGIN;
         GRANT SELECT (id, a) ON t TO reader;
         GRANT UPDATE (a) ON t TO reader WITH GRANT OPTION;
         ALTER TABLE t ALTER COLUMN a SET STATISTICS 321;
         ALTER TABLE t ALTER COLUMN a SET (n_distinct = -0.5);
         ALTER TABLE t ALTER COLUMN a SET STORAGE MAIN;
         ALTER TABLE t ALTER COLUMN a SET COMPRESSION pglz;
         CREATE STATISTICS t_stats (ndistinct, dependencies) ON a, pad FROM t;
         ALTER STATISTICS t_stats SET STATISTICS 50;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    let attrs = |c: &mut postgres::Client, col: &str| -> (i32, Option<Vec<String>>, String, String, Option<String>) {
        let r = c
            .query_one(
                "SELECT attstattarget::int, attoptions::text[], attstorage::text, attcompression::text, attacl::text
                   FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = $1",
                &[&col],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    let (target, options, storage, compression, acl) = attrs(&mut c, "b");
    assert_eq!(target, 321);
    // (this server build also keeps an internal `pg_attver=…` entry there)
    assert!(options.unwrap_or_default().contains(&"n_distinct=-0.5".to_string()));
    assert_eq!(storage, "m");
    assert_eq!(compression, "p");
    let acl = acl.unwrap_or_default();
    assert!(acl.contains("reader=rw*/"), "SELECT and UPDATE WITH GRANT OPTION: {acl}");

    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let analysed: i64 = c
        .query_one("SELECT count(*) FROM pg_stats WHERE tablename = 't' AND attname = 'b'", &[])
        .unwrap()
        .get(0);
    assert_eq!(analysed, 1, "the new column is analysed before contract");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(attrs(&mut c, "b").0, 321);
    let (stats, target): (String, i32) = {
        let r = c
            .query_one("SELECT pg_get_statisticsobjdef(oid), stxstattarget::int FROM pg_statistic_ext WHERE stxname = 't_stats'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(stats, "CREATE STATISTICS public.t_stats (ndistinct, dependencies) ON pad, b FROM t", "(keys are kept in column order)");
    assert_eq!(target, 50, "extended statistics follow, under their name, with their target");
    let mut reader = cluster.connect_as("carry", "reader");
    let v: String = reader.query_one("SELECT b FROM t WHERE id = 7", &[]).unwrap().get(0);
    assert_eq!(v, "orig-7");
    let (code, _) = sqlstate(reader.query_one("SELECT pad FROM t WHERE id = 7", &[]));
    assert_eq!(code, "42501", "only the carried column grant, nothing more");
}

/// Indexes of every shape and a unique key on the renamed column are rebuilt
/// concurrently after the backfill and take the old names at contract, under
/// writers on both columns: each `pg_get_indexdef` equals the old one with
/// the column renamed, the key is enforced, 0 mismatches.
#[test]
fn indexes_and_keys_follow_the_rename_under_writers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const ROWS: i64 = 100_000;
    let cluster = Cluster::start("carryidx", &[]);
    let mut c = cluster.create_db("ci");
    make_table(&mut c, "t", ROWS);
    c.batch_execute(
        "ALTER TABLE t ALTER COLUMN a SET NOT NULL;
         ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE (a);
         CREATE INDEX t_part ON t (pad) WHERE a > 'orig-5';
         CREATE INDEX t_multi ON t (pad, a);
         CREATE INDEX t_lower ON t (lower(a));
         CREATE INDEX t_incl ON t (id) INCLUDE (a);
         CREATE INDEX t_desc ON t (a DESC NULLS LAST, id);
         CREATE INDEX t_hash ON t USING hash (a);
         ALTER TABLE t REPLICA IDENTITY USING INDEX t_a_key;",
    )
    .unwrap();
    let defs = |c: &mut postgres::Client| -> Vec<(String, String)> {
        c.query(
            "SELECT c.relname::text, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = 't'::regclass AND c.relname <> 't_pkey' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let before: Vec<(String, String)> = defs(&mut c)
        .into_iter()
        .map(|(n, d)| (n, d.replace("(a)", "(b)").replace("(a ", "(b ").replace(", a)", ", b)").replace("(a,", "(b,").replace("lower(a)", "lower(b)").replace("WHERE (a >", "WHERE (b >")))
        .collect();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 5000, pause_ms => 20, target_batch_ms => 0)", &[&id]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |column: &str, residue: i64, base: i64| {
        let w = Writer { table: "t".into(), key: "id".into(), column: column.into(), residue, rows: ROWS, insert_base: base, min_writes: 300 };
        let (conn, stop) = (cluster.connect("ci"), stop.clone());
        std::thread::spawn(move || w.run(conn, stop))
    };
    let w1 = spawn("a", 0, 10 * ROWS);
    let w2 = spawn("b", 1, 20 * ROWS);
    // Sample the table's locks while the worker backfills and builds: nothing
    // that blocks writers is ever held (expand and contract are outside).
    let sampler = {
        let (mut s, stop) = (cluster.connect("ci"), stop.clone());
        std::thread::spawn(move || {
            let (mut samples, mut blocking) = (0, Vec::<String>::new());
            while !stop.load(Ordering::SeqCst) {
                samples += 1;
                for r in s
                    .query(
                        "SELECT l.mode FROM pg_locks l WHERE l.locktype = 'relation' AND l.relation = 't'::regclass AND l.granted
                           AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')",
                        &[],
                    )
                    .unwrap()
                {
                    blocking.push(r.get(0));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (samples, blocking)
        })
    };
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let states: String = c.query_one("SELECT indexes FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert!(!states.contains("pending") && !states.contains("building") && !states.contains("failed"), "{states}");
    stop.store(true, Ordering::SeqCst);
    let mut ledger = w1.join().unwrap();
    ledger.extend(w2.join().unwrap());
    let (samples, blocking) = sampler.join().unwrap();
    println!("{samples} lock samples during backfill and index builds");
    assert!(samples > 10 && blocking.is_empty(), "locks that block writers during backfill/builds: {blocking:?}");
    let built: i64 = c
        .query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'index built'", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(built, 7, "seven indexes built concurrently by the worker");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(mismatches(&mut c, "t", "id", "b", &ledger), 0);
    assert_eq!(defs(&mut c), before, "each index is the old one with the column renamed, under the old name");
    let key: String = c
        .query_one("SELECT conname::text FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'u'", &[])
        .unwrap()
        .get(0);
    assert_eq!(key, "t_a_key");
    // A value the table holds now (the writers may have changed row 42's).
    let taken: String = c.query_one("SELECT b FROM t WHERE b IS NOT NULL ORDER BY id LIMIT 1", &[]).unwrap().get(0);
    let (code, _) = sqlstate(c.execute("INSERT INTO t (id, b) VALUES (-1, $1)", &[&taken]));
    assert_eq!(code, "23505", "the carried unique key is enforced");
    let identity: String = c
        .query_one("SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 't'::regclass AND i.indisreplident", &[])
        .unwrap()
        .get(0);
    assert_eq!(identity, "t_a_key", "replica identity follows the index");
    let invalid: i64 = c.query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[]).unwrap().get(0);
    assert_eq!(invalid, 0);
}

/// The primary key column itself (no referencing table): the key is
/// rebuilt, attached USING INDEX at contract under the brief lock.
#[test]
fn primary_key_column_is_renamed() {
    let cluster = Cluster::start("carrypk", &[]);
    let mut c = cluster.create_db("pk");
    c.batch_execute(
        "CREATE TABLE k (code text PRIMARY KEY, v int);
         INSERT INTO k SELECT 'c' || g, g FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('k', 'code', 'key_code')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let def: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'k'::regclass AND contype = 'p'", &[]).unwrap().get(0);
    assert_eq!(def, "PRIMARY KEY (key_code)");
    let name: String = c.query_one("SELECT conname::text FROM pg_constraint WHERE conrelid = 'k'::regclass AND contype = 'p'", &[]).unwrap().get(0);
    assert_eq!(name, "k_pkey");
    let (code, _) = sqlstate(c.execute("INSERT INTO k (key_code, v) VALUES ('c7', 0)", &[]));
    assert_eq!(code, "23505");
}

/// A view on the renamed column does not stop expand (it keeps reading the
/// old column); zdm.status lists it as a blocker from the start; contract
/// refuses with 2BP01 naming it until it is recreated on the new column.
#[test]
fn views_wait_for_contract_and_are_listed_as_blockers() {
    let cluster = Cluster::start("carryview", &[]);
    let mut c = cluster.create_db("cv");
    make_table(&mut c, "t", 5000);
    c.batch_execute("CREATE VIEW v AS SELECT id, a FROM t").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    let blockers: Option<String> = c.query_one("SELECT blockers FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert!(blockers.unwrap_or_default().contains("on view v"), "listed from the start");
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "2BP01");
    assert!(msg.contains("view public.v"), "{msg}");
    c.batch_execute("CREATE OR REPLACE VIEW v AS SELECT id, b AS a FROM t").unwrap();
    let blockers: Option<String> = c.query_one("SELECT blockers FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(blockers, None);
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM v WHERE a = 'orig-' || id", &[]).unwrap().get(0);
    assert_eq!(n, 5000);
}

/// A foreign key from the renamed column (deferrable, with ON DELETE
/// CASCADE) is copied NOT VALID at expand, validated at contract and takes
/// the original name and deferrability; orphans are refused afterwards.
#[test]
fn foreign_key_from_the_column_follows_the_rename() {
    let cluster = Cluster::start("carryfk", &[]);
    let mut c = cluster.create_db("fk");
    c.batch_execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY);
         INSERT INTO customers SELECT g FROM generate_series(1, 1000) g;
         CREATE TABLE orders (id bigint PRIMARY KEY,
                              customer_id bigint CONSTRAINT orders_customer_fk REFERENCES customers (id)
                                ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
                              note text);
         INSERT INTO orders SELECT g, g % 1000 + 1, 'n' FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('orders', 'customer_id', 'cust_id')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let def: String = c
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'orders_customer_fk'", &[])
        .unwrap()
        .get(0);
    assert_eq!(def, "FOREIGN KEY (cust_id) REFERENCES customers(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED");
    let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conname = 'orders_customer_fk'", &[]).unwrap().get(0);
    assert!(valid);
    let (code, _) = sqlstate(c.execute("INSERT INTO orders (id, cust_id) VALUES (-1, 99999)", &[]));
    assert_eq!(code, "23503");
    c.execute("DELETE FROM customers WHERE id = 1", &[]).unwrap();
    let left: i64 = c.query_one("SELECT count(*) FROM orders WHERE cust_id = 1", &[]).unwrap().get(0);
    assert_eq!(left, 0, "ON DELETE CASCADE carried");
}

/// The primary key column renamed while another table's foreign key
/// references it, with inserts into the child throughout: at contract the
/// child's key is re-pointed NOT VALID at the new column and validated
/// afterwards by its own migration; orphans are refused after.
#[test]
fn referenced_primary_key_is_renamed_and_children_repointed() {
    let cluster = Cluster::start("carryref", &[]);
    let mut c = cluster.create_db("rf");
    c.batch_execute(
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 20000) g;
         CREATE TABLE child (id bigserial PRIMARY KEY, parent_id int CONSTRAINT child_parent_fk REFERENCES parent (id) ON DELETE CASCADE);
         INSERT INTO child (parent_id) SELECT g % 20000 + 1 FROM generate_series(1, 50000) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('parent', 'id', 'parent_key')", &[]).unwrap().get(0);
    let mut writer = cluster.connect("rf");
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    // new parents through the new column, children pointing at them
    writer.batch_execute("INSERT INTO parent (parent_key, v) VALUES (30001, 'new'); INSERT INTO child (parent_id) VALUES (30001);").unwrap();
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let def: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'child_parent_fk'", &[]).unwrap().get(0);
    assert_eq!(def, "FOREIGN KEY (parent_id) REFERENCES parent(parent_key) ON DELETE CASCADE NOT VALID", "re-pointed in the brief step");
    let pk: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'parent_pkey'", &[]).unwrap().get(0);
    assert_eq!(pk, "PRIMARY KEY (parent_key)");
    let validation: i64 = c
        .query_one("SELECT id FROM zdm.migrations WHERE kind = 'foreign_key' AND object_name = 'child_parent_fk'", &[])
        .unwrap()
        .get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&validation]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let valid: bool = c.query_one("SELECT convalidated FROM pg_constraint WHERE conname = 'child_parent_fk'", &[]).unwrap().get(0);
    assert!(valid, "validated after contract");
    let def: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'child_parent_fk'", &[]).unwrap().get(0);
    assert_eq!(def, "FOREIGN KEY (parent_id) REFERENCES parent(parent_key) ON DELETE CASCADE");
    let (code, _) = sqlstate(writer.execute("INSERT INTO child (parent_id) VALUES (99999)", &[]));
    assert_eq!(code, "23503");
    writer.execute("DELETE FROM parent WHERE parent_key = 30001", &[]).unwrap();
    let left: i64 = c.query_one("SELECT count(*) FROM child WHERE parent_id = 30001", &[]).unwrap().get(0);
    assert_eq!(left, 0);
}

/// A carried unique build that fails (a duplicate got in: here the old key
/// was dropped by hand and a duplicate written): the job fails with the
/// duplicated key in zdm.status, no INVALID index remains, contract refuses;
/// after fixing the data, zdm.start_backfill builds it and contract works.
#[test]
fn failed_carried_build_is_reported_and_resumed() {
    let cluster = Cluster::start("carryfail", &[]);
    let mut c = cluster.create_db("cf");
    make_table(&mut c, "t", 20_000);
    c.batch_execute("ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE (a)").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.batch_execute("ALTER TABLE t DROP CONSTRAINT t_a_key; UPDATE t SET a = 'orig-1' WHERE id = 2;").unwrap();
    c.query_one("SELECT zdm.start_backfill($1, pause_ms => 0)", &[&id]).unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.wait({id}, '2 minutes')"), "55000");
    assert!(msg.contains("duplicate") || msg.contains("duplicated"), "{msg}");
    let (indexes, error): (Option<String>, Option<String>) = {
        let r = c.query_one("SELECT indexes, last_error FROM zdm.status WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(indexes.unwrap_or_default().contains("failed"));
    assert!(error.unwrap_or_default().contains("is duplicated"), "the duplicated key is named");
    let invalid: i64 = c.query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[]).unwrap().get(0);
    assert_eq!(invalid, 0, "no INVALID index left behind");
    expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    c.batch_execute("UPDATE t SET a = 'orig-2' WHERE id = 2").unwrap();
    c.query_one("SELECT zdm.start_backfill($1)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let def: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 't_a_key'", &[]).unwrap().get(0);
    assert_eq!(def, "UNIQUE (b)");
}

/// Everything at once on one table whose names need quoting: a unique key,
/// a partial, a multi-column (column second) and an expression index, a
/// CHECK, a foreign key to a parent, a child's foreign key referencing the
/// column, a column GRANT, a statistics target and CLUSTER ON. expand →
/// background backfill, builds and validations → contract, with writers on
/// both columns throughout. Afterwards every index is the old one with the
/// column renamed, every constraint is enforced, and no write was lost.
/// zdm.create_index / zdm.drop_index take the same awkward names.
#[test]
fn everything_on_one_table_follows_the_rename() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const ROWS: i64 = 60_000;
    const T: &str = r#""Shop"."Users Table""#;
    let cluster = Cluster::start("carryall", &[]);
    let mut c = cluster.create_db("all");
    c.batch_execute(&format!(
        r#"CREATE ROLE reader LOGIN;
         CREATE SCHEMA "Shop";
         GRANT USAGE ON SCHEMA "Shop" TO reader;
         -- every value the writers can write is a known address
         CREATE TABLE "Shop".allowed (email text PRIMARY KEY);
         INSERT INTO "Shop".allowed SELECT 'orig-' || g FROM generate_series(1, {ROWS}) g
           UNION ALL SELECT p || g FROM generate_series(1, 50001) g,
                  unnest(ARRAY['E-mail-upd-', 'E-mail-ins-', 'Email Address-upd-', 'Email Address-ins-']) p;
         CREATE TABLE {T} (id bigint PRIMARY KEY,
                           "E-mail" text NOT NULL CONSTRAINT "Users Table_E-mail_key" UNIQUE
                                    CONSTRAINT "E-mail allowed" REFERENCES "Shop".allowed (email)
                                    CONSTRAINT "E-mail not empty" CHECK ("E-mail" <> ''),
                           pad text DEFAULT 'x');
         INSERT INTO {T} (id, "E-mail") SELECT g, 'orig-' || g FROM generate_series(1, {ROWS}) g;
         CREATE INDEX "Partial Idx" ON {T} (pad) WHERE "E-mail" LIKE 'orig-1%';
         CREATE INDEX "Multi Idx" ON {T} (pad, "E-mail");
         CREATE INDEX "Lower Idx" ON {T} (lower("E-mail"));
         ALTER TABLE {T} ALTER COLUMN "E-mail" SET STATISTICS 500;
         ALTER TABLE {T} CLUSTER ON "Users Table_E-mail_key";
         GRANT SELECT (id, "E-mail") ON {T} TO reader;
         -- rows 3k+2 are never updated by the writers: the child points at them
         CREATE TABLE "Shop"."Sessions" (id bigserial PRIMARY KEY,
                                         "user" text CONSTRAINT "Sessions_user_fk" REFERENCES {T} ("E-mail"));
         INSERT INTO "Shop"."Sessions" ("user") SELECT 'orig-' || (3 * g + 2) FROM generate_series(0, 9999) g;"#
    ))
    .unwrap();
    c.batch_execute(&format!("VACUUM ANALYZE {T}")).unwrap();
    let defs = |c: &mut postgres::Client| -> Vec<(String, String)> {
        c.query(
            r#"SELECT c.relname::text, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = '"Shop"."Users Table"'::regclass AND c.relname <> 'Users Table_pkey' ORDER BY 1"#,
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let expected: Vec<(String, String)> = defs(&mut c).into_iter().map(|(n, d)| (n, d.replace(r#""E-mail""#, r#""Email Address""#))).collect();
    assert_eq!(expected.len(), 4);

    let id: i64 = c.query_one(&format!(r#"SELECT zdm.expand_rename('{T}', 'E-mail', 'Email Address')"#), &[]).unwrap().get(0);
    c.execute("SELECT zdm.set_options($1, batch_size => 3000, pause_ms => 10, target_batch_ms => 0)", &[&id]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |column: &str, residue: i64, base: i64| {
        let w = Writer { table: T.into(), key: "id".into(), column: column.into(), residue, rows: ROWS, insert_base: base, min_writes: 300 };
        let (conn, stop) = (cluster.connect("all"), stop.clone());
        std::thread::spawn(move || w.run(conn, stop))
    };
    let w1 = spawn("E-mail", 0, 10 * ROWS);
    let w2 = spawn("Email Address", 1, 20 * ROWS);
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let (indexes, constraints): (String, String) = {
        let r = c.query_one("SELECT indexes, constraints FROM zdm.status WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(indexes.matches(": valid").count(), 4, "{indexes}");
    // the check, the foreign key and NOT NULL's check: validated by the worker, each in its own transaction
    assert_eq!(constraints.matches(": valid").count(), 3, "{constraints}");
    let validated: i64 = c
        .query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'validate carried constraint'", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(validated, 3);
    stop.store(true, Ordering::SeqCst);
    let mut ledger = w1.join().unwrap();
    ledger.extend(w2.join().unwrap());
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(mismatches(&mut c, T, "id", "Email Address", &ledger), 0, "no write lost");

    assert_eq!(defs(&mut c), expected, "each index is the old one with the column renamed, under the old name");
    let constraint_defs: Vec<(String, String)> = c
        .query(
            r#"SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = '"Shop"."Users Table"'::regclass AND contype NOT IN ('p', 'n') ORDER BY 1"#,
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        constraint_defs,
        vec![
            ("E-mail allowed".to_string(), r#"FOREIGN KEY ("Email Address") REFERENCES "Shop".allowed(email)"#.to_string()),
            ("E-mail not empty".to_string(), r#"CHECK (("Email Address" <> ''::text))"#.to_string()),
            ("Users Table_E-mail_key".to_string(), r#"UNIQUE ("Email Address")"#.to_string()),
        ]
    );
    if pg_major() >= 18 {
        // NOT NULL is a constraint there: the carried one, validated, named as
        // PostgreSQL names a column's NOT NULL.
        let not_null: Vec<(String, bool)> = c
            .query(
                r#"SELECT conname::text, convalidated FROM pg_constraint
                    WHERE conrelid = '"Shop"."Users Table"'::regclass AND contype = 'n' ORDER BY 1"#,
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(not_null, vec![("Users Table_Email Address_not_null".to_string(), true), ("Users Table_id_not_null".to_string(), true)]);
    }
    let (not_null, stats): (bool, i32) = {
        let r = c
            .query_one(r#"SELECT attnotnull, attstattarget::int FROM pg_attribute WHERE attrelid = '"Shop"."Users Table"'::regclass AND attname = 'Email Address'"#, &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(not_null);
    assert_eq!(stats, 500);
    let clustered: String = c
        .query_one(r#"SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '"Shop"."Users Table"'::regclass AND i.indisclustered"#, &[])
        .unwrap()
        .get(0);
    assert_eq!(clustered, "Users Table_E-mail_key", "CLUSTER ON follows the index");
    let (code, _) = sqlstate(c.execute(&format!(r#"INSERT INTO {T} (id, "Email Address") VALUES (-1, 'orig-2')"#), &[]));
    assert_eq!(code, "23505", "the carried unique key is enforced");
    let (code, _) = sqlstate(c.execute(&format!(r#"INSERT INTO {T} (id, "Email Address") VALUES (-1, 'nobody')"#), &[]));
    assert_eq!(code, "23503", "the carried foreign key is enforced");
    let (code, _) = sqlstate(c.execute(&format!(r#"INSERT INTO {T} (id, "Email Address") VALUES (-1, '')"#), &[]));
    assert_eq!(code, "23514", "the carried check is enforced");

    // The child's key: re-pointed at contract, validated by its own migration.
    let validation: i64 = c
        .query_one("SELECT id FROM zdm.migrations WHERE kind = 'foreign_key' AND object_name = 'Sessions_user_fk'", &[])
        .unwrap()
        .get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&validation]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let child: String = c
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'Sessions_user_fk' AND convalidated", &[])
        .unwrap()
        .get(0);
    assert_eq!(child, r#"FOREIGN KEY ("user") REFERENCES "Shop"."Users Table"("Email Address")"#);
    let (code, _) = sqlstate(c.execute(r#"INSERT INTO "Shop"."Sessions" ("user") VALUES ('nobody')"#, &[]));
    assert_eq!(code, "23503", "an orphan in the child is refused");

    // The column grant followed.
    let mut reader = cluster.connect_as("all", "reader");
    let n: i64 = reader.query_one(&format!(r#"SELECT count("Email Address") FROM {T}"#), &[]).unwrap().get(0);
    assert!(n >= ROWS);

    // create_index / drop_index with names that need quoting
    let build: i64 = c
        .query_one(&format!(r#"SELECT zdm.create_index('CREATE INDEX "Odd ""Name"" Idx" ON {T} (pad, "Email Address")')"#), &[])
        .unwrap()
        .get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&build]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let def: String = c.query_one(r#"SELECT pg_get_indexdef('"Shop"."Odd ""Name"" Idx"'::regclass)"#, &[]).unwrap().get(0);
    assert_eq!(def, r#"CREATE INDEX "Odd ""Name"" Idx" ON "Shop"."Users Table" USING btree (pad, "Email Address")"#);
    let dropped: i64 = c.query_one(r#"SELECT zdm.drop_index('"Shop"."Odd ""Name"" Idx"')"#, &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&dropped]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let gone: Option<String> = c.query_one(r#"SELECT to_regclass('"Shop"."Odd ""Name"" Idx"')::text"#, &[]).unwrap().get(0);
    assert_eq!(gone, None);
    let invalid: i64 = c.query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[]).unwrap().get(0);
    assert_eq!(invalid, 0);
}
