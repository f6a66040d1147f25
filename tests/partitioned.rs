//! Host-side: renames and type changes on partitioned tables, with real
//! writers in every leaf counted against a ledger (0 mismatches): a range
//! tree with a default partition, a leaf whose columns are in another order
//! (and one dropped), a hash sub-partition; a hash-partitioned int → bigint;
//! partitions created (by hand and by pg_partman), attached, detached and
//! dropped mid-migration; a killed worker and a crash mid-leaf; the locks a
//! migration holds, sampled from pg_locks the whole time. Indexes:
//! partitioned_index.rs.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROWS: i64 = 120_000;

/// `t (id, a, pad, n)` range-partitioned by id: `t_1` made by PARTITION OF,
/// `t_2` attached from a table with another column order and a dropped
/// column, `t_3` hash-partitioned in two, `t_def` the default partition
/// (where the writers' inserts land).
fn make_tree(c: &mut postgres::Client, rows: i64) {
    let third = rows / 3;
    c.batch_execute(&format!(
        "CREATE TABLE t (id bigint NOT NULL, a text, pad text DEFAULT repeat('x', 40), n int) PARTITION BY RANGE (id);
         CREATE TABLE t_1 PARTITION OF t FOR VALUES FROM (1) TO ({b1});
         CREATE TABLE t_2 (junk int, n int, pad text DEFAULT repeat('x', 40), a text, id bigint NOT NULL);
         ALTER TABLE t_2 DROP COLUMN junk;
         ALTER TABLE t ATTACH PARTITION t_2 FOR VALUES FROM ({b1}) TO ({b2});
         CREATE TABLE t_3 PARTITION OF t FOR VALUES FROM ({b2}) TO ({b3}) PARTITION BY HASH (id);
         CREATE TABLE t_3_0 PARTITION OF t_3 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE t_3_1 PARTITION OF t_3 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE t_def PARTITION OF t DEFAULT;
         INSERT INTO t (id, a, n) SELECT g, 'orig-' || g, g FROM generate_series(1, {rows}) g;",
        b1 = third + 1,
        b2 = 2 * third + 1,
        b3 = rows + 1,
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE t").unwrap();
}

/// `zdm.backfill_batch` until it says the backfill is complete.
fn backfill_all(c: &mut postgres::Client, id: i64) {
    while c.query_one("SELECT zdm.backfill_batch($1, 5000)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
}

fn writers(cluster: &Cluster, db: &str, stop: &Arc<AtomicBool>, rows: i64) -> Vec<std::thread::JoinHandle<HashMap<i64, String>>> {
    [("a", 0, 10 * rows), ("b", 1, 20 * rows)]
        .into_iter()
        .map(|(column, residue, base)| {
            let w = Writer { table: "t".into(), key: "id".into(), column: column.into(), residue, rows, insert_base: base, min_writes: 300 };
            let (conn, stop) = (cluster.connect(db), stop.clone());
            std::thread::spawn(move || w.run(conn, stop))
        })
        .collect()
}

/// Writes straight into the reordered leaf `t_2` (not through the parent),
/// through the new column: keys ≡ 2 (mod 3) in its range.
fn leaf_writer(cluster: &Cluster, db: &str, stop: &Arc<AtomicBool>, rows: i64) -> std::thread::JoinHandle<HashMap<i64, String>> {
    let (mut conn, stop) = (cluster.connect(db), stop.clone());
    std::thread::spawn(move || {
        let third = rows / 3;
        let mut ledger = HashMap::new();
        let mut i: i64 = 0;
        while i < 300 || !stop.load(Ordering::SeqCst) {
            i += 1;
            let k = third + 1 + ((i * 7919) % (third / 3)) * 3 + (2 - (third + 1) % 3 + 3) % 3;
            let v = format!("leaf-{i}");
            if conn.execute("UPDATE t_2 SET b = $1 WHERE id = $2", &[&v, &k]).unwrap() == 1 {
                ledger.insert(k, v);
            }
            if i > 50_000 {
                break;
            }
        }
        ledger
    })
}

/// Locks that block writers (SHARE and stronger) held on the tree by anyone
/// but the writers, sampled every few ms: (what, when) pairs.
fn sample_locks(cluster: &Cluster, db: &str, stop: &Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (mut conn, stop, out) = (cluster.connect(db), stop.clone(), seen.clone());
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            for r in conn
                .query(
                    "SELECT l.mode || ' on ' || l.relation::regclass::text || ' by ' || coalesce(a.application_name, '') || ' ' || coalesce(a.backend_type, '')
                       FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE l.granted AND l.locktype = 'relation'
                        AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
                        AND l.relation IN (SELECT relid FROM pg_partition_tree('t'))",
                    &[],
                )
                .unwrap()
            {
                out.lock().unwrap().push(r.get::<_, String>(0));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (handle, seen)
}

/// A rename on a range tree (default partition, reordered leaf, hash
/// sub-partitions) with writers through the parent on both columns and
/// straight into a leaf, backfilled by two workers: one trigger on the
/// parent cloned to every leaf, every leaf planned as a range, no lock
/// that blocks writers taken between expand and contract, 0 mismatches.
#[test]
fn rename_on_a_partitioned_tree_under_writers() {
    let cluster = Cluster::start("part", &["zdm.batch_history = 1000000"]);
    let mut c = cluster.create_db("part");
    make_tree(&mut c, ROWS);
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let clones: i64 = c
        .query_one("SELECT count(*) FROM pg_trigger WHERE tgname = $1 AND tgenabled = 'A'", &[&format!("zdm_sync_{id}")])
        .unwrap()
        .get(0);
    assert_eq!(clones, 7, "the trigger on the parent, its clones on t_3 and on each of the 5 leaves, all enabled ALWAYS");

    let sampling = Arc::new(AtomicBool::new(false));
    let (sampler, locks) = sample_locks(&cluster, "part", &sampling);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = writers(&cluster, "part", &stop, ROWS);
    threads.push(leaf_writer(&cluster, "part", &stop, ROWS));
    std::thread::sleep(Duration::from_millis(300));
    c.query_one("SELECT zdm.start_backfill($1, workers => 2, batch_size => 2000, target_batch_ms => 0, pause_ms => 10)", &[&id])
        .unwrap();
    let leaves: i64 = wait_for("the leaves planned", Duration::from_secs(30), || {
        let n: i64 = c.query_one("SELECT count(DISTINCT relid) FROM zdm.backfill_ranges WHERE migration_id = $1", &[&id]).unwrap().get(0);
        (n > 0).then_some(n)
    });
    assert_eq!(leaves, 5, "one range per leaf to begin with");
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    std::thread::sleep(Duration::from_millis(300));
    sampling.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let during: Vec<String> = locks.lock().unwrap().clone();
    assert!(during.is_empty(), "locks that block writers seen during the backfill: {during:?}");

    let pids: i64 = c
        .query_one("SELECT count(DISTINCT worker_pid) FROM zdm.batches WHERE migration_id = $1 AND rows > 0", &[&id])
        .unwrap()
        .get(0);
    println!("batches by {pids} process(es)");
    // The old application version is gone before contract drops its column.
    stop.store(true, Ordering::SeqCst);
    let mut ledger = HashMap::new();
    for t in threads {
        ledger.extend(t.join().unwrap());
    }
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let wrong = mismatches(&mut c, "t", "id", "b", &ledger);
    println!("{} ledger entries, {wrong} mismatches", ledger.len());
    assert_eq!(wrong, 0);
    let held: String = c
        .query_one("SELECT detail FROM zdm.events WHERE migration_id = $1 AND step = 'contract'", &[&id])
        .unwrap()
        .get(0);
    println!("contract: {held}");
    let left: i64 = c.query_one("SELECT count(*) FROM pg_attribute WHERE attname = 'a' AND attrelid IN (SELECT relid FROM pg_partition_tree('t'))", &[]).unwrap().get(0);
    assert_eq!(left, 0, "the old column is gone from every relation of the tree");
}

/// int → bigint on a hash-partitioned table with a leaf in another column
/// order, under a writer: the convert trigger reads each leaf's own column
/// numbers; a killed worker and a crash mid-backfill resume; NOT NULL and a
/// CHECK carried and validated; 0 mismatches.
#[test]
fn type_change_on_a_hash_partitioned_table_killed_and_crashed() {
    let cluster = Cluster::start("parttype", &[]);
    let mut c = cluster.connect("postgres"); // zdm.database: the launcher resumes jobs here
    c.batch_execute("CREATE EXTENSION zdm").unwrap();
    c.batch_execute(
        "CREATE TABLE h (id bigint NOT NULL, n int NOT NULL CHECK (n > -1000), pad text DEFAULT repeat('x', 60)) PARTITION BY HASH (id);
         CREATE TABLE h_0 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 0);
         CREATE TABLE h_1 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 1);
         CREATE TABLE h_2 (junk int, pad text DEFAULT repeat('x', 60), n int NOT NULL CONSTRAINT h_n_check CHECK (n > -1000), id bigint NOT NULL);
         ALTER TABLE h_2 DROP COLUMN junk;
         ALTER TABLE h ATTACH PARTITION h_2 FOR VALUES WITH (MODULUS 3, REMAINDER 2);
         INSERT INTO h (id, n) SELECT g, g FROM generate_series(1, 150000) g;",
    )
    .unwrap();
    c.batch_execute("VACUUM ANALYZE h").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('h', 'n', 'bigint', background => false)", &[]).unwrap().get(0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (cluster.connect("postgres"), stop.clone());
        std::thread::spawn(move || {
            let mut ledger: HashMap<i64, i64> = HashMap::new();
            let mut i: i64 = 0;
            while i < 300 || !stop.load(Ordering::SeqCst) {
                i += 1;
                let v = -(i % 900);
                if i % 4 == 0 {
                    let k = 1_000_000 + i;
                    // Straight into the reordered leaf when the hash sends it there.
                    w.execute("INSERT INTO h (id, n) VALUES ($1, $2::int)", &[&k, &(v as i32)]).unwrap();
                    ledger.insert(k, v);
                } else {
                    let k = (i * 7919) % 150_000 + 1;
                    w.execute("UPDATE h SET n = $1::int WHERE id = $2", &[&(v as i32), &k]).unwrap();
                    ledger.insert(k, v);
                }
                if i > 50_000 {
                    break;
                }
            }
            ledger
        })
    };
    c.query_one("SELECT zdm.start_backfill($1, batch_size => 1000, target_batch_ms => 0, pause_ms => 20)", &[&id]).unwrap();
    wait_for("a few batches", Duration::from_secs(30), || (status_row(&mut c, id).2 > 5000).then_some(()));
    let pid = wait_for("the worker", Duration::from_secs(10), || worker_pid(&mut c, id));
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    wait_for("a new worker", Duration::from_secs(30), || worker_pid(&mut c, id).filter(|p| *p != pid));
    wait_for("more batches", Duration::from_secs(30), || (status_row(&mut c, id).2 > 40_000).then_some(()));
    stop.store(true, Ordering::SeqCst);
    let ledger = writer.join().unwrap();
    drop(c);
    cluster.restart_immediate();
    let mut c = cluster.connect("postgres");
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let keys: Vec<i64> = ledger.keys().copied().collect();
    let values: Vec<i64> = keys.iter().map(|k| ledger[k]).collect();
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM h LEFT JOIN unnest($1::bigint[], $2::bigint[]) l(k, v) ON l.k = h.id
              WHERE h.n IS DISTINCT FROM coalesce(l.v, h.id)",
            &[&keys, &values],
        )
        .unwrap()
        .get(0);
    println!("{} ledger entries, {wrong} mismatches", ledger.len());
    assert_eq!(wrong, 0);
    let (ty, not_null): (String, bool) = {
        let r = c.query_one("SELECT format_type(atttypid, atttypmod), attnotnull FROM pg_attribute WHERE attrelid = 'h_2'::regclass AND attname = 'n'", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((ty.as_str(), not_null), ("bigint", true));
    let checks: i64 = c
        .query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'h_2'::regclass AND contype = 'c' AND convalidated", &[])
        .unwrap()
        .get(0);
    assert_eq!(checks, 1, "the carried CHECK, validated, and no NOT NULL check left over");
}

/// Partitions that come and go mid-migration: created (by hand and by
/// pg_partman's maintenance) they stay in sync; attached with rows they are
/// refused (55000), attached empty they join; detached and dropped they
/// leave; refusals up front for the partition key, a partition and a
/// unique constraint on the column (0A000).
#[test]
fn partitions_come_and_go_mid_migration() {
    let cluster = Cluster::start("partlife", &[]);
    let mut c = cluster.create_db("partlife");
    make_tree(&mut c, 30_000);
    c.batch_execute("INSERT INTO t (id, a) VALUES (1000000, 'orig-1000000')").unwrap();
    expect_err(&mut c, "SELECT zdm.expand_rename('t', 'id', 'key')", "0A000");
    expect_err(&mut c, "SELECT zdm.expand_rename('t_2', 'a', 'b')", "0A000");

    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b', background => false)", &[]).unwrap().get(0);
    c.batch_execute(
        "ALTER TABLE t DETACH PARTITION t_def;
         CREATE TABLE t_4 PARTITION OF t FOR VALUES FROM (30001) TO (40001);
         INSERT INTO t (id, a) SELECT g, 'orig-' || g FROM generate_series(30001, 30100) g;
         INSERT INTO t (id, b) SELECT g, 'orig-' || g FROM generate_series(30101, 30200) g;
         CREATE TABLE loaded (LIKE t INCLUDING DEFAULTS);
         INSERT INTO loaded (id, a) VALUES (40001, 'orig-40001');",
    )
    .unwrap();
    let msg = expect_err(&mut c, "ALTER TABLE t ATTACH PARTITION loaded FOR VALUES FROM (40001) TO (50001)", "55000");
    assert!(msg.contains("loaded") && msg.contains("holds rows"), "{msg}");
    // Emptied by DELETE its heap still has pages (rows may be there for
    // older snapshots): refused until TRUNCATE.
    c.batch_execute("DELETE FROM loaded").unwrap();
    expect_err(&mut c, "ALTER TABLE t ATTACH PARTITION loaded FOR VALUES FROM (40001) TO (50001)", "55000");
    // Without the parent's defaults the partition's trigger would not see
    // zdm's marks; a partition with its own default on a migration column,
    // and a foreign table as a partition, likewise.
    c.batch_execute("CREATE TABLE bare (LIKE t)").unwrap();
    let msg = expect_err(&mut c, "ALTER TABLE t ATTACH PARTITION bare FOR VALUES FROM (60001) TO (70001)", "55000");
    assert!(msg.contains("defaults"), "{msg}");
    expect_err(&mut c, "CREATE TABLE t_own PARTITION OF t (b DEFAULT 'x') FOR VALUES FROM (60001) TO (70001)", "55000");
    // … nor inside CREATE SCHEMA, nor one level down in a partitioned table
    // being attached.
    expect_err(&mut c, "CREATE SCHEMA s2 CREATE TABLE t_own2 PARTITION OF public.t (b DEFAULT 'x') FOR VALUES FROM (60001) TO (70001)", "55000");
    c.batch_execute(
        "CREATE TABLE sub (LIKE t INCLUDING DEFAULTS) PARTITION BY HASH (id);
         CREATE TABLE sub_0 PARTITION OF sub (b DEFAULT 'y') FOR VALUES WITH (MODULUS 1, REMAINDER 0);",
    )
    .unwrap();
    let msg = expect_err(&mut c, "ALTER TABLE t ATTACH PARTITION sub FOR VALUES FROM (60001) TO (70001)", "55000");
    assert!(msg.contains("sub_0"), "{msg}");
    c.batch_execute("CREATE FOREIGN DATA WRAPPER dummy_fdw; CREATE SERVER dummy FOREIGN DATA WRAPPER dummy_fdw").unwrap();
    expect_err(&mut c, "CREATE FOREIGN TABLE t_far PARTITION OF t FOR VALUES FROM (60001) TO (70001) SERVER dummy", "55000");
    c.batch_execute(
        "TRUNCATE loaded;
         ALTER TABLE t ATTACH PARTITION loaded FOR VALUES FROM (40001) TO (50001);
         INSERT INTO t (id, a) VALUES (40002, 'orig-40002');
         DROP TABLE t_3;",
    )
    .unwrap();
    // DETACH … CONCURRENTLY (two transactions of its own) is allowed too.
    c.batch_execute("CREATE TABLE t_5 PARTITION OF t FOR VALUES FROM (50001) TO (60001)").unwrap();
    c.batch_execute("INSERT INTO t (id, a) VALUES (50001, 'orig-50001')").unwrap();
    c.batch_execute("ALTER TABLE t DETACH PARTITION t_5 CONCURRENTLY").unwrap();
    let triggers: i64 = c.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_5'::regclass", &[]).unwrap().get(0);
    assert_eq!(triggers, 0, "the trigger clone goes with the partition");
    // The detached partition keeps its rows, and no zdm trigger.
    let triggers: i64 = c.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_def'::regclass", &[]).unwrap().get(0);
    assert_eq!(triggers, 0);
    if has_library("pg_partman_bgw") || std::path::Path::new(&pg_config_value("--sharedir")).join("extension/pg_partman.control").exists() {
        // pg_partman creates the next partitions on its schedule:
        // CREATE TABLE (LIKE …) + ATTACH PARTITION of an empty table.
        c.batch_execute(
            "CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman;
             CREATE TABLE pm (id bigint NOT NULL, a text) PARTITION BY RANGE (id);
             SELECT partman.create_parent('public.pm', 'id', 'native', '1000', p_premake := 2, p_start_partition := '1');
             INSERT INTO pm SELECT g, 'orig-' || g FROM generate_series(1, 2900) g;",
        )
        .unwrap();
        let pm: i64 = c.query_one("SELECT zdm.expand_rename('pm', 'a', 'b', background => false)", &[]).unwrap().get(0);
        let before: i64 = c.query_one("SELECT count(*) FROM pg_partition_tree('pm') WHERE isleaf", &[]).unwrap().get(0);
        c.batch_execute("CALL partman.run_maintenance_proc();").unwrap();
        let after: i64 = c.query_one("SELECT count(*) FROM pg_partition_tree('pm') WHERE isleaf", &[]).unwrap().get(0);
        assert!(after > before, "pg_partman made new partitions ({before} → {after})");
        c.batch_execute("INSERT INTO pm (id, a) SELECT g, 'orig-' || g FROM generate_series(2901, 5200) g; INSERT INTO pm (id, b) SELECT g, 'orig-' || g FROM generate_series(5201, 5500) g;").unwrap();
        backfill_all(&mut c, pm);
        c.execute("SELECT zdm.contract($1)", &[&pm]).unwrap();
        let wrong: i64 = c.query_one("SELECT count(*) FROM pm WHERE b IS DISTINCT FROM 'orig-' || id", &[]).unwrap().get(0);
        let rows: i64 = c.query_one("SELECT count(*) FROM pm", &[]).unwrap().get(0);
        println!("pg_partman: {before} → {after} leaves, {rows} rows, {wrong} mismatches");
        assert_eq!((rows, wrong), (5500, 0));
    } else {
        println!("SKIPPED pg_partman part: not installed for this server");
    }
    backfill_all(&mut c, id);
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let wrong: i64 = c.query_one("SELECT count(*) FROM t WHERE b IS DISTINCT FROM 'orig-' || id", &[]).unwrap().get(0);
    let rows: i64 = c.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
    assert_eq!(rows, 20_000 + 200 + 1, "t_1, t_2, the rows made in t_4 and loaded");
    // The detached partition still has the old column's values.
    let kept: i64 = c.query_one("SELECT count(*) FROM t_def WHERE a IS NOT NULL", &[]).unwrap().get(0);
    assert!(kept > 0);
}

/// add_check and validate_not_null on a partitioned tree validate leaf by
/// leaf (a step per leaf in zdm.events, each its own transaction), then the
/// parent; violations in one leaf refuse the constraint and remove it;
/// add_foreign_key from a partitioned table needs PostgreSQL 18 (0A000
/// before), and works to one on both.
#[test]
fn constraints_on_a_partitioned_table_validate_leaf_by_leaf() {
    let cluster = Cluster::start("partcons", &[]);
    let mut c = cluster.create_db("partcons");
    make_tree(&mut c, 9_000);
    let leaves: i64 = c.query_one("SELECT count(*) FROM pg_partition_tree('t') WHERE isleaf", &[]).unwrap().get(0);
    let check: i64 = c.query_one("SELECT zdm.add_check('t', 't_n_positive', 'n > 0')", &[]).unwrap().get(0);
    let nn: i64 = c.query_one("SELECT zdm.validate_not_null('t', 'n')", &[]).unwrap().get(0);
    for id in [check, nn] {
        let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
        assert_eq!(phase, "contracted");
        let steps: i64 = c
            .query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'validate constraint on partition'", &[&id])
            .unwrap()
            .get(0);
        assert_eq!(steps, leaves, "one validation per leaf");
    }
    let not_null: i64 = c
        .query_one("SELECT count(*) FROM pg_attribute WHERE attname = 'n' AND attnotnull AND attrelid IN (SELECT relid FROM pg_partition_tree('t'))", &[])
        .unwrap()
        .get(0);
    assert_eq!(not_null, leaves + 2, "NOT NULL on every relation of the tree");
    let valid: i64 = c
        .query_one("SELECT count(*) FROM pg_constraint WHERE conname = 't_n_positive' AND convalidated", &[])
        .unwrap()
        .get(0);
    assert_eq!(valid, leaves + 2);

    // Rows violating it in one leaf: refused, nothing left behind.
    c.batch_execute("UPDATE t SET a = NULL WHERE id = 4500").unwrap();
    // Called outside a transaction block, it waits for the worker and
    // raises what it found.
    let msg = expect_err(&mut c, "SELECT zdm.validate_not_null('t', 'a')", "23502");
    assert!(msg.contains("1 NULL"), "{msg}");
    let left: i64 = c.query_one("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'zdm\\_%\\_a\\_not\\_null'", &[]).unwrap().get(0);
    assert_eq!(left, 0);

    // A foreign key from it: on 18 NOT VALID on the partitioned table; before
    // 18 on each leaf, validated leaf by leaf, then attached. An orphan in
    // one leaf: refused with 23503, nothing left on any relation.
    c.batch_execute("CREATE TABLE r (id bigint PRIMARY KEY); INSERT INTO r SELECT generate_series(1, 8999)").unwrap();
    let msg = expect_err(&mut c, "SELECT zdm.add_foreign_key('t', ARRAY['n'], 'r', ARRAY['id'], constraint_name => 'T n fk')", "23503");
    assert!(msg.contains("1 row"), "{msg}");
    let left: i64 = c.query_one("SELECT count(*) FROM pg_constraint WHERE conname = 'T n fk'", &[]).unwrap().get(0);
    assert_eq!(left, 0);
    c.batch_execute("INSERT INTO r VALUES (9000)").unwrap();
    let id: i64 = c.query_one("SELECT zdm.add_foreign_key('t', ARRAY['n'], 'r', ARRAY['id'], constraint_name => 'T n fk')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let (valid, attached): (i64, i64) = c
        .query_one(
            "SELECT count(*) FILTER (WHERE convalidated), count(*) FILTER (WHERE conparentid <> 0) FROM pg_constraint
              WHERE conname = 'T n fk' AND conrelid IN (SELECT relid FROM pg_partition_tree('t'))",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((valid, attached), (leaves + 2, leaves + 1), "valid on every relation, every partition's attached");
    if pg_major() < 18 {
        let steps: i64 = c
            .query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'validate constraint on partition'", &[&id])
            .unwrap()
            .get(0);
        assert_eq!(steps, leaves, "validated leaf by leaf");
    }
    expect_err(&mut c, "INSERT INTO t (id, n) VALUES (4000000, 123456)", "23503");
    // To a partitioned table: referencing t's unique key from a plain table.
    c.batch_execute("ALTER TABLE t ADD CONSTRAINT t_id_key UNIQUE (id); CREATE TABLE child (t_id bigint); INSERT INTO child SELECT generate_series(1, 100)")
        .unwrap();
    let id: i64 = c.query_one("SELECT zdm.add_foreign_key('child', ARRAY['t_id'], 't', ARRAY['id'])", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
}
