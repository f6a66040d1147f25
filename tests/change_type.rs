//! Host side: changing a column's type online (issue 10): a shadow column
//! filled by the convert trigger and the backfill, swapped in at contract.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the writer saw: the last `v` it wrote per parent id, and the ids it
/// inserted (from the sequence) with a child row each.
struct Ledger {
    values: std::collections::HashMap<i64, String>,
    inserted: Vec<i64>,
}

/// Inserts parents (ids from the serial) with a child each, and updates
/// existing parents, until stopped.
fn parent_writer(mut c: postgres::Client, rows: i64, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger { values: Default::default(), inserted: Vec::new() };
    let mut i: i64 = 0;
    while i < 200 || !stop.load(Ordering::SeqCst) {
        i += 1;
        if i % 3 == 0 {
            let v = format!("ins-{i}");
            // id is read back as text: it is int4 before contract, int8 after
            let id: String = c.query_one("INSERT INTO parent (v) VALUES ($1) RETURNING id::text", &[&v]).unwrap().get(0);
            let id: i64 = id.parse().unwrap();
            c.execute("INSERT INTO child (parent_id, note) VALUES ($1::text::int8, 'w')", &[&id.to_string()]).unwrap();
            ledger.values.insert(id, v);
            ledger.inserted.push(id);
        } else {
            let k = (i * 7919) % rows + 1;
            let v = format!("upd-{i}");
            c.execute("UPDATE parent SET v = $1 WHERE id = $2::text::int8", &[&v, &k.to_string()]).unwrap();
            ledger.values.insert(k, v);
        }
        if i > 100_000 {
            break;
        }
    }
    ledger
}

fn column_type(c: &mut postgres::Client, table: &str, column: &str) -> String {
    c.query_one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
        &[&table, &column],
    )
    .unwrap()
    .get(0)
}

/// The most feared case: `id serial PRIMARY KEY` referenced by a child, to
/// bigint, with inserts (new ids) and updates throughout; then the child's
/// column, its own migration. Afterwards both are bigint, the key and the
/// foreign key hold, the sequence is bigint and ids beyond 2^31 work, and
/// no write was lost.
#[test]
fn serial_primary_key_with_children_becomes_bigint_under_writes() {
    const ROWS: i64 = 200_000;
    let cluster = Cluster::start("ctpk", &[]);
    let mut c = cluster.create_db("ct");
    c.batch_execute(&format!(
        "CREATE TABLE parent (id serial PRIMARY KEY, v text);
         INSERT INTO parent (v) SELECT 'orig-' || g FROM generate_series(1, {ROWS}) g;
         CREATE TABLE child (id bigserial PRIMARY KEY, parent_id int CONSTRAINT child_parent_fk REFERENCES parent (id), note text);
         INSERT INTO child (parent_id, note) SELECT g % {ROWS} + 1, 'c' FROM generate_series(1, 50000) g;"
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE parent").unwrap();
    c.batch_execute("VACUUM ANALYZE child").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (conn, stop) = (cluster.connect("ct"), stop.clone());
        std::thread::spawn(move || parent_writer(conn, ROWS, stop))
    };
    let parent: i64 = c.query_one("SELECT zdm.expand_change_type('parent', 'id', 'bigint')", &[]).unwrap().get(0);
    let shadow: String = c.query_one("SELECT new_column::text FROM zdm.status WHERE id = $1", &[&parent]).unwrap().get(0);
    assert_eq!(shadow, "id_zdm_new", "the shadow column is shown in zdm.status");
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&parent]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&parent]).unwrap();
    assert_eq!(column_type(&mut c, "parent", "id"), "bigint");
    // The child's key was re-pointed at contract; its validation runs on.
    let validation: i64 = c
        .query_one("SELECT max(id) FROM zdm.migrations WHERE kind = 'foreign_key' AND object_name = 'child_parent_fk'", &[])
        .unwrap()
        .get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&validation]).unwrap().get(0);
    assert_eq!(phase, "contracted");
    // Then the child's column, with the writer still going.
    let child: i64 = c.query_one("SELECT zdm.expand_change_type('child', 'parent_id', 'bigint')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '5 minutes')", &[&child]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&child]).unwrap();
    stop.store(true, Ordering::SeqCst);
    let ledger = writer.join().unwrap();
    assert!(ledger.inserted.len() > 50, "the writer inserted throughout ({} inserts)", ledger.inserted.len());

    assert_eq!(column_type(&mut c, "parent", "id"), "bigint");
    assert_eq!(column_type(&mut c, "child", "parent_id"), "bigint");
    let pk: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'parent_pkey'", &[]).unwrap().get(0);
    assert_eq!(pk, "PRIMARY KEY (id)");
    let fk: String = c
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'child_parent_fk' AND convalidated", &[])
        .unwrap()
        .get(0);
    assert_eq!(fk, "FOREIGN KEY (parent_id) REFERENCES parent(id)");
    let seq: String = c.query_one("SELECT data_type::text FROM pg_sequences WHERE sequencename = 'parent_id_seq'", &[]).unwrap().get(0);
    assert_eq!(seq, "bigint");
    let owned: String = c.query_one("SELECT pg_get_serial_sequence('parent', 'id')", &[]).unwrap().get(0);
    assert_eq!(owned, "public.parent_id_seq");
    // Ids beyond 2^31, by hand and from the sequence.
    c.batch_execute(
        "INSERT INTO parent (id, v) VALUES (2147483649, 'big');
         INSERT INTO child (parent_id) VALUES (2147483649);
         SELECT setval('parent_id_seq', 3000000000);
         INSERT INTO parent (v) VALUES ('from the sequence');",
    )
    .unwrap();
    let top: i64 = c.query_one("SELECT max(id) FROM parent", &[]).unwrap().get(0);
    assert_eq!(top, 3_000_000_001);
    let (code, _) = sqlstate(c.execute("INSERT INTO child (parent_id) VALUES (5000000000)", &[]));
    assert_eq!(code, "23503", "the foreign key holds");
    // Nothing lost: every value the writer wrote, every row it inserted,
    // every untouched row as it was.
    let keys: Vec<i64> = ledger.values.keys().copied().collect();
    let values: Vec<String> = keys.iter().map(|k| ledger.values[k].clone()).collect();
    c.batch_execute("CREATE TEMP TABLE ledger (k bigint PRIMARY KEY, v text)").unwrap();
    c.execute("INSERT INTO ledger SELECT * FROM unnest($1::bigint[], $2::text[])", &[&keys, &values]).unwrap();
    let wrong: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM parent p LEFT JOIN ledger l ON l.k = p.id
                  WHERE p.id <= {ROWS} AND p.v IS DISTINCT FROM coalesce(l.v, 'orig-' || p.id)"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let missing: i64 = c
        .query_one("SELECT count(*) FROM ledger l WHERE NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = l.k AND p.v = l.v)", &[])
        .unwrap()
        .get(0);
    let orphans: i64 = c
        .query_one("SELECT count(*) FROM child c WHERE NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = c.parent_id)", &[])
        .unwrap()
        .get(0);
    assert_eq!((wrong, missing, orphans), (0, 0, 0), "mismatches against the writer's ledger");
    let leftovers: i64 = c
        .query_one("SELECT count(*) FROM pg_attribute WHERE attrelid IN ('parent'::regclass, 'child'::regclass) AND attname LIKE '%zdm%' AND NOT attisdropped", &[])
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
    // The ACCESS EXCLUSIVE steps were brief (logged with the lock they held).
    let events: Vec<String> = c
        .query("SELECT step || ': ' || coalesce(detail, '') FROM zdm.events WHERE migration_id IN ($1, $2) AND step IN ('expand', 'contract')", &[&parent, &child])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!("{events:#?}");
}

/// text → jsonb with one row that is not JSON: the backfill fails naming the
/// row and the error, nothing is dropped, abort leaves the table as it was.
#[test]
fn text_to_jsonb_failing_row_is_named_and_abort_restores() {
    let cluster = Cluster::start("ctjson", &[]);
    let mut c = cluster.create_db("cj");
    c.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO docs SELECT g, format('{\"n\": %s}', g) FROM generate_series(1, 5000) g;
         UPDATE docs SET body = 'not json' WHERE id = 4321;",
    )
    .unwrap();
    let before: Vec<String> = c
        .query("SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('docs', 'body', 'jsonb', using_expr => 'body::jsonb')", &[]).unwrap().get(0);
    let msg = expect_err(&mut c, &format!("SELECT zdm.wait({id}, '2 minutes')"), "55000");
    assert!(msg.contains("invalid input syntax for type json"), "{msg}");
    let error: String = c.query_one("SELECT last_error FROM zdm.status WHERE id = $1", &[&id]).unwrap().get(0);
    let ctid: String = c.query_one("SELECT ctid::text FROM docs WHERE id = 4321", &[]).unwrap().get(0);
    assert!(error.contains(&format!("row {ctid}")) && error.contains("invalid input syntax for type json"), "{error}");
    // A write of a value that cannot be converted is refused too, naming the migration.
    let (code, msg) = sqlstate(c.execute("INSERT INTO docs VALUES (-1, 'nope')", &[]));
    assert_eq!(code, "22P02");
    assert!(msg.contains("zdm type change") && msg.contains("a new row"), "{msg}");
    c.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
    let after: Vec<String> = c
        .query("SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(after, before, "abort leaves the table as it was");
    let triggers: i64 = c.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass", &[]).unwrap().get(0);
    assert_eq!(triggers, 0);
    // Fixed, it goes through.
    c.batch_execute("UPDATE docs SET body = '\"fixed\"' WHERE id = 4321").unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('docs', 'body', 'jsonb', using_expr => 'body::jsonb')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(column_type(&mut c, "docs", "body"), "jsonb");
    let n: i32 = c.query_one("SELECT (body->>'n')::int FROM docs WHERE id = 77", &[]).unwrap().get(0);
    assert_eq!(n, 77);
    let nn: bool = c.query_one("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'body'", &[]).unwrap().get(0);
    assert!(nn, "NOT NULL carried");
}

/// varchar(50) → text, timestamp → timestamptz (AT TIME ZONE 'UTC'),
/// numeric(10,2) → numeric(12,2): values converted, defaults, comments and
/// indexes carried; the wrong requests refused with their SQLSTATEs; an
/// expand rolled back leaves nothing.
#[test]
fn common_type_changes_and_refusals() {
    let cluster = Cluster::start("ctmisc", &[]);
    let mut c = cluster.create_db("cm");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, name varchar(50) DEFAULT 'anon', at timestamp NOT NULL DEFAULT '2020-01-01 00:00',
                         price numeric(10,2) CHECK (price >= 0), g int GENERATED ALWAYS AS (id * 2) STORED, k int GENERATED ALWAYS AS IDENTITY);
         COMMENT ON COLUMN t.name IS 'who';
         CREATE INDEX t_name ON t (name);
         INSERT INTO t (id, name, at, price) SELECT g, 'n' || g, timestamp '2024-03-01 12:00' + g * interval '1 minute', g / 100.0 FROM generate_series(1, 3000) g;",
    )
    .unwrap();
    // refusals, before anything changes
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'no_such_type')", "42704");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => 'other.x')", "42P01");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => 'name, name')", "42601");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => 'name FROM t')", "42601");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => '(SELECT 1)')", "0A000");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => 'name || price')", "0A000");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => 't::text')", "0A000");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'name', 'text', using_expr => '1); DROP TABLE t; --')", "42601");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'at', 'timestamptz')", "42P17");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'at', 'int')", "42846");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'g', 'bigint')", "0A000");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'ctid', 'text')", "0A000");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'nope', 'text')", "42703");
    expect_err(&mut c, "SELECT zdm.expand_change_type('t', 'price', 'numeric(10,2)')", "22023");
    let recorded: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(recorded, 0, "refusals record nothing");
    // BEGIN … ROLLBACK leaves nothing
    c.batch_execute("BEGIN; SELECT zdm.expand_change_type('t', 'name', 'text'); ROLLBACK;").unwrap();
    let leftovers: i64 = c
        .query_one("SELECT (SELECT count(*) FROM zdm.migrations) + (SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname LIKE '%zdm%' AND NOT attisdropped) + (SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass)", &[])
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "a rolled-back expand leaves nothing");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let workers: i64 = c.query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'zdm backfill'", &[]).unwrap().get(0);
    assert_eq!(workers, 0, "its worker exited without doing anything");

    let changes = [
        ("name", "text", None),
        ("at", "timestamp with time zone", Some("at AT TIME ZONE 'UTC'")),
        ("price", "numeric(12,2)", None),
    ];
    for (column, ty, using) in changes {
        let id: i64 = c.query_one("SELECT zdm.expand_change_type('t', $1, $2, using_expr => $3)", &[&column, &ty, &using]).unwrap().get(0);
        // a write during the migration goes through the trigger
        c.execute("UPDATE t SET name = name || '', at = at, price = price WHERE id = 5", &[]).unwrap();
        let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
        assert_eq!(phase, "backfilled");
        c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
        assert_eq!(column_type(&mut c, "t", column), ty);
    }
    c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let (name, at, price): (String, String, String) = {
        let r = c.query_one("SELECT name, at::text, price::text FROM t WHERE id = 60", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((name.as_str(), at.as_str(), price.as_str()), ("n60", "2024-03-01 13:00:00+00", "0.60"));
    let comment: String = c.query_one("SELECT col_description('t'::regclass, (SELECT attnum FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'name'))", &[]).unwrap().get(0);
    assert_eq!(comment, "who");
    let default: String = c.query_one("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 't'::regclass AND adnum = (SELECT attnum FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'name')", &[]).unwrap().get(0);
    assert_eq!(default, "'anon'::character varying");
    let index: String = c.query_one("SELECT pg_get_indexdef('t_name'::regclass)", &[]).unwrap().get(0);
    assert_eq!(index, "CREATE INDEX t_name ON public.t USING btree (name)");
    let check: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'c'", &[]).unwrap().get(0);
    assert_eq!(check, "CHECK ((price >= (0)::numeric))");
    let invalid: i64 = c.query_one("SELECT count(*) FROM t WHERE at IS NULL OR name IS NULL", &[]).unwrap().get(0);
    assert_eq!(invalid, 0);
}

/// Identity columns stay identity columns: renamed, and widened to bigint,
/// each goes on from where its sequence stopped, same kind and name.
#[test]
fn identity_columns_stay_identity() {
    let cluster = Cluster::start("ctident", &[]);
    let mut c = cluster.create_db("ci");
    c.batch_execute(
        "CREATE TABLE t (k int GENERATED ALWAYS AS IDENTITY (START WITH 10 INCREMENT BY 5) PRIMARY KEY, v text);
         INSERT INTO t (v) SELECT 'r' || g FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('t', 'k', 'bigint')", &[]).unwrap().get(0);
    c.batch_execute("INSERT INTO t (v) VALUES ('during')").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let (ty, identity): (String, String) = {
        let r = c.query_one("SELECT format_type(atttypid, atttypmod), attidentity::text FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'k'", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((ty.as_str(), identity.as_str()), ("bigint", "a"), "still GENERATED ALWAYS, now bigint");
    let next: i64 = c.query_one("INSERT INTO t (v) VALUES ('after') RETURNING k", &[]).unwrap().get(0);
    assert_eq!(next, 10 + 5 * 2001, "the sequence goes on where it stopped");
    let seq: String = c.query_one("SELECT pg_get_serial_sequence('t', 'k')", &[]).unwrap().get(0);
    assert_eq!(seq, "public.t_k_seq");
    let (code, _) = sqlstate(c.execute("INSERT INTO t (k, v) VALUES (1, 'x')", &[]));
    assert_eq!(code, "428C9", "GENERATED ALWAYS still refuses explicit values");
    // A rename of the identity column: the identity follows the new name.
    let id: i64 = c.query_one("SELECT zdm.expand_rename('t', 'k', 'key')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    let next2: i64 = c.query_one("INSERT INTO t (v) VALUES ('renamed') RETURNING key", &[]).unwrap().get(0);
    assert_eq!(next2, next + 5);
    let pk: String = c.query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'p'", &[]).unwrap().get(0);
    assert_eq!(pk, "PRIMARY KEY (key)");
}

/// The trigger's conversion names functions by OID: a function it uses that
/// is dropped and recreated (a new OID under the same name) is not silently
/// swapped in — writes stop with 55000 until the migration is aborted.
#[test]
fn a_recreated_conversion_function_is_not_silently_swapped_in() {
    let cluster = Cluster::start("ctfunc", &[]);
    let mut c = cluster.create_db("cf");
    c.batch_execute(
        "CREATE FUNCTION to_cents(numeric) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT ($1 * 100)::bigint';
         CREATE TABLE p (id int PRIMARY KEY, price numeric);
         INSERT INTO p SELECT g, g / 10.0 FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let id: i64 = c
        .query_one("SELECT zdm.expand_change_type('p', 'price', 'bigint', using_expr => 'to_cents(price)', background => false)", &[])
        .unwrap()
        .get(0);
    c.execute("UPDATE p SET price = 2.5 WHERE id = 1", &[]).unwrap();
    let cents: i64 = c.query_one("SELECT price_zdm_new FROM p WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(cents, 250);
    c.batch_execute(
        "DROP FUNCTION to_cents(numeric);
         CREATE FUNCTION to_cents(numeric) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT 0::bigint';",
    )
    .unwrap();
    let msg = expect_err(&mut c, "UPDATE p SET price = 3 WHERE id = 2", "55000");
    assert!(msg.contains("no longer refers to the same objects"), "{msg}");
    c.execute("SELECT zdm.abort($1)", &[&id]).unwrap();
    c.execute("UPDATE p SET price = 3 WHERE id = 2", &[]).unwrap();
}

/// zdm.convert_trigger is callable by anyone (PUBLIC may use schema zdm),
/// but attached by hand to a table it runs nothing: the conversion comes
/// from zdm's catalog, never from the trigger's arguments.
#[test]
fn a_hand_made_convert_trigger_runs_nothing() {
    let cluster = Cluster::start("cthand", &[]);
    let mut c = cluster.create_db("ch");
    c.batch_execute("CREATE ROLE intruder LOGIN").unwrap();
    let mut intruder = cluster.connect_as("ch", "intruder");
    intruder
        .batch_execute(
            "CREATE TEMP TABLE mine (a int, b bigint);
             CREATE TRIGGER zdm_convert_1 BEFORE INSERT ON mine FOR EACH ROW
               EXECUTE FUNCTION zdm.convert_trigger('a', 'b', '{CONST :consttype 20 :consttypmod -1 :constcollid 0 :constlen 8 :constbyval true :constisnull false :location -1 :constvalue 8 [ 0 0 0 0 0 0 0 0 ]}', '0');",
        )
        .unwrap();
    let (code, msg) = sqlstate(intruder.execute("INSERT INTO mine VALUES (1, NULL)", &[]));
    assert_eq!(code, "42501", "{msg}");
    assert!(msg.contains("not a zdm type change"), "{msg}");
}

/// A user's BEFORE ROW trigger that fires after zdm's could change the
/// column after zdm synced it, between the verify scan and the final lock:
/// contract refuses (55000) until it sorts before zdm's trigger.
#[test]
fn later_before_triggers_block_contract() {
    let cluster = Cluster::start("ctlater", &[]);
    let mut c = cluster.create_db("cl");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, n int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;
         CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.n := NEW.n; RETURN NEW; END $$;
         CREATE TRIGGER zzz_bump BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION bump();",
    )
    .unwrap();
    let id: i64 = c.query_one("SELECT zdm.expand_change_type('t', 'n', 'bigint')", &[]).unwrap().get(0);
    let phase: String = c.query_one("SELECT zdm.wait($1, '1 minute')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    let msg = expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    assert!(msg.contains("zzz_bump"), "{msg}");
    c.batch_execute("ALTER TRIGGER zzz_bump ON t RENAME TO aaa_bump").unwrap();
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(column_type(&mut c, "t", "n"), "bigint");
}

/// The convert trigger converts on every write that reaches the old column —
/// through the SET list (`SET a = a` included) or through an earlier BEFORE
/// trigger — and skips UPDATEs that reach neither column. A row put out of
/// sync behind its back (trigger disabled) therefore stays out of sync under
/// unrelated updates: contract refuses (55000, with the count) and drops
/// nothing, and the UPDATE its hint names converts it.
#[test]
fn convert_trigger_converts_every_write_to_the_old_column() {
    let cluster = Cluster::start("ctwrites", &[]);
    let mut c = cluster.create_db("cw");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text, n int);
         INSERT INTO t SELECT g, 'v' || g, 0 FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let id: i64 = c
        .query_one("SELECT zdm.expand_change_type('t', 'a', 'varchar(40)', using_expr => 'upper(a)', background => false)", &[])
        .unwrap()
        .get(0);
    while c.query_one("SELECT zdm.backfill_batch($1)", &[&id]).unwrap().get::<_, i64>(0) > 0 {}
    let wrong = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM t WHERE a_zdm_new IS DISTINCT FROM upper(a)", &[]).unwrap().get(0)
    };
    assert_eq!(wrong(&mut c), 0);
    c.batch_execute(
        "UPDATE t SET a = a || '-x' WHERE id <= 10;
         UPDATE t SET n = n + 1, a = 'both' WHERE id BETWEEN 11 AND 20;
         UPDATE t SET a = NULL WHERE id = 21;
         INSERT INTO t VALUES (1001, 'new', 0), (1002, NULL, 0);
         UPDATE t SET n = n + 1;",
    )
    .unwrap();
    assert_eq!(wrong(&mut c), 0);
    // An earlier BEFORE trigger changes `a` on an UPDATE that names only n.
    c.batch_execute(
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.a := NEW.a || '!'; RETURN NEW; END $$;
         CREATE TRIGGER aaa_touch BEFORE UPDATE ON t FOR EACH ROW WHEN (NEW.n > 1) EXECUTE FUNCTION touch();
         UPDATE t SET n = n + 1 WHERE id <= 30;
         DROP TRIGGER aaa_touch ON t;",
    )
    .unwrap();
    let touched: i64 = c.query_one("SELECT count(*) FROM t WHERE a LIKE '%!' AND a_zdm_new LIKE '%!'", &[]).unwrap().get(0);
    assert_eq!(touched, 29, "rows 1-30 but 21 (NULL) were touched and converted");
    assert_eq!(wrong(&mut c), 0);
    // Behind the trigger's back: a superuser disables it.
    c.batch_execute(&format!(
        "SET session_replication_role = replica; ALTER TABLE t DISABLE TRIGGER zdm_convert_{id};
         UPDATE t SET a = 'changed' WHERE id <= 7;
         ALTER TABLE t ENABLE ALWAYS TRIGGER zdm_convert_{id}; RESET session_replication_role;
         UPDATE t SET n = n + 1;"
    ))
    .unwrap();
    assert_eq!(wrong(&mut c), 7);
    let err = c.batch_execute(&format!("SELECT zdm.contract({id})")).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000", "{}", db.message());
    assert!(db.message().contains("7 row(s)"), "{}", db.message());
    assert_eq!(column_type(&mut c, "t", "a"), "text");
    // The hint's UPDATE, as given.
    let hint = db.hint().unwrap().to_string();
    let fix = hint.strip_prefix("Rewrite them: ").and_then(|h| h.split("; then").next()).unwrap_or_else(|| panic!("{hint}"));
    c.batch_execute(fix).unwrap();
    assert_eq!(wrong(&mut c), 0);
    c.execute("SELECT zdm.contract($1)", &[&id]).unwrap();
    assert_eq!(column_type(&mut c, "t", "a"), "character varying(40)");
    let a: String = c.query_one("SELECT a FROM t WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(a, "CHANGED");
}

/// A default and a CHECK written for the old type, decided at expand: the
/// default converted as the old value would be (or refused, 0A000, when its
/// conversion fails), a CHECK that does not apply to the new type refused
/// (0A000) naming it — never a raw error, never a failure after the backfill.
#[test]
fn defaults_and_checks_of_the_old_type() {
    let cluster = Cluster::start("ctdefault", &[]);
    let mut c = cluster.create_db("cd");
    c.batch_execute(
        "CREATE TABLE p (id int PRIMARY KEY, age text DEFAULT 'unknown', CONSTRAINT \"Short age\" CHECK (length(age) < 3));
         INSERT INTO p SELECT g, (g % 90)::text FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    let expand = "SELECT zdm.expand_change_type('p', 'age', 'integer', using_expr => 'age::integer')";
    let msg = expect_err(&mut c, expand, "0A000");
    assert!(msg.contains("Short age"), "{msg}");
    c.batch_execute("ALTER TABLE p DROP CONSTRAINT \"Short age\"; ALTER TABLE p ADD CONSTRAINT young CHECK (age::int < 200)").unwrap();
    let msg = expect_err(&mut c, expand, "0A000");
    assert!(msg.contains("'unknown'::text"), "{msg}");
    let recorded: i64 = c.query_one("SELECT count(*) FROM zdm.migrations", &[]).unwrap().get(0);
    assert_eq!(recorded, 0, "refusals record nothing");

    c.batch_execute("ALTER TABLE p ALTER COLUMN age SET DEFAULT '0'").unwrap();
    let id: i64 = c.query_one(expand, &[]).unwrap().get(0);
    c.batch_execute("INSERT INTO p (id) VALUES (5001)").unwrap();
    let phase: String = c.query_one("SELECT zdm.wait($1, '2 minutes')", &[&id]).unwrap().get(0);
    assert_eq!(phase, "backfilled");
    // Set since expand, a default whose conversion fails: contract refuses.
    c.batch_execute("ALTER TABLE p ALTER COLUMN age SET DEFAULT 'x'").unwrap();
    expect_err(&mut c, &format!("SELECT zdm.contract({id})"), "55000");
    c.batch_execute("ALTER TABLE p ALTER COLUMN age SET DEFAULT '0'").unwrap();
    c.query_one("SELECT zdm.contract($1)", &[&id]).unwrap();
    c.batch_execute("INSERT INTO p (id) VALUES (5002)").unwrap();
    let ages: Vec<i32> = c.query("SELECT age FROM p WHERE id IN (5001, 5002) ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ages, vec![0, 0]);
    let check: String = c
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'p'::regclass AND conname = 'young'", &[])
        .unwrap()
        .get(0);
    assert!(check.contains("age"), "{check}");
    let wrong: i64 = c.query_one("SELECT count(*) FROM p WHERE id <= 2000 AND age <> id % 90", &[]).unwrap().get(0);
    assert_eq!(wrong, 0);
}

