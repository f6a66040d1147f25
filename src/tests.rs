//! In-database tests (`#[pg_test]`): each runs inside one rolled-back
//! transaction, so they cover single-transaction behaviour: every function,
//! every refusal with its SQLSTATE, the trigger's semantics. Behaviour that
//! spans transactions or sessions is tested from the host (tests/*.rs).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// SQLSTATE raised by `sql` (None when it succeeds), plus the message.
    fn error_of(sql: &str) -> Option<(String, String)> {
        // created once per test (it may later run under SET ROLE)
        if one::<bool>("SELECT to_regproc('pg_temp.error_of') IS NULL") == Some(true) {
            run("CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
                 BEGIN EXECUTE q; RETURN NULL;
                 EXCEPTION WHEN others THEN RETURN SQLSTATE || ':' || SQLERRM; END $f$");
        }
        let r = Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()]).unwrap();
        r.map(|s| {
            let (code, msg) = s.split_once(':').unwrap();
            (code.to_string(), msg.to_string())
        })
    }

    #[track_caller]
    fn assert_sqlstate(sql: &str, code: &str, message_part: &str) {
        match error_of(sql) {
            None => panic!("expected {code} from {sql}, but it succeeded"),
            Some((c, m)) => {
                assert_eq!(c, code, "SQLSTATE of {sql} (message: {m})");
                assert!(m.contains(message_part), "message of {sql} should contain {message_part:?}: {m}");
            }
        }
    }

    fn people() {
        run("CREATE TABLE people (id bigserial PRIMARY KEY, email text, name text NOT NULL DEFAULT 'anon')");
        run("INSERT INTO people (email, name) SELECT 'u' || g || '@x', 'n' || g FROM generate_series(1, 100) g");
    }

    #[pg_test]
    fn expand_adds_column_trigger_and_catalog_row() {
        people();
        let id = one::<i64>("SELECT zdm.expand_rename('people', 'email', 'mail')").unwrap();
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.migrations WHERE id = {id}")).as_deref(), Some("expanded"));
        assert_eq!(one::<String>("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'people'::regclass AND attname = 'mail'").as_deref(), Some("text"));
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM pg_trigger WHERE tgname = 'zdm_sync_{id}'")), Some(1));
        assert_eq!(one::<i64>("SELECT count(*) FROM zdm.events WHERE step = 'expand'"), Some(1));
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("expanded"));
    }

    #[pg_test]
    fn expand_copies_type_modifiers_collation_comment_and_checks() {
        run("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')");
        run("CREATE DOMAIN posint AS int CHECK (VALUE > 0)");
        run("CREATE TABLE typed (
               v varchar(20) COLLATE \"C\" CHECK (length(v) > 1),
               n numeric(10,2), a int[], d posint, m mood, ts timestamptz NOT NULL DEFAULT now())");
        run("COMMENT ON COLUMN typed.v IS 'the v'");
        for (col, expected) in [
            ("v", "character varying(20)"),
            ("n", "numeric(10,2)"),
            ("a", "integer[]"),
            ("d", "posint"),
            ("m", "mood"),
            ("ts", "timestamp with time zone"),
        ] {
            run(&format!("SELECT zdm.expand_rename('typed', '{col}', '{col}_new')"));
            let got = one::<String>(&format!(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname = '{col}_new'"
            ));
            assert_eq!(got.as_deref(), Some(expected), "type of {col}_new");
        }
        assert_eq!(one::<String>("SELECT collname::text FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation WHERE attrelid = 'typed'::regclass AND attname = 'v_new'").as_deref(), Some("C"));
        assert_eq!(one::<String>("SELECT col_description('typed'::regclass, (SELECT attnum FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname = 'v_new'))").as_deref(), Some("the v"));
        // the CHECK on v is carried to v_new, NOT VALID
        assert_eq!(one::<String>("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'typed'::regclass AND conname LIKE 'typed_v_check_zdm%'").as_deref(), Some("CHECK ((length((v_new)::text) > 1)) NOT VALID"));
        // NOT NULL on ts travels NOT VALID (a CHECK on 15, a NOT NULL
        // constraint on 18: engine::steps::not_null_clause); the default stays on
        // ts, and ts_new's default is zdm's mark of an INSERT that left it
        // out (trigger/written.rs), carrying ts's default as its value
        assert_eq!(
            one::<bool>(
                "SELECT convalidated FROM pg_constraint WHERE conrelid = 'typed'::regclass \
                    AND conname = (SELECT not_null_check FROM zdm.migrations WHERE new_column = 'ts_new') \
                    AND (pg_get_constraintdef(oid) LIKE '%ts_new IS NOT NULL%' OR pg_get_constraintdef(oid) LIKE 'NOT NULL ts_new%')"
            ),
            Some(false)
        );
        assert_eq!(
            one::<bool>("SELECT pg_get_expr(adbin, adrelid) LIKE 'zdm.unwritten(%::bigint, now())' FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE adrelid = 'typed'::regclass AND attname = 'ts_new'"),
            Some(true)
        );
    }

    #[pg_test]
    fn trigger_follows_design_semantics() {
        people();
        run("SELECT zdm.expand_rename('people', 'email', 'mail')");
        let get = |id: i64| -> (Option<String>, Option<String>) {
            Spi::get_two::<String, String>(&format!("SELECT email, mail FROM people WHERE id = {id}")).unwrap()
        };
        let s = |v: &str| Some(v.to_string());
        // INSERT through old / new / both (new wins) / neither
        run("INSERT INTO people (id, email) VALUES (1001, 'old@x')");
        assert_eq!(get(1001), (s("old@x"), s("old@x")));
        run("INSERT INTO people (id, mail) VALUES (1002, 'new@x')");
        assert_eq!(get(1002), (s("new@x"), s("new@x")));
        run("INSERT INTO people (id, email, mail) VALUES (1003, 'o', 'n')");
        assert_eq!(get(1003), (s("n"), s("n")));
        run("INSERT INTO people (id, name) VALUES (1004, 'nobody')");
        assert_eq!(get(1004), (None, None));
        // multi-row insert and COPY-like INSERT ... SELECT
        run("INSERT INTO people (id, email) SELECT 2000 + g, 'm' || g FROM generate_series(1, 10) g");
        assert_eq!(one::<i64>("SELECT count(*) FROM people WHERE id > 2000 AND mail IS DISTINCT FROM email"), Some(0));
        // UPDATE: only old / only new / both different (new wins) / neither on an unbackfilled row
        run("UPDATE people SET email = 'o2' WHERE id = 1");
        assert_eq!(get(1), (s("o2"), s("o2")));
        run("UPDATE people SET mail = 'n2' WHERE id = 2");
        assert_eq!(get(2), (s("n2"), s("n2")));
        run("UPDATE people SET email = 'A', mail = 'B' WHERE id = 3");
        assert_eq!(get(3), (s("B"), s("B")));
        assert_eq!(get(4), (s("u4@x"), None));
        run("UPDATE people SET name = 'touched' WHERE id = 4");
        assert_eq!(get(4), (s("u4@x"), s("u4@x")));
        // setting new to NULL propagates
        run("UPDATE people SET mail = NULL WHERE id = 2");
        assert_eq!(get(2), (None, None));
        // INSERT ... ON CONFLICT DO UPDATE through either column
        run("INSERT INTO people (id, email) VALUES (1, 'upsert-old') ON CONFLICT (id) DO UPDATE SET email = excluded.email");
        assert_eq!(get(1), (s("upsert-old"), s("upsert-old")));
        run("INSERT INTO people (id, mail) VALUES (1, 'upsert-new') ON CONFLICT (id) DO UPDATE SET mail = excluded.mail");
        assert_eq!(get(1), (s("upsert-new"), s("upsert-new")));
        // ... naming neither column, on a row still waiting for its backfill
        assert_eq!(get(5), (s("u5@x"), None));
        run("INSERT INTO people (id, name) VALUES (5, 'upsert-other') ON CONFLICT (id) DO UPDATE SET name = excluded.name");
        assert_eq!(get(5), (s("u5@x"), s("u5@x")));
        // A BEFORE trigger ahead of zdm's (name order) changes the old column
        // on an UPDATE whose SET list names neither column.
        run("CREATE FUNCTION people_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.email := NEW.email || '!'; RETURN NEW; END $$");
        run("CREATE TRIGGER aaa_touch BEFORE UPDATE ON people FOR EACH ROW EXECUTE FUNCTION people_touch()");
        run("UPDATE people SET name = 'touched again' WHERE id = 1");
        assert_eq!(get(1), (s("upsert-new!"), s("upsert-new!")));
        run("DROP TRIGGER aaa_touch ON people");
    }

    /// The UPDATE fast path reads NULLs from the row's bitmap in place: a
    /// column added with a DEFAULT is absent from older rows yet not NULL.
    #[pg_test]
    fn trigger_sees_a_missing_attribute_default_as_a_value() {
        run("CREATE TABLE m (id int PRIMARY KEY, n int)");
        run("INSERT INTO m SELECT g, 0 FROM generate_series(1, 20) g");
        run("ALTER TABLE m ADD COLUMN a text DEFAULT 'dflt'");
        run("SELECT zdm.expand_rename('m', 'a', 'b')");
        run("UPDATE m SET n = n + 1");
        assert_eq!(one::<i64>("SELECT count(*) FROM m WHERE b IS DISTINCT FROM a"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM m WHERE b = 'dflt'"), Some(20));
    }

    /// INSERT … SELECT * from a table of the same layout whose leading
    /// column is PLAIN (short values stored with 4-byte headers there): every
    /// row is synced and every value arrives intact.
    #[pg_test]
    fn trigger_splices_rows_copied_from_a_plain_column() {
        run("CREATE TABLE src (id int, p text, a text, b text)");
        run("ALTER TABLE src ALTER COLUMN p SET STORAGE PLAIN");
        run("INSERT INTO src SELECT g, 'plain ' || g, 'a' || g, NULL FROM generate_series(1, 50) g");
        run("CREATE TABLE dst (id int PRIMARY KEY, p text, a text)");
        run("SELECT zdm.expand_rename('dst', 'a', 'b')");
        run("INSERT INTO dst SELECT * FROM src");
        assert_eq!(one::<i64>("SELECT count(*) FROM dst WHERE b IS DISTINCT FROM a OR p <> 'plain ' || id"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM dst"), Some(50));
    }

    /// MERGE's UPDATE and INSERT actions fire the trigger like plain ones,
    /// and a BEFORE trigger ahead of it that hands back the old row (RETURN
    /// OLD) gives it a row to sync, not a torn one.
    #[pg_test]
    fn trigger_syncs_merge_and_rows_returned_by_an_earlier_trigger() {
        run("CREATE TABLE mt (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, a text)");
        run("INSERT INTO mt (id, a) SELECT g, 'a' || g FROM generate_series(1, 10) g");
        run("SELECT zdm.expand_rename('mt', 'a', 'b')");
        run("MERGE INTO mt USING (SELECT g AS id, 'm' || g AS v FROM generate_series(5, 15) g) s ON mt.id = s.id
             WHEN MATCHED AND s.id <= 7 THEN UPDATE SET a = s.v
             WHEN MATCHED THEN UPDATE SET b = s.v
             WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.v)");
        assert_eq!(one::<i64>("SELECT count(*) FROM mt WHERE id >= 5 AND (a <> 'm' || id OR b IS DISTINCT FROM a)"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM mt WHERE id < 5 AND a = 'a' || id AND b IS NULL"), Some(4), "not backfilled yet");
        run("CREATE FUNCTION keep_old() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.n < 0 THEN RETURN OLD; END IF; RETURN NEW; END $$");
        run("CREATE TRIGGER aaa_keep_old BEFORE UPDATE ON mt FOR EACH ROW EXECUTE FUNCTION keep_old()");
        run("UPDATE mt SET a = 'refused', n = -1 WHERE id IN (1, 6)");
        run("UPDATE mt SET b = 'refused too', n = -1 WHERE id IN (2, 8)");
        assert_eq!(one::<i64>("SELECT count(*) FROM mt WHERE a LIKE 'refused%' OR b LIKE 'refused%' OR n <> 0"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM mt WHERE id IN (1, 2, 6, 8) AND b IS DISTINCT FROM a"), Some(0), "kept rows are synced");
    }

    /// Rows stored while a leading column was PLAIN keep its 4-byte headers
    /// after SET STORAGE EXTENDED (no rewrite). The executor packs them when
    /// it forms the row it hands the trigger, so the splice copies packed
    /// values; every value arrives intact, in both directions.
    #[pg_test]
    fn trigger_splices_rows_stored_while_a_column_was_plain() {
        run("CREATE TABLE was_plain (id int PRIMARY KEY, p text, a text)");
        run("ALTER TABLE was_plain ALTER COLUMN p SET STORAGE PLAIN");
        run("INSERT INTO was_plain SELECT g, 'plain ' || g, 'a' || g FROM generate_series(1, 50) g");
        run("ALTER TABLE was_plain ALTER COLUMN p SET STORAGE EXTENDED");
        run("SELECT zdm.expand_rename('was_plain', 'a', 'b')");
        run("UPDATE was_plain SET a = a || '!'");
        run("UPDATE was_plain SET b = b || '?' WHERE id > 25");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM was_plain WHERE b IS DISTINCT FROM a OR p <> 'plain ' || id
                        OR a <> 'a' || id || '!' || CASE WHEN id > 25 THEN '?' ELSE '' END"),
            Some(0)
        );
        // The executor formed the rows it handed the trigger: p was packed there already.
        assert_eq!(one::<i64>("SELECT count(*) FROM was_plain WHERE pg_column_size(p) = octet_length(p) + 1"), Some(50));
    }

    #[pg_test]
    fn trigger_handles_toasted_values() {
        run("CREATE TABLE docs (id int PRIMARY KEY, body text, other int)");
        run("INSERT INTO docs SELECT g, repeat(md5(g::text), 5000), 0 FROM generate_series(1, 5) g");
        run("SELECT zdm.expand_rename('docs', 'body', 'content')");
        run("UPDATE docs SET other = 1");
        assert_eq!(one::<i64>("SELECT count(*) FROM docs WHERE content IS DISTINCT FROM body"), Some(0));
        run("UPDATE docs SET body = repeat('z', 100000) WHERE id = 1");
        assert_eq!(one::<i64>("SELECT count(*) FROM docs WHERE content IS DISTINCT FROM body"), Some(0));
    }

    #[pg_test]
    fn backfill_batch_fills_everything_then_returns_zero() {
        people();
        let id = one::<i64>("SELECT zdm.expand_rename('people', 'email', 'mail')").unwrap();
        let mut total = 0;
        loop {
            let n = one::<i64>(&format!("SELECT zdm.backfill_batch({id}, 7)")).unwrap();
            if n == 0 {
                break;
            }
            assert!(n > 0);
            total += n;
        }
        assert_eq!(total, 100);
        assert_eq!(one::<i64>("SELECT count(*) FROM people WHERE mail IS DISTINCT FROM email"), Some(0));
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("backfilled"));
        assert_eq!(one::<i64>(&format!("SELECT zdm.backfill_batch({id})")), Some(0), "idempotent once complete");
    }

    #[pg_test]
    fn backfill_survives_a_table_rewrite_midway() {
        run("CREATE TABLE rw (id int PRIMARY KEY, v text, pad text DEFAULT repeat('p', 200))");
        // insert in reverse so CLUSTER moves every row
        run("INSERT INTO rw (id, v) SELECT g, 'v' || g FROM generate_series(2000, 1, -1) g");
        let id = one::<i64>("SELECT zdm.expand_rename('rw', 'v', 'w', background => false)").unwrap();
        run(&format!("SELECT zdm.backfill_batch({id}, 300)"));
        run(&format!("SELECT zdm.backfill_batch({id}, 300)"));
        run("CLUSTER rw USING rw_pkey");
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id}, 300)")).unwrap() > 0 {}
        assert_eq!(one::<i64>("SELECT count(*) FROM rw WHERE w IS DISTINCT FROM v"), Some(0));
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM zdm.events WHERE migration_id = {id} AND step LIKE '%rewritten%'")), Some(1));
    }

    #[pg_test]
    fn backfill_works_without_primary_key() {
        run("CREATE TABLE heap_only (k int, v text)");
        run("INSERT INTO heap_only SELECT g % 10, 'v' || g FROM generate_series(1, 500) g");
        let id = one::<i64>("SELECT zdm.expand_rename('heap_only', 'v', 'w')").unwrap();
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id}, 50)")).unwrap() > 0 {}
        assert_eq!(one::<i64>("SELECT count(*) FROM heap_only WHERE w IS DISTINCT FROM v"), Some(0));
    }

    #[pg_test]
    fn contract_moves_default_not_null_checks_and_drops_old() {
        run("CREATE TABLE acct (id serial PRIMARY KEY, email text NOT NULL DEFAULT 'none' CHECK (email <> ''))");
        run("INSERT INTO acct (email) SELECT 'e' || g FROM generate_series(1, 50) g");
        let id = one::<i64>("SELECT zdm.expand_rename('acct', 'email', 'mail')").unwrap();
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id})")).unwrap() > 0 {}
        run(&format!("SELECT zdm.contract({id})"));
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'acct'::regclass AND attname = 'email' AND NOT attisdropped"), Some(0));
        assert_eq!(one::<bool>("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'acct'::regclass AND attname = 'mail'"), Some(true));
        assert_eq!(one::<String>("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'acct'::regclass AND adnum = (SELECT attnum FROM pg_attribute WHERE attrelid = 'acct'::regclass AND attname = 'mail')").as_deref(), Some("'none'::text"));
        // exactly one check is left: the carried one, under its original name, validated
        assert_eq!(one::<String>("SELECT string_agg(conname || '=' || convalidated, ',') FROM pg_constraint WHERE conrelid = 'acct'::regclass AND contype = 'c'").as_deref(), Some("acct_email_check=true"));
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'acct'::regclass"), Some(0));
        run("INSERT INTO acct DEFAULT VALUES");
        assert_eq!(one::<String>("SELECT mail FROM acct ORDER BY id DESC LIMIT 1").as_deref(), Some("none"));
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("contracted"));
        // Re-running contract or a batch after contract: no-ops (tools re-run
        // steps); undoing a contracted migration is refused.
        run(&format!("SELECT zdm.contract({id})"));
        assert_sqlstate(&format!("SELECT zdm.abort({id})"), "55000", "already contracted");
        assert_eq!(one::<i64>(&format!("SELECT zdm.backfill_batch({id})")), Some(0));
    }

    #[pg_test]
    fn contract_keeps_serial_sequence() {
        run("CREATE TABLE ser (n serial, x int)");
        run("INSERT INTO ser (x) SELECT g FROM generate_series(1, 10) g");
        let id = one::<i64>("SELECT zdm.expand_rename('ser', 'n', 'num')").unwrap();
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id})")).unwrap() > 0 {}
        run(&format!("SELECT zdm.contract({id})"));
        run("INSERT INTO ser (x) VALUES (11)");
        assert_eq!(one::<i32>("SELECT num FROM ser WHERE x = 11"), Some(11));
    }

    #[pg_test]
    fn contract_refuses_before_backfill_and_lists_new_dependents() {
        people();
        let id = one::<i64>("SELECT zdm.expand_rename('people', 'email', 'mail')").unwrap();
        assert_sqlstate(&format!("SELECT zdm.contract({id})"), "55000", "backfill is not complete");
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id})")).unwrap() > 0 {}
        run("CREATE VIEW people_emails AS SELECT email FROM people");
        run("CREATE INDEX people_email_idx ON people (email)");
        assert_sqlstate(&format!("SELECT zdm.contract({id})"), "2BP01", "people_emails");
        assert_sqlstate(&format!("SELECT zdm.contract({id})"), "2BP01", "people_email_idx");
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'people'::regclass AND attname = 'email'"), Some(1));
    }

    #[pg_test]
    fn abort_drops_new_column_and_trigger_only() {
        people();
        let id = one::<i64>("SELECT zdm.expand_rename('people', 'email', 'mail')").unwrap();
        run(&format!("SELECT zdm.backfill_batch({id}, 10)"));
        run(&format!("SELECT zdm.abort({id})"));
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'people'::regclass AND attname = 'mail' AND NOT attisdropped"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'people'::regclass"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM people WHERE email IS NOT NULL"), Some(100));
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("aborted"));
        run(&format!("SELECT zdm.abort({id})")); // a re-run: a no-op
        assert_sqlstate(&format!("SELECT zdm.contract({id})"), "55000", "was aborted");
        // the column is free again
        run("SELECT zdm.expand_rename('people', 'email', 'mail')");
    }

    #[pg_test]
    fn refusals_carry_specific_sqlstates() {
        people();
        assert_sqlstate("SELECT zdm.expand_rename('no_such_table', 'a', 'b')", "42P01", "no_such_table");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'nope', 'b')", "42703", "column nope of table public.people");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'email', 'name')", "42701", "name");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'email', 'email')", "22023", "email");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'ctid', 'c2')", "0A000", "system column");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'xmin', 'x2')", "0A000", "system column");
        assert_sqlstate("SELECT zdm.backfill_batch(1, 0)", "22023", "batch_size");
        assert_sqlstate("SELECT zdm.contract(424242)", "42704", "424242");
        assert_sqlstate("SELECT zdm.abort(424242)", "42704", "424242");
        assert_sqlstate("SELECT zdm.backfill_batch(424242)", "42704", "424242");
        // STRICT: NULL arguments return NULL and change nothing
        assert_eq!(one::<i64>("SELECT zdm.expand_rename(NULL, 'a', 'b')"), None);
        assert_eq!(one::<i64>("SELECT zdm.expand_rename('people', NULL, 'b')"), None);
        assert_eq!(one::<i64>("SELECT count(*) FROM zdm.migrations"), Some(0));
        // a column already under migration
        run("SELECT zdm.expand_rename('people', 'email', 'mail')");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'email', 'mail2')", "55000", "already under zdm migration");
        assert_sqlstate("SELECT zdm.expand_rename('people', 'mail', 'mail3')", "55000", "already under zdm migration");
    }

    /// PostgreSQL 18's virtual generated columns are refused and, computed
    /// from a renamed column, block contract like stored ones.
    #[cfg(feature = "pg18")]
    #[pg_test]
    fn virtual_generated_columns_block_like_stored_ones() {
        run("CREATE TABLE vg (a int, b int GENERATED ALWAYS AS (a * 2) VIRTUAL)");
        run("INSERT INTO vg (a) SELECT g FROM generate_series(1, 10) g");
        assert_sqlstate("SELECT zdm.expand_rename('vg', 'b', 'b2')", "0A000", "generated column");
        let id = one::<i64>("SELECT zdm.expand_rename('vg', 'a', 'a2', background => false)").unwrap();
        assert_eq!(
            one::<String>(&format!("SELECT blockers FROM zdm.status WHERE id = {id}")).as_deref(),
            Some("generated column b of table vg")
        );
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id})")) != Some(0) {}
        assert_sqlstate(&format!("SELECT zdm.contract({id})"), "2BP01", "generated column b of table public.vg");
        run(&format!("SELECT zdm.abort({id})"));
    }

    /// PostgreSQL 18's NOT ENFORCED checks and foreign keys are not carried
    /// (a NOT VALID copy would fail its validation on the rows they let in):
    /// expand refuses, naming them.
    #[cfg(feature = "pg18")]
    #[pg_test]
    fn unenforced_constraints_are_refused_not_copied() {
        run("CREATE TABLE ne (id int PRIMARY KEY, v int CONSTRAINT v_small CHECK (v < 10) NOT ENFORCED)");
        run("INSERT INTO ne VALUES (1, 100)");
        assert_sqlstate("SELECT zdm.expand_rename('ne', 'v', 'v2')", "0A000", "v_small");
    }

    #[pg_test]
    fn refuses_unsupported_columns_and_relations() {
        run("CREATE TABLE g (a int, b int GENERATED ALWAYS AS (a * 2) STORED, c int GENERATED ALWAYS AS IDENTITY, u int UNIQUE, i int, f int)");
        run("CREATE INDEX g_i ON g (i)");
        run("CREATE TABLE g_ref (id int PRIMARY KEY)");
        run("ALTER TABLE g ADD CONSTRAINT g_f_fk FOREIGN KEY (f) REFERENCES g_ref (id)");
        assert_sqlstate("SELECT zdm.expand_rename('g', 'b', 'b2')", "0A000", "generated column");
        // An identity column: its identity moves to the new column at contract.
        let iid = one::<i64>("SELECT zdm.expand_rename('g', 'c', 'c2', background => false)").unwrap();
        run(&format!("SELECT zdm.abort({iid})"));
        // A generated column computed from the column: expand proceeds, it is
        // listed as a blocker, contract refuses until it is recreated.
        let gid = one::<i64>("SELECT zdm.expand_rename('g', 'a', 'a2', background => false)").unwrap();
        assert_eq!(
            one::<String>(&format!("SELECT blockers FROM zdm.status WHERE id = {gid}")).as_deref(),
            Some("generated column b of table g")
        );
        while one::<i64>(&format!("SELECT zdm.backfill_batch({gid})")) != Some(0) {}
        assert_sqlstate(&format!("SELECT zdm.contract({gid})"), "2BP01", "generated column b of table public.g");
        run(&format!("SELECT zdm.abort({gid})"));
        // Indexes and unique keys are carried over (built after the backfill).
        assert!(one::<i64>("SELECT zdm.expand_rename('g', 'u', 'u2', background => false)").is_some());
        assert!(one::<i64>("SELECT zdm.expand_rename('g', 'i', 'i2', background => false)").is_some());
        assert_eq!(one::<i64>("SELECT count(*) FROM zdm.carried_indexes"), Some(2));
        // A foreign key from the column is copied NOT VALID onto the new one.
        assert!(one::<i64>("SELECT zdm.expand_rename('g', 'f', 'f2', background => false)").is_some());
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_constraint WHERE conrelid = 'g'::regclass AND contype = 'f' AND NOT convalidated"), Some(1));
        // A key referenced by another table's foreign key is re-pointed at contract;
        // a self-referencing one is not supported yet.
        assert!(one::<i64>("SELECT zdm.expand_rename('g_ref', 'id', 'id2', background => false)").is_some());
        run("CREATE TABLE sref (id int PRIMARY KEY, parent int REFERENCES sref (id))");
        assert_sqlstate("SELECT zdm.expand_rename('sref', 'id', 'id2')", "0A000", "cannot re-point");
        // So is a key referenced as part of a multi-column foreign key.
        run("CREATE TABLE mref (a int, b int, PRIMARY KEY (a, b))");
        run("CREATE TABLE mref_child (a int, b int, FOREIGN KEY (a, b) REFERENCES mref (a, b))");
        assert_sqlstate("SELECT zdm.expand_rename('mref', 'a', 'a2')", "0A000", "cannot re-point");
        run("CREATE VIEW gv AS SELECT a FROM g");
        assert_sqlstate("SELECT zdm.expand_rename('gv', 'a', 'a2')", "0A000", "a view");
        run("CREATE TEMP TABLE tmp (a int)");
        assert_sqlstate("SELECT zdm.expand_rename('tmp', 'a', 'a2')", "0A000", "temporary table");
        run("CREATE TABLE parted (a int) PARTITION BY RANGE (a)");
        run("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)");
        assert_sqlstate("SELECT zdm.expand_rename('parted', 'a', 'a2')", "0A000", "partition key");
        assert_sqlstate("SELECT zdm.expand_rename('parted_1', 'a', 'a2')", "0A000", "is a partition of public.parted");
        run("CREATE FOREIGN DATA WRAPPER dummy_fdw");
        run("CREATE SERVER dummy_srv FOREIGN DATA WRAPPER dummy_fdw");
        run("CREATE FOREIGN TABLE ft (a int) SERVER dummy_srv");
        assert_sqlstate("SELECT zdm.expand_rename('ft', 'a', 'a2')", "0A000", "foreign table");
        run("CREATE SEQUENCE sq");
        assert_sqlstate("SELECT zdm.expand_rename('sq', 'last_value', 'lv')", "42809", "not a table");
    }

    #[pg_test]
    fn non_owner_is_refused() {
        people();
        run("CREATE ROLE zdm_intruder");

        run("SET ROLE zdm_intruder");
        assert_sqlstate("SELECT zdm.expand_rename('public.people', 'email', 'mail')", "42501", "must be owner of table public.people");
        run("RESET ROLE");
        let id = one::<i64>("SELECT zdm.expand_rename('people', 'email', 'mail')").unwrap();
        run("SET ROLE zdm_intruder");
        assert_sqlstate(&format!("SELECT zdm.abort({id})"), "42501", "permission denied to abort");
        assert_sqlstate(&format!("SELECT zdm.backfill_batch({id})"), "42501", "permission denied to backfill");
        run("RESET ROLE");
    }

    #[pg_test]
    fn quoted_identifiers_work() {
        run("CREATE SCHEMA \"Sales Data\"");
        run("CREATE TABLE \"Sales Data\".\"Order Items\" (id int PRIMARY KEY, \"e-mail\" text NOT NULL CHECK (\"e-mail\" LIKE '%@%'), \"user\" int)");
        run("INSERT INTO \"Sales Data\".\"Order Items\" SELECT g, g || '@x', g FROM generate_series(1, 30) g");
        let id = one::<i64>("SELECT zdm.expand_rename('\"Sales Data\".\"Order Items\"', 'e-mail', 'Mail Address')").unwrap();
        let id2 = one::<i64>("SELECT zdm.expand_rename('\"Sales Data\".\"Order Items\"', 'user', 'select')").unwrap();
        run("INSERT INTO \"Sales Data\".\"Order Items\" (id, \"Mail Address\", \"select\") VALUES (100, 'q@x', 7)");
        for m in [id, id2] {
            while one::<i64>(&format!("SELECT zdm.backfill_batch({m})")).unwrap() > 0 {}
            run(&format!("SELECT zdm.contract({m})"));
        }
        assert_eq!(one::<i64>("SELECT count(*) FROM \"Sales Data\".\"Order Items\" WHERE \"Mail Address\" IS NULL OR \"select\" IS NULL"), Some(0));
        assert_eq!(one::<String>("SELECT \"Mail Address\" FROM \"Sales Data\".\"Order Items\" WHERE id = 100").as_deref(), Some("q@x"));
        assert_eq!(one::<String>("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = '\"Sales Data\".\"Order Items\"'::regclass AND attnum > 0 AND NOT attisdropped").as_deref(), Some("id,Mail Address,select"));
        // an injection attempt is just a strange column name
        assert_sqlstate("SELECT zdm.expand_rename('\"Sales Data\".\"Order Items\"', 'id; DROP TABLE x', 'y')", "42703", "id; DROP TABLE x");
    }

    // DROP EXTENSION with a migration in flight: tests/misuse.rs (it locks
    // zdm's catalog tables, which concurrent #[pg_test]s write: a deadlock here).

    /// Each operation's SQL registers its kinds in zdm.kinds, which
    /// zdm.status reads: the rows match what the operations implement.
    #[pg_test]
    fn every_kind_has_its_row() {
        // Every registered kind has its row, with a ready step iff it has a
        // contract; a kind that adds a column backfills it (an update job
        // backfills without adding one).
        let rows = one::<Vec<String>>("SELECT array_agg(kind || ':' || (ready_step IS NOT NULL) ORDER BY kind) FROM zdm.kinds").unwrap_or_default();
        let mut expected: Vec<String> = crate::ops::ALL
            .iter()
            .flat_map(|op| op.kinds().iter().map(move |k| format!("{k}:{}", op.has_contract())))
            .collect();
        expected.sort();
        assert_eq!(rows, expected);
        let adding = one::<Vec<String>>("SELECT array_agg(kind ORDER BY kind) FROM zdm.kinds WHERE adds_column").unwrap_or_default();
        for kind in adding {
            assert!(crate::engine::find(&kind).is_some_and(|op| op.has_backfill()), "{kind} adds a column without a backfill");
        }
    }

    #[pg_test]
    fn lock_timeout_settings_exist() {
        assert_eq!(one::<String>("SELECT current_setting('zdm.lock_timeout')").as_deref(), Some("2s"));
        assert_eq!(one::<String>("SELECT current_setting('zdm.lock_retries')").as_deref(), Some("10"));
    }

    #[pg_test]
    fn constraint_functions_refuse_bad_arguments() {
        run("CREATE TABLE ct (id int PRIMARY KEY, v text, p int)");
        run("CREATE TABLE cp (id int PRIMARY KEY)");
        assert_sqlstate("SELECT zdm.validate_not_null('ct', 'nope')", "42703", "nope");
        assert_sqlstate("SELECT zdm.validate_not_null('no_such', 'v')", "42P01", "no_such");
        assert_sqlstate("SELECT zdm.add_check('ct', 'c1', 'true); DROP TABLE ct; --')", "42601", "not a single SQL expression");
        assert_sqlstate("SELECT zdm.add_check('ct', 'c1', 'true) FROM pg_class WHERE (true')", "42601", "not a single SQL expression");
        assert_sqlstate("SELECT zdm.add_check('ct', 'ct_pkey', 'id > 0')", "42710", "ct_pkey");
        assert_sqlstate("SELECT zdm.add_foreign_key('ct', ARRAY['p'], 'cp', ARRAY['id', 'id'])", "22023", "ref_columns has 2");
        assert_sqlstate("SELECT zdm.add_foreign_key('ct', ARRAY['p'], 'cp', ARRAY['id'], on_delete => 'explode')", "22023", "on_delete");
        assert_sqlstate("SELECT zdm.add_foreign_key('ct', ARRAY['nope'], 'cp', ARRAY['id'])", "42703", "nope");
        assert_sqlstate("SELECT zdm.add_foreign_key('ct', NULL, 'cp', ARRAY['id'])", "22004", "columns");
        assert_sqlstate("SELECT zdm.add_foreign_key('ct', ARRAY[]::name[], 'cp', ARRAY['id'])", "22023", "columns");
        run("CREATE ROLE zdm_stranger");

        run("SET ROLE zdm_stranger");
        assert_sqlstate("SELECT zdm.validate_not_null('public.ct', 'v')", "42501", "must be owner");
        assert_sqlstate("SELECT zdm.add_check('public.ct', 'c', 'id > 0')", "42501", "must be owner");
        run("RESET ROLE");
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_constraint WHERE conrelid = 'ct'::regclass AND contype <> 'n'"), Some(1), "only the primary key");
    }

    #[pg_test]
    fn validate_not_null_on_a_not_null_column_is_a_recorded_no_op() {
        run("CREATE TABLE already (id int NOT NULL)");
        let id = one::<i64>("SELECT zdm.validate_not_null('already', 'id')").unwrap();
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("contracted"));
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM zdm.events WHERE migration_id = {id} AND step = 'no-op'")), Some(1));
    }

    #[pg_test]
    fn inside_a_transaction_block_constraint_steps_are_scheduled_after_commit() {
        // A #[pg_test] runs in a transaction block: the steps must not run
        // here (they could not commit); they are queued for after commit.
        run("CREATE TABLE sched (id int, v text)");
        let id = one::<i64>("SELECT zdm.validate_not_null('sched', 'v')").unwrap();
        assert_eq!(one::<String>(&format!("SELECT job_state FROM zdm.status WHERE id = {id}")).as_deref(), Some("queued"));
        assert_eq!(one::<i64>("SELECT count(*) FROM pg_constraint WHERE conrelid = 'sched'::regclass"), Some(0), "nothing done before commit");
        assert_sqlstate(&format!("SELECT zdm.wait({id})"), "25001", "cannot run in the transaction");
        assert_sqlstate(&format!("SELECT zdm.contract({id})"), "55000", "no contract step");
        run(&format!("SELECT zdm.abort({id})"));
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("aborted"));
    }

    #[pg_test]
    fn callers_search_path_cannot_hijack_catalog_sql() {
        // zdm writes its catalog as the extension owner: a caller's
        // search_path placing look-alike functions before pg_catalog must not
        // be able to run them with the owner's rights.
        people();
        run("CREATE SCHEMA evil");
        for f in ["nextval(regclass) RETURNS bigint", "clock_timestamp() RETURNS timestamptz"] {
            run(&format!("CREATE FUNCTION evil.{f} LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$"));
        }
        run("SET LOCAL search_path = evil, pg_catalog, public");
        let id = one::<i64>("SELECT zdm.expand_rename('public.people', 'email', 'mail', background => false)").unwrap();
        while one::<i64>(&format!("SELECT zdm.backfill_batch({id})")).unwrap() > 0 {}
        run(&format!("SELECT zdm.contract({id})"));
        assert_eq!(one::<String>(&format!("SELECT phase FROM zdm.status WHERE id = {id}")).as_deref(), Some("contracted"));
        assert_eq!(one::<String>("SELECT current_setting('search_path')").as_deref(), Some("evil, pg_catalog, public"), "the caller's setting is back");
    }

    /// The trigger's spliced rows (trigger/splice.rs) are byte for byte what
    /// heap_form_tuple builds: every column of a table of assorted types,
    /// storage modes and NULL patterns, set to every other row's value of it
    /// (NULL, short, 4-byte-header, compressed and TOASTed ones included).
    #[pg_test]
    fn spliced_rows_match_heap_form_tuple() {
        run("CREATE TABLE shapes (id int8, f bool, s int2, ch \"char\", t text, big text, p text, cmp text, ext text,
             u uuid, nm name, d float8, num numeric, ts timestamptz, ia int4[], la int8[], bp char(3), pt point,
             iv interval, mac macaddr, i4 int4)");
        run("ALTER TABLE shapes ALTER COLUMN p SET STORAGE PLAIN");
        // a row stored before the last column was added: fewer attributes, formed not spliced
        run("INSERT INTO shapes (id, t) VALUES (0, 'zero')");
        run("ALTER TABLE shapes ADD COLUMN late text");
        run("INSERT INTO shapes VALUES
             (1, true, 2, 'c', 'short', repeat('x', 300), 'plain', repeat('ab', 3000),
              (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i),
              gen_random_uuid(), 'a name', 1.5, 12345.678, now(), '{1,2,3}', (SELECT array_agg(i::int8) FROM generate_series(1, 40) i),
              'abc', '(1,2)', '1 day', '08:00:2b:01:02:03', 7),
             (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
             (3, false, NULL, 'd', NULL, 'y', NULL, 'z', NULL, gen_random_uuid(), NULL, -0.25, NULL, now(), NULL, '{9}', NULL, '(3,4)', NULL, NULL, -1),
             (4, NULL, 5, NULL, repeat('q', 126), NULL, repeat('p', 200), NULL, 'e', NULL, 'n', NULL, 0.1, NULL, '{4}', NULL, 'x', NULL, '2 hours', '01:02:03:04:05:06', NULL)");
        run("INSERT INTO shapes (id, t, late) VALUES (5, 'five', 'late')");
        assert_splices_match("shapes", 6, 600);
    }

    /// The same for the types and layouts the first table leaves out: a
    /// domain, a composite, a range, jsonb, bytea, an enum, varchar(n),
    /// empty and 127-byte texts (the 1-byte header's limit), rows without
    /// any NULL, and dropped columns that still hold values in old rows.
    #[pg_test]
    fn spliced_rows_match_heap_form_tuple_for_more_types() {
        run("CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 500)");
        run("CREATE TYPE pair AS (x int, y text)");
        run("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')");
        run("CREATE TABLE more (id int8, gone1 text, dm short_text, c pair, r int4range, j jsonb, gone2 int8,
             by bytea, e mood, vc varchar(10), t127 text, t0 text, last text)");
        run("INSERT INTO more VALUES
             (1, 'dropped value', 'domain', ROW(1, 'one'), '[1,5)', '{\"k\": [1, 2, 3]}', 42,
              '\\xdeadbeef', 'ok', 'ten chars!', repeat('a', 126), '', 'x'),
             (2, repeat('d', 300), repeat('m', 200), ROW(NULL, repeat('p', 150)), 'empty', '[]', NULL,
              decode(repeat('ff', 130), 'hex'), 'happy', '', repeat('b', 127), repeat('c', 128), repeat('l', 127)),
             (3, NULL, NULL, NULL, NULL, NULL, 7, NULL, NULL, NULL, NULL, NULL, NULL),
             (4, 'g', '', ROW(2, ''), '(,)', 'null', 8, '', 'sad', 'v', '', '', '')");
        run("ALTER TABLE more DROP COLUMN gone1, DROP COLUMN gone2");
        run("INSERT INTO more (id, dm, c, r, j, by, e, vc, t127, t0, last) VALUES
             (5, 'after drop', ROW(3, 'three'), '[2,3]', '{\"a\": null}', '\\x00', 'happy', 'abc', repeat('z', 127), NULL, 'end')");
        assert_splices_match("more", 5, 250);
    }

    /// Every row of `table` with each column set to every row's value of it
    /// (and two fresh texts): spliced and formed rows must be the same bytes.
    fn assert_splices_match(table: &str, rows_expected: usize, at_least: i32) {
        unsafe {
            let relid = one::<pg_sys::Oid>(&format!("SELECT {}::regclass::oid", crate::spi::literal(table))).unwrap();
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let flags = pg_sys::ScanOptions::SO_TYPE_SEQSCAN | pg_sys::ScanOptions::SO_ALLOW_PAGEMODE;
            let scan = pg_sys::heap_beginscan(rel, pg_sys::GetLatestSnapshot(), 0, std::ptr::null_mut(), std::ptr::null_mut(), flags);
            let mut rows = Vec::new();
            loop {
                let t = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if t.is_null() {
                    break;
                }
                let copy = pg_sys::heap_copytuple(t);
                let slot = pg_sys::MakeSingleTupleTableSlot(desc, &raw const pg_sys::TTSOpsHeapTuple);
                pg_sys::ExecStoreHeapTuple(copy, slot, false);
                pg_sys::slot_getsomeattrs_int(slot, natts as i32);
                rows.push((copy, slot));
            }
            pg_sys::heap_endscan(scan);
            assert_eq!(rows.len(), rows_expected, "rows of {table}");
            let external = |v: pg_sys::Datum| pgrx::varlena::varatt_is_1b_e(v.cast_mut_ptr());
            let (mut compared, mut with_external, mut located, mut from_tails) = (0, 0, 0, 0);
            use crate::trigger::locate;
            for &(row, slot) in &rows {
                let full = ((*(*row).t_data).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as usize == natts;
                for j in 0..natts {
                    let att = crate::compat::attr(desc, j);
                    let mut candidates: Vec<(pg_sys::Datum, bool)> =
                        rows.iter().map(|&(_, s)| (*(*s).tts_values.add(j), *(*s).tts_isnull.add(j))).collect();
                    if att.atttypid == pg_sys::TEXTOID {
                        // freshly made values: 4-byte headers, short enough to pack or not
                        candidates.push(("fresh".into_datum().unwrap(), false));
                        candidates.push(("w".repeat(200).into_datum().unwrap(), false));
                    }
                    for (value, is_null) in candidates {
                        let spliced = crate::trigger::splice::spliced(row, slot, desc, j as i32 + 1, value, is_null);
                        let Some(spliced) = spliced else {
                            assert!(!full, "row {:?}: no splice for column {}", (*row).t_self, j + 1);
                            continue;
                        };
                        assert!(full, "a row with fewer attributes than the table is formed, not spliced");
                        let formed = crate::trigger::splice::formed(row, desc, j as i32 + 1, value, is_null);
                        let (a, b) = (crate::trigger::splice::comparable(spliced), crate::trigger::splice::comparable(formed));
                        assert_eq!(a, b, "column {} set to {:?} (null {is_null})", j + 1, value);
                        assert_eq!(format!("{:?}", (*spliced).t_self), format!("{:?}", (*row).t_self));
                        located += assert_located(row, slot, spliced, desc, j + 1);
                        // the same row spliced from the tail read off its bytes
                        let first = natts.saturating_sub(locate::MAX_TAIL - 1).max(1);
                        if j + 1 >= first {
                            let tail = locate::read_tail(row, desc, first as i32).expect("a full row's tail");
                            let from_tail = crate::trigger::splice::spliced_from_tail(row, desc, &tail, j as i32 + 1, value, is_null).unwrap();
                            assert_eq!(crate::trigger::splice::comparable(from_tail), b, "column {} from the tail", j + 1);
                            from_tails += 1;
                        }
                        compared += 1;
                        with_external += (!is_null && att.attlen == -1 && external(value)) as i32;
                    }
                }
            }
            assert!(compared > at_least, "{compared} rows compared");
            assert!(located > at_least, "{located} old rows read by their trailing attributes");
            assert!(from_tails > at_least / 4, "{from_tails} rows spliced from their tails");
            for &(row, slot) in &rows {
                assert_tails(row, slot, desc);
            }
            if at_least >= 600 {
                assert!(with_external > 0, "a TOASTed value was among them");
            }
            for (_, slot) in rows {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        }
    }

    /// `new` is `old` with attribute `changed` (1-based) set: reading old's
    /// trailing attributes from where the two rows stop sharing bytes
    /// (trigger/locate.rs) must succeed for every tail that holds the
    /// changed attribute, and give what deforming `old` gives whenever it
    /// succeeds. Returns how many tails were read.
    unsafe fn assert_located(
        old: pg_sys::HeapTuple,
        old_slot: *mut pg_sys::TupleTableSlot,
        new: pg_sys::HeapTuple,
        desc: pg_sys::TupleDesc,
        changed: usize,
    ) -> i32 {
        unsafe {
            let natts = (*desc).natts as usize;
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &raw const pg_sys::TTSOpsHeapTuple);
            pg_sys::ExecStoreHeapTuple(new, slot, false);
            pg_sys::slot_getsomeattrs_int(slot, natts as i32);
            let mut read = 0;
            for first in natts.saturating_sub(7).max(1)..=natts {
                let mut tail = [(pg_sys::Datum::from(0usize), false); 8];
                let found = crate::trigger::locate::trailing_values_by_slot(old, new, slot, desc, first as i32, natts as i32, &mut tail);
                assert!(found || changed < first, "attribute {changed} changed: tail from {first} not read");
                if !found {
                    continue;
                }
                for (k, &(v, null)) in (first..=natts).zip(tail.iter()) {
                    let att = crate::compat::attr(desc, k - 1);
                    let (w, w_null) = (*(*old_slot).tts_values.add(k - 1), *(*old_slot).tts_isnull.add(k - 1));
                    assert!(crate::trigger::raw_same(att, null, v, w_null, w), "attribute {k} of the tail from {first}");
                }
                read += 1;
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            read
        }
    }

    /// Every tail `locate::read_tail` reads off `row` holds what deforming
    /// it gives: values, and where each attribute is laid out from.
    unsafe fn assert_tails(row: pg_sys::HeapTuple, slot: *mut pg_sys::TupleTableSlot, desc: pg_sys::TupleDesc) {
        unsafe {
            use crate::trigger::locate;
            let natts = (*desc).natts as usize;
            let full = ((*(*row).t_data).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) as usize == natts;
            let header = (*row).t_data;
            let data = (header as *const u8).add((*header).t_hoff as usize);
            let len = (*row).t_len as usize - (*header).t_hoff as usize;
            let (values, nulls) = ((*slot).tts_values as *const pg_sys::Datum, (*slot).tts_isnull as *const bool);
            for first in 1..=natts {
                let tail = locate::read_tail(row, desc, first as i32);
                if !full || natts - first + 1 > locate::MAX_TAIL {
                    assert!(tail.is_none(), "no tail from {first} of {natts}");
                    continue;
                }
                let tail = tail.expect("a full row's tail");
                assert_eq!((tail.first, tail.count), (first - 1, natts - first + 1));
                for k in first - 1..natts {
                    let att = crate::compat::attr(desc, k);
                    let (v, null) = tail.value(k);
                    assert!(crate::trigger::raw_same(att, null, v, *nulls.add(k), *values.add(k)), "attribute {} from {first}", k + 1);
                    let from = crate::trigger::splice::prefix_end(desc, values, nulls, k, data, len);
                    assert_eq!(Some(tail.from[k + 1 - first]), from, "attribute {} laid out from", k + 1);
                }
            }
        }
    }
}
