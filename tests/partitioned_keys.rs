//! Host-side: primary keys and unique constraints carried on a partitioned
//! table. The int → bigint of a primary key `(id, created_at)` under writers
//! that insert rows and move keys, counted against a copy of every key
//! (0 mismatches); the key's parts built on each leaf, a leaf's key and the
//! partitioned key attached at contract; a partition created empty after
//! the build (its part made at contract) and one created and filled after it
//! (contract refuses with 55000 until `start_backfill` builds its part); a
//! leaf's replica identity kept; a unique constraint carried by a rename;
//! two keys whose long names share their first 60 bytes; a deferrable key
//! and a key other tables reference refused at expand (0A000), and an index
//! of one partition's own on the column, refused at expand (0A000) and at
//! contract (2BP01) since the old column's drop would take it; a foreign
//! key from a partitioned table carried by a rename and a type change, leaf
//! by leaf, under its own name afterwards on the parent and every leaf.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ROWS: i64 = 40_000;

/// `ev (id int, created_at date, "v w" text, idc bigint)`, primary key
/// (id, created_at), unique ("v w", created_at), range-partitioned by
/// created_at: two months, one of them hash-partitioned in two, a default
/// partition; `idc` is the writers' copy of `id`.
fn make_ev(c: &mut postgres::Client) {
    c.batch_execute(&format!(
        r#"CREATE TABLE ev (id int NOT NULL, created_at date NOT NULL, "v w" text, idc bigint,
                            PRIMARY KEY (id, created_at), UNIQUE ("v w", created_at)) PARTITION BY RANGE (created_at);
           CREATE TABLE ev_01 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
           CREATE TABLE ev_02 PARTITION OF ev FOR VALUES FROM ('2026-02-01') TO ('2026-03-01') PARTITION BY HASH (created_at);
           CREATE TABLE ev_02_0 PARTITION OF ev_02 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
           CREATE TABLE ev_02_1 PARTITION OF ev_02 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
           CREATE TABLE ev_def PARTITION OF ev DEFAULT;
           INSERT INTO ev SELECT g, date '2026-01-01' + (g % 59), 'v' || g, g FROM generate_series(1, {ROWS}) g;
           ALTER TABLE ev_01 REPLICA IDENTITY USING INDEX ev_01_pkey;"#
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE ev").unwrap();
}

/// Inserts new rows and moves existing keys (id and its copy together)
/// until stopped; returns how many rows it inserted.
fn writer(cluster: &Cluster, db: &str, stop: &Arc<AtomicBool>, next: &Arc<AtomicI64>) -> std::thread::JoinHandle<i64> {
    let (mut c, stop, next) = (cluster.connect(db), stop.clone(), next.clone());
    std::thread::spawn(move || {
        let mut inserted = 0;
        let mut i = 0i64;
        while !stop.load(Ordering::Relaxed) || inserted < 200 {
            i += 1;
            let id = next.fetch_add(1, Ordering::Relaxed);
            let day = id % 59;
            c.execute(
                r#"INSERT INTO ev (id, created_at, "v w", idc) VALUES ($1::bigint::int, date '2026-01-01' + $2::int, 'w' || $1, $1)"#,
                &[&id, &(day as i32)],
            )
            .unwrap();
            inserted += 1;
            // Move an old row's key: 1 .. ROWS/2 go up by 10 million once.
            let old = (i * 7919) % (ROWS / 2) + 1;
            c.execute("UPDATE ev SET id = id + 10000000, idc = idc + 10000000 WHERE id::bigint = $1", &[&old]).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        inserted
    })
}

#[test]
fn keys_on_a_partitioned_table_are_carried() {
    let cluster = Cluster::start("partkeys", &[]);
    let mut c = cluster.create_db("partkeys");
    make_ev(&mut c);

    // A key other tables reference cannot be carried: refused, nothing changed.
    c.batch_execute("CREATE TABLE child (id int, created_at date, FOREIGN KEY (id, created_at) REFERENCES ev)").unwrap();
    let msg = expect_err(&mut c, "SELECT zdm.expand_change_type('ev', 'id', 'bigint')", "0A000");
    assert!(msg.contains("child_id_created_at_fkey"), "{msg}");
    c.batch_execute("DROP TABLE child").unwrap();
    // An index of one partition's own would go with the old column: refused.
    c.batch_execute("CREATE INDEX ev_01_own ON ev_01 (id)").unwrap();
    let msg = expect_err(&mut c, "SELECT zdm.expand_change_type('ev', 'id', 'bigint')", "0A000");
    assert!(msg.contains("ev_01_own"), "{msg}");
    c.batch_execute("DROP INDEX ev_01_own").unwrap();
    let migrations: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(migrations, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(100_000));
    let w = writer(&cluster, "partkeys", &stop, &next);
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('ev', 'id', 'bigint')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    // Built on the leaves only: nothing on the partitioned tables yet.
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
              WHERE i.indisvalid AND x.relname LIKE '%zdm%' AND i.indrelid IN (SELECT relid FROM pg_partition_tree('ev') WHERE isleaf)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(parts, 4, "the primary key's part on each of the 4 leaves");

    // Partitions created after the build: one stays empty, one gets rows.
    c.batch_execute(
        "CREATE TABLE ev_empty PARTITION OF ev FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
         CREATE TABLE ev_late PARTITION OF ev FOR VALUES FROM ('2026-06-01') TO ('2026-07-01');
         INSERT INTO ev (id, created_at, \"v w\", idc) SELECT g, '2026-06-15', 'late' || g, g FROM generate_series(900001, 900100) g;",
    )
    .unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("ev_late") && !msg.contains("ev_empty"), "{msg}");
    c.query_one("SELECT zdm.start_backfill($1)", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");

    stop.store(true, Ordering::Relaxed);
    let inserted = w.join().unwrap();
    c.query_one("SELECT zdm.contract($1)", &[&id]).unwrap();

    let (rows, mismatches): (i64, i64) = c
        .query_one("SELECT count(*), count(*) FILTER (WHERE id IS DISTINCT FROM idc) FROM ev", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(mismatches, 0);
    assert_eq!(rows, ROWS + 100 + inserted);
    let types: Vec<String> = c
        .query("SELECT DISTINCT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attname = 'id' AND attrelid IN (SELECT relid FROM pg_partition_tree('ev'))", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, vec!["bigint".to_string()]);
    // The key is the partitioned table's, under its old name, with every
    // relation of the tree's key attached to it.
    let (def, attached, leaves): (String, i64, i64) = c
        .query_one(
            "SELECT pg_get_constraintdef(k.oid),
                    (SELECT count(*) FROM pg_partition_tree('ev') t JOIN pg_constraint l ON l.conrelid = t.relid
                      WHERE l.contype = 'p' AND l.conparentid <> 0),
                    (SELECT count(*) FROM pg_partition_tree('ev') WHERE relid <> 'ev'::regclass)
               FROM pg_constraint k WHERE k.conrelid = 'ev'::regclass AND k.conname = 'ev_pkey'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(def, "PRIMARY KEY (id, created_at)");
    assert_eq!(attached, leaves, "every partition's key attached");
    let names: Vec<String> = c
        .query("SELECT conname::text FROM pg_constraint WHERE contype = 'p' AND conrelid IN ('ev_01'::regclass, 'ev_02_0'::regclass) ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["ev_01_pkey".to_string(), "ev_02_0_pkey".into()], "partitions' keys keep their names");
    let identity: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'ev_01'::regclass AND indisreplident)", &[])
        .unwrap()
        .get(0);
    assert!(identity, "ev_01's replica identity follows its key");
    expect_err(&mut c, "INSERT INTO ev (id, created_at) VALUES (5000000000, '2026-06-02'), (5000000000, '2026-06-02')", "23505");

    // Deferrable keys are not carried (the parts would enforce uniqueness
    // immediately): refused, nothing changed.
    c.batch_execute(r#"ALTER TABLE ev ADD CONSTRAINT ev_deferred UNIQUE ("v w", id, created_at) DEFERRABLE"#).unwrap();
    let msg = expect_err(&mut c, r#"SELECT zdm.expand_rename('ev', 'v w', 'Body')"#, "0A000");
    assert!(msg.contains("ev_deferred"), "{msg}");
    c.batch_execute("ALTER TABLE ev DROP CONSTRAINT ev_deferred").unwrap();
    // Two keys whose long names differ only past what a derived name keeps.
    let long = "k".repeat(58);
    c.batch_execute(&format!(
        r#"ALTER TABLE ev ADD CONSTRAINT {long}_1 UNIQUE ("v w", created_at, id);
           ALTER TABLE ev ADD CONSTRAINT {long}_2 UNIQUE (id, "v w", created_at);"#
    ))
    .unwrap();
    // A rename of a column of unique constraints, by hand, then contract.
    let id: i64 = c.query_one(r#"SELECT zdm.expand_rename('ev', 'v w', 'Body')"#, &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    // One made on a partition since: contract refuses, nothing dropped.
    c.batch_execute(r#"CREATE INDEX "ev_02_0 own" ON ev_02_0 ("v w")"#).unwrap();
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "2BP01");
    assert!(msg.contains("ev_02_0 own"), "{msg}");
    c.batch_execute(r#"DROP INDEX "ev_02_0 own""#).unwrap();
    c.query_one("SELECT zdm.contract($1)", &[&id]).unwrap();
    let def: String = c
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'ev'::regclass AND conname = 'ev_v w_created_at_key'", &[])
        .unwrap()
        .get(0);
    assert_eq!(def, r#"UNIQUE ("Body", created_at)"#);
    for (suffix, expected) in [("_1", r#"UNIQUE ("Body", created_at, id)"#), ("_2", r#"UNIQUE (id, "Body", created_at)"#)] {
        let def: String = c
            .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'ev'::regclass AND conname = $1", &[&format!("{long}{suffix}")])
            .unwrap()
            .get(0);
        assert_eq!(def, expected);
    }
    let unattached: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_index i WHERE i.indrelid IN (SELECT relid FROM pg_partition_tree('ev'))
                AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) AND i.indrelid <> 'ev'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unattached, 0, "every partition's index is part of the partitioned table's");
    let invalid: i64 = c
        .query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid AND indrelid IN (SELECT relid FROM pg_partition_tree('ev'))", &[])
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
}

/// A foreign key from a partitioned table, carried by a rename and by a
/// type change: before 18 (no NOT VALID foreign key on a partitioned table)
/// it is added NOT VALID on each leaf, validated leaf by leaf by the worker,
/// and at contract the leaves' keys take the original's name and the key on
/// the partitioned table attaches them; a partition created mid-migration
/// gets its own. Afterwards the key is the original's (name, ON DELETE
/// CASCADE), validated, on every leaf; an orphan is refused (23503).
#[test]
fn foreign_key_from_a_partitioned_table_is_carried() {
    let cluster = Cluster::start("pkfk", &[]);
    let mut c = cluster.create_db("pk");
    c.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY);
         INSERT INTO customers SELECT g FROM generate_series(1, 500) g;
         CREATE TABLE orders (id int, customer_id int CONSTRAINT orders_customer_fk REFERENCES customers ON DELETE CASCADE, at date NOT NULL)
           PARTITION BY RANGE (at);
         CREATE TABLE orders_01 PARTITION OF orders FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE orders_02 (at date NOT NULL, customer_id int, id int);
         ALTER TABLE orders ATTACH PARTITION orders_02 FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
         INSERT INTO orders SELECT g, g % 500 + 1, date '2026-01-01' + (g % 59) FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('orders', 'customer_id', 'cust_id')", &[]).unwrap().get(0);
    c.batch_execute(
        "CREATE TABLE orders_03 PARTITION OF orders FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
         INSERT INTO orders (id, customer_id, at) VALUES (-1, 7, '2026-03-05'), (-2, 8, '2026-01-05');",
    )
    .unwrap();
    assert_eq!(c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get::<_, String>(0), "backfilled");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let fk = |c: &mut postgres::Client| -> (i64, i64, String) {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE conrelid = 'orders'::regclass), \
                        count(*) FILTER (WHERE conrelid <> 'orders'::regclass AND conparentid <> 0 AND convalidated), \
                        max(pg_get_constraintdef(oid)) FILTER (WHERE conrelid = 'orders'::regclass) \
                   FROM pg_constraint WHERE contype = 'f' AND conname = 'orders_customer_fk'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let (parent, leaves, def) = fk(&mut c);
    assert_eq!((parent, leaves), (1, 3), "{def}");
    assert!(def.contains("(cust_id)") && def.contains("ON DELETE CASCADE"), "{def}");
    let others: i64 = c.query_one("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conname LIKE '%zdm%'", &[]).unwrap().get(0);
    assert_eq!(others, 0, "no copy left behind");
    expect_err(&mut c, "INSERT INTO orders (id, cust_id, at) VALUES (-3, 9999, '2026-02-02')", "23503");
    c.batch_execute("DELETE FROM customers WHERE id = 7").unwrap();
    let gone: i64 = c.query_one("SELECT count(*) FROM orders WHERE cust_id = 7", &[]).unwrap().get(0);
    assert_eq!(gone, 0, "the cascade acts on the new column");
    // A type change of the same column carries it the same way.
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('orders', 'cust_id', 'bigint')", &[]).unwrap().get(0);
    assert_eq!(c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get::<_, String>(0), "backfilled");
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    let (parent, leaves, def) = fk(&mut c);
    assert_eq!((parent, leaves), (1, 3), "{def}");
    expect_err(&mut c, "INSERT INTO orders (id, cust_id, at) VALUES (-3, 9999, '2026-02-02')", "23503");
}
