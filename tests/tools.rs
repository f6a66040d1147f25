//! Host side: what migration tools need (issue 11, first part): calls that
//! are safe to re-run at every phase, and finding a migration by the table
//! and column it changes.

mod common;

use common::*;

fn one_i64(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Every call repeated with the same arguments, at every phase: the same
/// id or a no-op, never an error; different arguments still refused.
#[test]
fn repeated_calls_are_safe_at_every_phase() {
    let cluster = Cluster::start("tools", &[]);
    let mut c = cluster.create_db("tl");
    make_table(&mut c, "t", 5_000);
    c.batch_execute("ALTER TABLE t ADD COLUMN n int; UPDATE t SET n = id;").unwrap();

    // rename: expand twice, batches past the end, contract twice
    let id = one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)");
    assert_eq!(one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)"), id);
    expect_err(&mut c, "SELECT zdm.expand_rename('t', 'a', 'c')", "55000");
    assert_eq!(one_i64(&mut c, "SELECT zdm.migration_id('t', 'a')"), id);
    assert_eq!(one_i64(&mut c, "SELECT zdm.migration_id('t', 'b')"), id);
    while one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id}, 2000)")) > 0 {}
    assert_eq!(one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id})")), 0);
    assert_eq!(one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)"), id, "backfilled: still the same id");
    c.batch_execute("SELECT zdm.contract('t', 'b')").unwrap();
    c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap();
    c.batch_execute("SELECT zdm.contract('t', 'b')").unwrap();
    assert_eq!(one_i64(&mut c, &format!("SELECT zdm.backfill_batch({id})")), 0, "a scheduled batch after contract is a no-op");
    expect_err(&mut c, &format!("SELECT zdm.abort({id})"), "55000");

    // type change: expand twice, then abort twice (by id and by column)
    let ct = one_i64(&mut c, "SELECT zdm.expand_change_type('t', 'n', 'bigint', background => false)");
    assert_eq!(one_i64(&mut c, "SELECT zdm.expand_change_type('t', 'n', 'bigint', background => false)"), ct);
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'n', 'numeric')", "55000");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'n', 'bigint', using_expr => 'n * 2')", "55000");
    c.batch_execute("SELECT zdm.abort('t', 'n')").unwrap();
    c.batch_execute(&format!("SELECT zdm.abort({ct})")).unwrap();
    c.batch_execute("SELECT zdm.abort('t', 'n')").unwrap();

    // constraints: the same call again resumes / returns the same id
    // (in one transaction, where both are queued; after it finished, a
    // repeat is a recorded no-op: the column is NOT NULL already)
    let mut tx = c.transaction().unwrap();
    let nn: i64 = tx.query_one("SELECT zdm.validate_not_null('t', 'n')", &[]).unwrap().get(0);
    let again: i64 = tx.query_one("SELECT zdm.validate_not_null('t', 'n')", &[]).unwrap().get(0);
    assert_eq!(again, nn);
    tx.commit().unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&nn]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    let noop = one_i64(&mut c, "SELECT zdm.validate_not_null('t', 'n')");
    let phase: String = c.query_one("SELECT phase FROM zdm.status WHERE id = $1", &[&noop]).unwrap().get(0);
    assert_eq!(phase, "contracted");

    // lookups: none, and ambiguity
    expect_err(&mut c, "SELECT zdm.migration_id('t', 'pad')", "42704");
    let r = one_i64(&mut c, "SELECT zdm.expand_rename('t', 'pad', 'padding', background => false)");
    c.batch_execute("BEGIN; SELECT zdm.validate_not_null('t', 'padding'); COMMIT;").unwrap();
    let msg = expect_err(&mut c, "SELECT zdm.migration_id('t', 'padding')", "42P08");
    assert!(msg.contains(&r.to_string()), "{msg}");
    assert_eq!(one_i64(&mut c, "SELECT zdm.migration_id('t', 'padding', kind => 'rename')"), r);
}

/// A window that excludes now holds the job (no batch recorded, the reason
/// in zdm.status); one that includes now lets it run. Bad windows: 22023.
#[test]
fn maintenance_windows_hold_and_release_a_job() {
    let cluster = Cluster::start("window", &[]);
    let mut c = cluster.create_db("wd");
    make_table(&mut c, "t", 20_000);
    let id = one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)");
    let hour: i32 = c.query_one("SELECT extract(hour FROM clock_timestamp() AT TIME ZONE 'UTC')::int", &[]).unwrap().get(0);
    let later = format!("{:02}:00-{:02}:00 UTC", (hour + 2) % 24, (hour + 3) % 24);
    c.execute("SELECT zdm.start_backfill($1, windows => ARRAY[$2])", &[&id, &later]).unwrap();
    let reason: String = wait_for("the job to wait for its window", std::time::Duration::from_secs(30), || {
        c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&id]).unwrap().get::<_, Option<String>>(0)
    });
    assert!(reason.contains("maintenance window") && reason.contains(&later), "{reason}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let batches = one_i64(&mut c, &format!("SELECT count(*) FROM zdm.batches WHERE migration_id = {id}"));
    assert_eq!(batches, 0, "no batch outside the window");
    expect_err(&mut c, &format!("SELECT zdm.set_options({id}, windows => ARRAY['25:00-26:00'])"), "22023");
    expect_err(&mut c, &format!("SELECT zdm.set_options({id}, windows => ARRAY['01:00-02:00 Mars/Olympus'])"), "22023");
    c.execute("SELECT zdm.set_options($1, windows => ARRAY['00:00-24:00 UTC'])", &[&id]).unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
}

/// A never-analysed table whose first blocks hold only dead rows (an aborted
/// backfill moved them to the end): the row estimate, and the rows per block
/// the first batch is planned with, still come out near the truth (sampling
/// only the first blocks saw 0 rows and planned 1-row-per-block batches).
#[test]
fn row_estimate_of_a_never_analysed_table() {
    let cluster = Cluster::start("estimate", &["autovacuum = off"]);
    let mut c = cluster.create_db("es");
    c.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, a text, pad text DEFAULT repeat('x', 40));
         INSERT INTO t (id, a) SELECT g, 'orig-' || g FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let first = one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)");
    for _ in 0..3 {
        one_i64(&mut c, &format!("SELECT zdm.backfill_batch({first}, 5000)"));
    }
    c.batch_execute(&format!("SELECT zdm.abort({first})")).unwrap();
    assert_eq!(one_i64(&mut c, "SELECT count(*) FROM t WHERE ctid < '(16,0)'"), 0, "the first blocks hold only dead rows");
    assert_eq!(one_i64(&mut c, "SELECT reltuples::bigint FROM pg_class WHERE relname = 't'"), -1, "never analysed");

    let id = one_i64(&mut c, "SELECT zdm.expand_rename('t', 'a', 'b', background => false)");
    let (estimate, per_block, blocks): (i64, f64, i64) = {
        let r = c.query_one("SELECT rows_estimate, rows_per_block, rel_blocks FROM zdm.migrations WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!((8_000..=50_000).contains(&estimate), "estimate {estimate} for 20,000 rows");
    assert!(per_block * blocks as f64 > 10_000.0, "{per_block} rows per block over {blocks} blocks");
}
