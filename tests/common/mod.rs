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
}

fn pg_config() -> String {
    std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Run a Postgres server binary as `postgres` (via sudo when we are root).
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// initdb + start with pgrx-config/postgresql.conf plus `extra` lines.
    pub fn start(name: &str, extra: &[&str]) -> Cluster {
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
        let c = Cluster { dir, port, bindir };
        c.pg_ctl(&["start", "-w", "-t", "60", "-l", c.dir.join("server.log").to_str().unwrap()]);
        c
    }

    pub fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        let o = as_postgres(&self.bindir.join("pg_ctl"), &all);
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
