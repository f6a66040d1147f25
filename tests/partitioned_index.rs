//! Host-side: indexes on partitioned tables, which PostgreSQL cannot build
//! concurrently — zdm.create_index on a 20-partition table under writers
//! (ON ONLY, a concurrent build per leaf, ATTACH of each: the parent valid,
//! every leaf attached, writers never waiting on the build), a killed
//! worker resuming at the first leaf without a valid index, a duplicate in
//! one leaf under a unique index (the leaf named, 23505 kept, nothing
//! INVALID left anywhere), zdm.drop_index, and an index carried by a rename.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTS: i64 = 20;
const PER_PART: i64 = 10_000;

/// `p (id, n, pad)` range-partitioned by id into PARTS leaves.
fn make_parts(c: &mut postgres::Client) {
    let mut sql = String::from("CREATE TABLE p (id bigint NOT NULL, n bigint, pad text DEFAULT repeat('x', 80)) PARTITION BY RANGE (id);");
    for i in 0..PARTS {
        sql.push_str(&format!("CREATE TABLE p_{i} PARTITION OF p FOR VALUES FROM ({}) TO ({});", i * PER_PART, (i + 1) * PER_PART));
    }
    sql.push_str(&format!("INSERT INTO p (id, n) SELECT g, g FROM generate_series(0, {}) g;", PARTS * PER_PART - 1));
    c.batch_execute(&sql).unwrap();
    c.batch_execute("VACUUM ANALYZE p").unwrap();
}

/// (valid, leaves attached) of the index `name` on `p`.
fn index_tree(c: &mut postgres::Client, name: &str) -> (bool, i64, i64) {
    let r = c
        .query_one(
            "SELECT i.indisvalid,
                    (SELECT count(*) FROM pg_partition_tree($1::text::regclass) t JOIN pg_class k ON k.oid = t.relid WHERE t.isleaf AND k.relkind = 'i'),
                    (SELECT count(*) FROM pg_index x JOIN pg_class k ON k.oid = x.indexrelid WHERE NOT x.indisvalid
                        AND x.indrelid IN (SELECT relid FROM pg_partition_tree('p')))
               FROM pg_index i WHERE i.indexrelid = $1::text::regclass",
            &[&name],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Writers through the parent into every leaf; each counts its statements
/// and remembers the slowest.
fn writers(cluster: &Cluster, stop: &Arc<AtomicBool>, slowest_ms: &Arc<AtomicI64>) -> Vec<std::thread::JoinHandle<i64>> {
    (0..2)
        .map(|w| {
            let (mut c, stop, slowest) = (cluster.connect("postgres"), stop.clone(), slowest_ms.clone());
            std::thread::spawn(move || {
                let mut i: i64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let started = Instant::now();
                    if i % 3 == 0 {
                        let id = PARTS * PER_PART * (2 + w) + i;
                        c.execute("INSERT INTO p (id, n) VALUES ($1::bigint % $2::bigint, $1::bigint)", &[&id, &(PARTS * PER_PART)]).unwrap();
                    } else {
                        let id = (i * 7919 + w) % (PARTS * PER_PART);
                        c.execute("UPDATE p SET pad = 'w' WHERE id = $1", &[&id]).unwrap();
                    }
                    slowest.fetch_max(started.elapsed().as_millis() as i64, Ordering::SeqCst);
                }
                i
            })
        })
        .collect()
}

#[test]
fn create_index_on_twenty_partitions_under_writers() {
    let cluster = Cluster::start("partidx", &[]);
    let mut c = cluster.connect("postgres"); // zdm.database: the launcher resumes jobs here
    c.batch_execute("CREATE EXTENSION zdm").unwrap();
    make_parts(&mut c);
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicI64::new(0));
    let threads = writers(&cluster, &stop, &slowest);

    // A build interrupted by a killed worker resumes where it stopped.
    let id: i64 = c.query_one("SELECT zdm.create_index('CREATE INDEX p_n ON p (n)')", &[]).unwrap().get(0);
    let built = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM zdm.events WHERE migration_id = $1 AND step = 'index built on partition'", &[&id]).unwrap().get(0)
    };
    wait_for("a few leaves built", Duration::from_secs(60), || (built(&mut c) >= 3).then_some(()));
    let pid: i32 = c
        .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'zdm index' AND application_name = $1", &[&format!("zdm index {id}")])
        .unwrap()
        .get(0);
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let (valid, attached, invalid) = index_tree(&mut c, "p_n");
    assert!(valid, "the parent index is valid once every leaf is attached");
    assert_eq!((attached, invalid), (PARTS, 0));
    let resumed: String = c
        .query_one("SELECT detail FROM zdm.events WHERE migration_id = $1 AND step = 'index attached on every partition'", &[&id])
        .unwrap()
        .get(0);
    println!("killed after {} leaves; then {resumed}", built(&mut c));
    let rebuilt: i64 = built(&mut c);
    assert!(rebuilt <= PARTS + 1, "leaves built before the kill are not built again ({rebuilt} builds)");

    // A duplicate in one leaf under a unique index: that leaf is named,
    // 23505 kept, nothing INVALID left on any relation of the tree.
    c.batch_execute("INSERT INTO p (id, n) VALUES (15, 15)").unwrap();
    let id: i64 = c.query_one("SELECT zdm.create_index('CREATE UNIQUE INDEX p_id_n ON p (id, n)')", &[]).unwrap().get(0);
    let error = expect_err(&mut c, &format!("SELECT zdm.wait({id}, '5 minutes')"), "23505");
    assert!(error.contains("p_0"), "the failing partition is named: {error}");
    let left: i64 = c
        .query_one("SELECT count(*) FROM pg_class WHERE relname LIKE 'p\\_id\\_n%' AND relkind IN ('i', 'I')", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no index of the failed build is left anywhere");

    // drop_index: the partitioned index and every leaf's; a leaf's own
    // index is refused (2BP01) with the parent named.
    let leaf_index: String = c
        .query_one("SELECT c.relname::text FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = 'p_n'::regclass LIMIT 1", &[])
        .unwrap()
        .get(0);
    let msg = expect_err(&mut c, &format!("SELECT zdm.drop_index('{leaf_index}')"), "2BP01");
    assert!(msg.contains("p_n"), "{msg}");
    let id: i64 = c.query_one("SELECT zdm.drop_index('p_n')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let left: i64 = c
        .query_one("SELECT count(*) FROM pg_index WHERE indrelid IN (SELECT relid FROM pg_partition_tree('p'))", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    stop.store(true, Ordering::SeqCst);
    let writes: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    println!("{writes} writes, the slowest {} ms", slowest.load(Ordering::SeqCst));
    assert!(writes > 100);
}

/// A rename carries an index on the old column of a partitioned table:
/// built leaf by leaf after the backfill, attached, and named as the old one
/// at contract.
#[test]
fn rename_carries_an_index_on_a_partitioned_table() {
    let cluster = Cluster::start("partcarry", &[]);
    let mut c = cluster.create_db("partcarry");
    make_parts(&mut c);
    c.batch_execute("CREATE INDEX p_n_idx ON p (n) WHERE n > 100").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('p', 'n', 'm')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let (valid, attached, invalid) = index_tree(&mut c, "p_n_idx");
    assert!(valid);
    assert_eq!((attached, invalid), (PARTS, 0));
    let def: String = c.query_one("SELECT pg_get_indexdef('p_n_idx'::regclass)", &[]).unwrap().get(0);
    assert!(def.contains("(m)") && def.contains("WHERE (m > 100)"), "{def}");
    let wrong: i64 = c.query_one("SELECT count(*) FROM p WHERE m IS DISTINCT FROM id", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
}
