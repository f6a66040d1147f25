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
         ALTER TABLE t ALTER COLUMN a SET COMPRESSION pglz;",
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
    let mut reader = cluster.connect_as("carry", "reader");
    let v: String = reader.query_one("SELECT b FROM t WHERE id = 7", &[]).unwrap().get(0);
    assert_eq!(v, "orig-7");
    let (code, _) = sqlstate(reader.query_one("SELECT pad FROM t WHERE id = 7", &[]));
    assert_eq!(code, "42501", "only the carried column grant, nothing more");
}
