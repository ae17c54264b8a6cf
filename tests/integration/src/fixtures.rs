//! Set-up that several test files need, written once: a pgbouncer of a test's own, clusters
//! of a test's own (a primary from scripts/cluster.sh, a base-backup copy or a streaming
//! replica of it), scratch databases and login roles of the test cluster. Each is a guard
//! that removes what it made when it goes out of scope, also when an assertion fails.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::{connect, connect_as, connect_retrying, dsn, free_ports, pgbin, unique, wait_until};

// ---------------------------------------------------------------------------------------
// pgbouncer

/// A pgbouncer of this test alone, in transaction-pooling mode in front of the test
/// cluster's `lease_sched` database: its own directory and a free port. pgbouncer runs
/// under runuser (it refuses root), so Drop stops it by the pid in its pidfile, not through
/// the runuser child (killing runuser would leave pgbouncer behind, still holding the port).
pub struct Bouncer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Bouncer {
    /// Start it with `pool_size` server connections (1: every client's transactions run on
    /// the same backend, one after another) and wait until it listens.
    pub fn start(pool_size: u32) -> Bouncer {
        let [port] = free_ports::<1>();
        let db_port = dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap();
        let dir = PathBuf::from(format!("/tmp/lease_sched_pgbouncer_{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\nlease_sched = host=127.0.0.1 port={db_port} dbname=lease_sched user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 50\nunix_socket_dir =\nlogfile = {0}/pgbouncer.log\n\
                 pidfile = {0}/pgbouncer.pid\n",
                dir.display()
            ),
        )
        .unwrap();
        Command::new("chown").args(["-R", "postgres", dir.to_str().unwrap()]).status().unwrap();
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", "/usr/sbin/pgbouncer", ini.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer (installed by scripts/setup.sh)");
        let bouncer = Bouncer { port, child, dir: dir.clone() };
        // Ours, listening (not some other run's pgbouncer on the same port).
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(dir.join("pgbouncer.log"))
                .is_ok_and(|l| l.contains(&format!("listening on 127.0.0.1:{port}")))),
            "pgbouncer listens on {port}"
        );
        bouncer
    }

    /// A client connection through the pooler.
    pub fn connect(&self) -> Client {
        client_at(self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first column of the first row, through the simple protocol (transaction pooling
/// does not carry named prepared statements).
pub fn simple(c: &mut Client, sql: &str) -> Result<Option<String>, postgres::Error> {
    Ok(c.simple_query(sql)?
        .into_iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten())
}

/// Every column of the first row, through the simple protocol.
pub fn simple_row(c: &mut Client, sql: &str) -> Vec<Option<String>> {
    c.simple_query(sql)
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .expect("one row")
}

// ---------------------------------------------------------------------------------------
// clusters of a test's own

/// Run a command as the postgres user (initdb, pg_ctl and pg_basebackup refuse root).
pub fn as_postgres(args: &[&str]) {
    let out = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `lease_sched` database of a cluster on this machine, as postgres.
pub fn client_at(port: u16) -> Client {
    connect_retrying(&format!("host=127.0.0.1 port={port} dbname=lease_sched user=postgres"))
}

/// Clusters of one test, each in a directory `<base>/<name>` (its data directory below it),
/// where `base` is named after the test and a port the kernel picked as free, so it is this
/// run's alone. Drop stops every cluster at once and removes the base.
pub struct OwnClusters {
    pub base: String,
    names: Vec<&'static str>,
}

impl OwnClusters {
    pub fn new(test: &str, port: u16, names: &[&'static str]) -> OwnClusters {
        OwnClusters { base: format!("/tmp/lease_sched_{test}_{port}"), names: names.to_vec() }
    }

    /// The directory of cluster `name`.
    pub fn dir(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// A fresh primary with lease_sched preloaded (scripts/cluster.sh), `settings` added to
    /// its postgresql.conf, and the extension created in its `lease_sched` database.
    pub fn start_primary(&self, name: &str, port: u16, settings: &[&str]) -> Client {
        let cluster_sh = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
        let dir = self.dir(name);
        let port = port.to_string();
        let mut args = vec!["start", &dir, &port];
        args.extend_from_slice(settings);
        let status = Command::new(cluster_sh).env("PGBIN", pgbin()).args(&args).status().unwrap();
        assert!(status.success(), "scripts/cluster.sh {args:?}");
        let mut c = client_at(port.parse().unwrap());
        c.batch_execute("CREATE EXTENSION lease_sched").unwrap();
        c
    }

    /// Cluster `name`, a base backup of the cluster on `from_port` set to listen on `port`,
    /// not started. With `standby` (an application_name) it is a streaming replica of it
    /// (standby.signal); without, a plain copy that starts as a primary (no standby.signal,
    /// no recovery.signal).
    pub fn base_backup(&self, name: &str, from_port: u16, port: u16, standby: Option<&str>) {
        let dir = self.dir(name);
        // A cluster left running by an interrupted earlier run would hold its port.
        stop_now(&format!("{dir}/data"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown").args(["postgres", &dir]).status().unwrap();
        let from = from_port.to_string();
        let data = format!("{dir}/data");
        let mut args = vec![format!("{}/pg_basebackup", pgbin())];
        args.extend(["-h", "127.0.0.1", "-p", &from, "-U", "postgres", "-D", &data].map(String::from));
        if standby.is_some() {
            args.push("-R".into());
        }
        args.extend(["-X", "stream", "-c", "fast"].map(String::from));
        as_postgres(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let conf = format!("{data}/postgresql.auto.conf");
        let mut auto = std::fs::read_to_string(&conf).unwrap_or_default();
        auto.push_str(&format!("port = {port}\nunix_socket_directories = '{dir}'\n"));
        if let Some(application_name) = standby {
            auto.push_str(&format!(
                "primary_conninfo = 'host=127.0.0.1 port={from_port} user=postgres application_name={application_name}'\n"
            ));
        }
        std::fs::write(&conf, auto).unwrap();
    }

    /// pg_ctl -w on cluster `name` (`start` logs to its server.log).
    pub fn pg_ctl(&self, name: &str, args: &[&str]) {
        let dir = self.dir(name);
        let mut all = vec![format!("{}/pg_ctl", pgbin()), "-D".into(), format!("{dir}/data"), "-w".into()];
        if args.contains(&"start") {
            all.extend(["-l".into(), format!("{dir}/server.log")]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        as_postgres(&all.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

impl Drop for OwnClusters {
    fn drop(&mut self) {
        for name in &self.names {
            stop_now(&format!("{}/data", self.dir(name)));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

// ---------------------------------------------------------------------------------------
// scratch databases and roles of the test cluster

/// A database of the test cluster for destructive steps, dropped at the end.
pub struct ScratchDb {
    pub name: String,
}

impl ScratchDb {
    pub fn new(prefix: &str) -> ScratchDb {
        let name = unique(prefix);
        connect().batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).unwrap();
        ScratchDb { name }
    }
    pub fn dsn(&self) -> String {
        dsn().replace("dbname=lease_sched", &format!("dbname={}", self.name))
    }
    pub fn connect(&self) -> Client {
        Client::connect(&self.dsn(), NoTls).unwrap()
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let _ = connect().batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// GRANTs on one schema from parallel tests race on its catalog row: roles are made and
/// dropped one at a time.
static ROLE_DDL: Mutex<()> = Mutex::new(());

/// The grants docs/api.md ("Privileges") gives a runner role.
pub const RUNNER_GRANTS: &str = "GRANT USAGE ON SCHEMA lease_sched TO {role};
                                 GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched TO {role};";

/// The grants docs/api.md gives a role that reads the history.
pub const READER_GRANTS: &str = "GRANT USAGE ON SCHEMA lease_sched TO {role};
                                 GRANT SELECT ON lease_sched.executions, lease_sched.active_leases, lease_sched.job_summary TO {role};";

/// A login role, dropped (with what it owns and was granted) when the guard goes.
pub struct Role(pub String);

impl Role {
    /// A role named after `prefix`, with `grants` (`{role}` stands for its name).
    pub fn new(prefix: &str, grants: &str) -> Role {
        let name = unique(prefix);
        let _serial = ROLE_DDL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = connect();
        c.batch_execute(&format!("CREATE ROLE {name} LOGIN; {}", grants.replace("{role}", &name))).unwrap();
        Role(name)
    }
    /// A role with the documented runner grants.
    pub fn runner(prefix: &str) -> Role {
        Role::new(prefix, RUNNER_GRANTS)
    }
    pub fn connect(&self) -> Client {
        connect_as(&self.0)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _serial = ROLE_DDL.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut c) = Client::connect(&dsn(), NoTls) {
            let _ = c.batch_execute(&format!("DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}", self.0));
        }
    }
}

/// Stop the cluster in `data` at once (pg_ctl -m immediate), if it runs: a cluster left
/// running by an interrupted earlier run would hold its port, and a test's own clusters go
/// when it ends however it ends.
pub fn stop_now(data: &str) {
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", data, "-m", "immediate", "-w", "stop"])
        .output();
}
