//! Host side: the health signals (issue 29) — a WAL archive that falls
//! behind pauses the backfill with its reason, which finishes with every row
//! in sync once archiving works again; a brief step waits out an
//! anti-wraparound autovacuum instead of spending its lock retries on it,
//! and says so in its event log.

mod common;

use common::*;
use postgres::Client;
use std::time::Duration;

fn reason(c: &mut Client, id: i64) -> Option<String> {
    c.query_one("SELECT throttle_reason FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0)
}

/// archive_mode = on with an archive_command that fails: segments pile up
/// in archive_status, the backfill waits ("WAL archive behind"); once the
/// command works again (a reload) it finishes, 0 rows out of sync.
#[test]
fn failing_archive_pauses_the_backfill() {
    let cluster = Cluster::start(
        "archive",
        &["archive_mode = on", "archive_command = 'false'", "zdm.max_archive_backlog = 2", "wal_level = replica"],
    );
    let mut c = cluster.create_db("arch");
    make_table(&mut c, "t", 100_000);
    // Some full segments that cannot be archived.
    for _ in 0..4 {
        c.batch_execute("CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler VALUES (1)").unwrap();
        c.batch_execute("SELECT pg_switch_wal()").unwrap();
    }
    let ready: i64 = c
        .query_one("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'", &[])
        .unwrap()
        .get(0);
    assert!(ready > 2, "{ready} segments waiting");
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'a', 'b')", &[]).unwrap().get(0);
    let why = wait_for("the archive reason", Duration::from_secs(30), || reason(&mut c, id).filter(|r| r.contains("WAL archive behind")));
    assert!(why.contains("zdm.max_archive_backlog"), "{why}");
    let held: i64 = c.query_one("SELECT rows_done FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    std::thread::sleep(Duration::from_secs(2));
    let still: i64 = c.query_one("SELECT rows_done FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    assert_eq!(held, still, "no batch while the archive is behind");
    // Writers meanwhile.
    c.batch_execute("UPDATE t SET a = 'moved-' || id WHERE id % 100 = 0").unwrap();
    c.batch_execute("ALTER SYSTEM SET archive_command = 'true'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '3 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let off: i64 = c.query_one("SELECT count(*) FROM t WHERE a IS DISTINCT FROM b", &[]).unwrap().get(0);
    assert_eq!(off, 0, "rows out of sync");
}

/// An anti-wraparound autovacuum, provoked (a table with a low
/// autovacuum_freeze_max_age, 110k transaction ids consumed, a cost delay
/// that makes it last): expand on that table waits for it and succeeds —
/// with a lock timeout and retries that would all have been spent behind it
/// — and its event says it waited; the same step inside a transaction that
/// holds another table gives up at once instead.
#[test]
fn brief_step_waits_out_an_anti_wraparound_vacuum() {
    let cluster = Cluster::start("wrap", &["autovacuum = on", "autovacuum_naptime = 1", "zdm.database = ''"]);
    let mut c = cluster.create_db("wrap");
    c.batch_execute(
        "CREATE TABLE w (id bigint PRIMARY KEY, a text, pad text)
           WITH (autovacuum_freeze_max_age = 100000, autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1,
                 autovacuum_vacuum_threshold = 2000000000, autovacuum_analyze_threshold = 2000000000,
                 autovacuum_vacuum_insert_threshold = -1);
         INSERT INTO w SELECT g, 'orig-' || g, repeat('x', 200) FROM generate_series(1, 6000) g;
         CREATE TABLE burn (x int);",
    )
    .unwrap();
    // 110k transaction ids (one per subtransaction that writes).
    c.batch_execute(
        "DO $$ BEGIN FOR i IN 1..110000 LOOP BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$",
    )
    .unwrap();
    let pid: i32 = wait_for("an anti-wraparound autovacuum of w", Duration::from_secs(120), || {
        c.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query LIKE '%public.w%to prevent wraparound%'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    });
    // Only the forced (anti-wraparound) vacuum may run on w: its thresholds
    // keep plain autovacuum and autoanalyze away. Attempts of 1.5 s (longer
    // than deadlock_timeout, after which PostgreSQL cancels a plain
    // autovacuum in a lock's way), 3 in all: spent long before the vacuum
    // (~180 pages at one page per 100 ms) ends.
    c.batch_execute("SET zdm.lock_timeout = '1500ms'; SET zdm.lock_retries = 2").unwrap();
    // A step that already holds a lock blocking writers of another table
    // does not wait (it would stall that table as long): it asks at once,
    // and its bounded attempts give up with 55P03.
    c.batch_execute("SET zdm.lock_timeout = '300ms'; BEGIN; LOCK TABLE burn IN ACCESS EXCLUSIVE MODE").unwrap();
    let started = std::time::Instant::now();
    let (code, message) = sqlstate(c.query_one("SELECT zdm.expand_rename('w', 'a', 'b', background => false)", &[]));
    assert_eq!(code, "55P03", "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "waited for the vacuum while holding burn");
    c.batch_execute("ROLLBACK; SET zdm.lock_timeout = '1500ms'").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_rename('w', 'a', 'b', background => false)", &[]).unwrap().get(0);
    let gone: bool = c
        .query_one("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%to prevent wraparound%')", &[&pid])
        .unwrap()
        .get(0);
    assert!(gone, "expand ran while the vacuum still held the table");
    let detail: String = c
        .query_one("SELECT string_agg(coalesce(detail, ''), ' | ') FROM zdm.events WHERE migration_id = $1 AND step = 'expand'", &[&id])
        .unwrap()
        .get(0);
    assert!(detail.contains("waited ") && detail.contains("anti-wraparound autovacuum"), "{detail}");
}
