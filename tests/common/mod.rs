//! Host-side test harness: boots a real PostgreSQL cluster (as the OS user
//! `postgres`, which initdb requires) with the installed zdm extension and the
//! settings in pgrx-config/postgresql.conf, and hands out real connections.
//! Each test binary gets its own cluster in its own directory and port.

#![allow(dead_code)]

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    /// environment for the server processes (e.g. RUST_BACKTRACE=1)
    env: Vec<(String, String)>,
}

fn pg_config() -> String {
    std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into())
}

/// `pg_config <flag>` of the server under test (`PG_CONFIG`).
pub fn pg_config_value(flag: &str) -> String {
    let out = Command::new(pg_config()).arg(flag).output().expect("pg_config");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The server under test has library `name` installed.
pub fn has_library(name: &str) -> bool {
    Path::new(&pg_config_value("--pkglibdir")).join(format!("{name}.so")).exists()
}

/// The major version of the server under test.
pub fn pg_major() -> u32 {
    pg_config_value("--version").split_whitespace().nth(1).and_then(|v| v.split('.').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Run a Postgres server binary as `postgres` (via sudo when we are root).
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    as_postgres_env(program, args, &[])
}

fn as_postgres_env(program: &Path, args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-u", "postgres", "--", "env"]);
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(program);
        c
    } else {
        let mut c = Command::new(program);
        c.envs(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        c
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// initdb + start with pgrx-config/postgresql.conf plus `extra` lines.
    pub fn start(name: &str, extra: &[&str]) -> Cluster {
        Self::start_with_env(name, extra, &[])
    }

    /// Like `start`, with environment variables for the server processes.
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        let out = Command::new(pg_config()).arg("--bindir").output().expect("pg_config");
        let bindir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let dir = std::env::temp_dir().join(format!("zdm-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            Command::new("chown").args(["-R", "postgres"]).arg(&dir).status().unwrap();
        }
        let data = dir.join("data");
        let o = as_postgres(&bindir.join("initdb"), &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        assert!(o.status.success(), "initdb failed: {}", String::from_utf8_lossy(&o.stderr));
        let port = free_port();
        let mut conf = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pgrx-config/postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\nport = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.display()
        ));
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let auto = data.join("postgresql.auto.conf");
        let existing = std::fs::read_to_string(&auto).unwrap_or_default();
        std::fs::write(&auto, format!("{existing}\n{conf}")).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let c = Cluster { dir, port, bindir, env };
        c.pg_ctl(&["start", "-w", "-t", "60", "-l", c.dir.join("server.log").to_str().unwrap()]);
        c
    }

    /// Run a PostgreSQL client program (pg_dump, pg_restore, psql …) of this
    /// installation as the OS user postgres against this cluster.
    pub fn client_program(&self, program: &str, args: &[&str]) -> std::process::Output {
        let port = self.port.to_string();
        let host = self.dir.display().to_string();
        let mut all = vec!["-h", host.as_str(), "-p", port.as_str()];
        all.extend_from_slice(args);
        as_postgres(&self.bindir.join(program), &all)
    }

    /// `client_program` with environment variables (PGOPTIONS …).
    pub fn client_program_env(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let port = self.port.to_string();
        let host = self.dir.display().to_string();
        let mut all = vec!["-h", host.as_str(), "-p", port.as_str()];
        all.extend_from_slice(args);
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        as_postgres_env(&self.bindir.join(program), &all, &env)
    }

    /// Where the server's Unix socket is (for other clients).
    pub fn socket_dir(&self) -> String {
        self.dir.display().to_string()
    }

    pub fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        let o = as_postgres_env(&self.bindir.join("pg_ctl"), &all, &self.env);
        assert!(
            o.status.success(),
            "pg_ctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
    }

    /// Crash-stop and start again (what a power cut or OOM kill looks like).
    pub fn restart_immediate(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", self.dir.join("server.log").to_str().unwrap()]);
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn connect_as(&self, db: &str, user: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Config::new()
                .host_path(&self.dir)
                .port(self.port)
                .user(user)
                .dbname(db)
                .connect(NoTls)
            {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect to {db} as {user}: {e}\n{}", self.log_tail()),
            }
        }
    }

    pub fn connect(&self, db: &str) -> Client {
        self.connect_as(db, "postgres")
    }

    /// An empty directory owned by the server's OS user (CREATE TABLESPACE).
    pub fn tablespace_dir(&self, name: &str) -> String {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        if is_root() {
            Command::new("chown").arg("postgres").arg(&d).status().unwrap();
        }
        d.display().to_string()
    }

    /// A fresh database with zdm installed.
    pub fn create_db(&self, db: &str) -> Client {
        let mut admin = self.connect("postgres");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\"")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE \"{db}\"")).unwrap();
        let mut c = self.connect(db);
        c.batch_execute("CREATE EXTENSION zdm").unwrap();
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = as_postgres(&self.bindir.join("pg_ctl"), &["-D", &data, "stop", "-m", "immediate", "-w"]);
        if std::env::var_os("ZDM_KEEP_TEST_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SQLSTATE of a failed statement, or panic if it succeeded.
pub fn sqlstate(r: Result<impl std::fmt::Debug, postgres::Error>) -> (String, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("not a database error: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

/// Poll `f` until it returns Some, or panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An application session writing through one column of a table, keeping a
/// ledger of the last value it wrote per key. Updates touch keys
/// `k ≡ residue (mod 3)` within `1..=rows`; inserts use keys above
/// `insert_base`. Writes until `stop` is set (and at least `min_writes`).
pub struct Writer {
    pub table: String,
    pub key: String,
    pub column: String,
    pub residue: i64,
    pub rows: i64,
    pub insert_base: i64,
    pub min_writes: i64,
}

impl Writer {
    pub fn run(
        self,
        mut c: Client,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::collections::HashMap<i64, String> {
        let col = format!("\"{}\"", self.column.replace('"', "\"\""));
        let update = format!("UPDATE {} SET {col} = $1 WHERE {} = $2", self.table, self.key);
        let insert = format!("INSERT INTO {} ({col}, {}) VALUES ($1, $2)", self.table, self.key);
        let mut ledger = std::collections::HashMap::new();
        let mut i: i64 = 0;
        while i < self.min_writes || !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            if i % 5 == 0 {
                let k = self.insert_base + i;
                let v = format!("{}-ins-{i}", self.column);
                c.execute(&insert, &[&v, &k]).unwrap();
                ledger.insert(k, v);
            } else {
                let mut k = ((i * 7919) % (self.rows / 3)) * 3 + self.residue;
                if k == 0 {
                    k = 3;
                }
                let v = format!("{}-upd-{i}", self.column);
                c.execute(&update, &[&v, &k]).unwrap();
                ledger.insert(k, v);
            }
            if i > 50_000 {
                break;
            }
        }
        ledger
    }
}

/// Rows of `table` whose `column` differs from the ledger (or from
/// 'orig-' || key for rows nobody wrote), plus ledger keys missing.
pub fn mismatches(c: &mut Client, table: &str, key: &str, column: &str, ledger: &std::collections::HashMap<i64, String>) -> i64 {
    let keys: Vec<i64> = ledger.keys().copied().collect();
    let values: Vec<String> = keys.iter().map(|k| ledger[k].clone()).collect();
    c.batch_execute("DROP TABLE IF EXISTS pg_temp.ledger; CREATE TEMP TABLE ledger (k bigint PRIMARY KEY, v text)").unwrap();
    c.execute("INSERT INTO ledger SELECT * FROM unnest($1::bigint[], $2::text[])", &[&keys, &values]).unwrap();
    let col = format!("\"{}\"", column.replace('"', "\"\""));
    let wrong: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {table} x LEFT JOIN ledger l ON l.k = x.{key} WHERE x.{col} IS DISTINCT FROM coalesce(l.v, 'orig-' || x.{key})"),
            &[],
        )
        .unwrap()
        .get(0);
    let missing: i64 = c
        .query_one(&format!("SELECT count(*) FROM ledger l WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{key} = l.k)"), &[])
        .unwrap()
        .get(0);
    wrong + missing
}

/// A table `name (id bigint PRIMARY KEY, a text, pad text)` with `rows` rows,
/// a = 'orig-' || id.
pub fn make_table(c: &mut Client, name: &str, rows: i64) {
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, a text, pad text DEFAULT repeat('x', 40));
         INSERT INTO {name} (id, a) SELECT g, 'orig-' || g FROM generate_series(1, {rows}) g;"
    ))
    .unwrap();
    c.batch_execute(&format!("VACUUM ANALYZE {name}")).unwrap();
}

pub fn status_row(c: &mut Client, id: i64) -> (String, Option<String>, i64, Option<String>) {
    let r = c.query_one("SELECT phase, job_state, rows_done, last_error FROM zdm.status WHERE id = $1", &[&id]).unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

pub fn worker_pid(c: &mut Client, id: i64) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'zdm backfill' AND application_name = $1 AND datname = current_database()",
        &[&format!("zdm backfill {id}")],
    )
    .unwrap()
    .map(|r| r.get(0))
}

/// Assert that `sql` fails with SQLSTATE `code`; returns the message.
pub fn expect_err(c: &mut Client, sql: &str, code: &str) -> String {
    let (got, msg) = sqlstate(c.batch_execute(sql));
    assert_eq!(got, code, "{sql}: {msg}");
    msg
}
