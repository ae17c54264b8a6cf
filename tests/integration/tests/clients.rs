//! The client libraries (clients/) and their examples, against the test cluster:
//! - the Python package's pytest suite (sync and asyncio) and `mypy --strict`, in a venv this
//!   file creates under /tmp (psycopg[binary], psycopg_pool, pytest, mypy from PyPI);
//! - the Rust crate's own tests (`cargo test --manifest-path clients/rust/Cargo.toml`);
//! - the Go module's tests (`go test` in clients/go, with Debian's pgx v4 in GOPATH mode) and
//!   the Node package's tests (`node --test`) and type check (`tsc`, dev dependencies from
//!   `npm ci`); each is skipped, saying so, when its toolchain is not installed
//!   (scripts/setup.sh installs both);
//! - examples/runner_client.py, examples/runner_client.rs and examples/runner.go (on the Go
//!   client);
//! - code written for the released 0.2.0, unchanged: its Python and Rust clients' own test
//!   suites (from git history), and 0.2.0's documented calls through asyncpg and node-postgres.
//!   0.3.0 made the claim and lock functions return one composite row instead of a set, and
//!   checks arguments more strictly: a user who upgrades the extension, not the code, must not
//!   notice.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lease_sched_integration::*;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

const VENV: &str = "/tmp/lease_sched_clients_venv";

/// A venv with the Python client's test dependencies and the client itself installed the way
/// users install it (`pip install ./clients/python`), once per test process.
fn python() -> &'static str {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let py = format!("{VENV}/bin/python");
        let ok = |c: &mut Command| c.output().map(|o| if o.status.success() { Ok(()) } else { Err(text(&o)) });
        let have = Command::new(&py)
            .args(["-c", "import psycopg, psycopg_pool, pytest, mypy, asyncpg"])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !have {
            let _ = std::fs::remove_dir_all(VENV);
            ok(Command::new("/usr/bin/python3").args(["-m", "venv", VENV])).map_err(|e| e.to_string())??;
            ok(Command::new(format!("{VENV}/bin/pip")).args([
                "install",
                "-q",
                "psycopg[binary]>=3.2",
                "psycopg_pool>=3.2",
                "pytest>=7",
                "mypy>=1.5",
                "asyncpg>=0.29",
            ]))
            .map_err(|e| e.to_string())??;
        }
        // Build from a copy so the source tree gets no build/ or egg-info.
        let src = std::env::temp_dir().join(format!("lease_sched_client_src_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        ok(Command::new("cp").arg("-r").arg(checkout("clients/python")).arg(&src)).map_err(|e| e.to_string())??;
        ok(Command::new(format!("{VENV}/bin/pip")).args(["install", "-q", "--no-deps", "--force-reinstall"]).arg(&src))
            .map_err(|e| e.to_string())??;
        let _ = std::fs::remove_dir_all(&src);
        Ok(())
    });
    if let Err(e) = ready {
        panic!("could not set up {VENV} (pip from PyPI): {e}");
    }
    "/tmp/lease_sched_clients_venv/bin/python"
}

#[test]
fn the_python_client_test_suite_passes() {
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(checkout("clients/python"))
        .env("LEASE_SCHED_DSN", dsn())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    println!("{}", all.lines().rfind(|l| l.contains("passed")).unwrap_or(""));
}

#[test]
fn the_python_client_passes_mypy_strict() {
    let py = python();
    let out = Command::new(py)
        .args(["-m", "mypy", "--strict", "--no-incremental", "--cache-dir=/dev/null", "src/lease_sched"])
        .current_dir(checkout("clients/python"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_rust_client_test_suite_passes() {
    let out = Command::new(env!("CARGO"))
        .args(["test", "-q", "-j2", "--manifest-path"])
        .arg(checkout("clients/rust/Cargo.toml"))
        .env("LEASE_SCHED_DSN", dsn())
        .env("CARGO_TARGET_DIR", "/tmp/lease_sched_clients_target")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("test result: ok. 9 passed"), "{all}");
}

#[test]
fn the_python_client_runner_example_claims_heartbeats_and_finishes() {
    let job = unique("ex_pyc");
    let out = Command::new(python()).arg(checkout("examples/runner_client.py")).arg(dsn()).arg(&job).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "won success");
    assert!(succeeded_once(&job));
}

#[test]
fn the_rust_client_runner_example_claims_heartbeats_and_finishes() {
    let job = unique("ex_rsc");
    let out = Command::new(env!("CARGO"))
        .args(["run", "-q", "-j2", "--manifest-path"])
        .arg(checkout("examples/Cargo.toml"))
        .args(["--bin", "runner_client", "--"])
        .arg(dsn())
        .arg(&job)
        .env("CARGO_TARGET_DIR", "/tmp/lease_sched_clients_target")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "won success");
    assert!(succeeded_once(&job));
}

/// Why Go tests cannot run here (None: they can): `go` and Debian's pgx v4 are needed.
fn go_missing() -> Option<String> {
    let go = Command::new("go").arg("version").output();
    if !go.map(|o| o.status.success()).unwrap_or(false) {
        return Some("go is not installed (apt-get install golang-go golang-github-jackc-pgx-v4-dev)".into());
    }
    if !Path::new("/usr/share/gocode/src/github.com/jackc/pgx/v4").exists() {
        return Some("pgx v4 is not installed (apt-get install golang-github-jackc-pgx-v4-dev)".into());
    }
    None
}

/// A GOPATH (next to Debian's /usr/share/gocode) in which clients/go is the package
/// `lease_sched/clients/go`: the module depends on nothing, its tests and the example use
/// Debian's pgx v4, so nothing is downloaded.
fn gopath() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lease_sched_gopath_{}", std::process::id()));
        let parent = dir.join("src/lease_sched/clients");
        std::fs::create_dir_all(&parent).unwrap();
        let link = parent.join("go");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(checkout("clients/go").canonicalize().unwrap(), &link).unwrap();
        dir
    })
    .clone()
}

fn go(args: &[&str]) -> Command {
    let mut c = Command::new("go");
    c.args(args)
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath().display()))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", "/tmp/lease_sched_gocache");
    c
}

#[test]
fn the_go_client_test_suite_passes() {
    if let Some(why) = go_missing() {
        println!("skipped test: the_go_client_test_suite_passes: {why}");
        return;
    }
    let out = go(&["test", "-count=1", "-v", "lease_sched/clients/go"]).env("LEASE_SCHED_DSN", dsn()).output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let passed = all.lines().filter(|l| l.starts_with("--- PASS")).count();
    assert_eq!(passed, 9, "{all}");
    println!("go client: {passed} passed");
}

/// The Node package with its dev dependencies (`npm ci` from the committed lock file, which
/// scripts/setup.sh has usually done already); None and a "skipped test:" line without node.
fn node_package(test: &str) -> Option<PathBuf> {
    let dir = checkout("clients/node");
    let node = Command::new("node").arg("--version").output();
    if !node.map(|o| o.status.success()).unwrap_or(false) {
        println!("skipped test: {test}: node is not installed (apt-get install nodejs npm)");
        return None;
    }
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if dir.join("node_modules/pg").exists() && dir.join("node_modules/typescript").exists() {
            return Ok(());
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    });
    if let Err(e) = ready {
        panic!("npm ci in clients/node failed: {e}");
    }
    Some(dir)
}

#[test]
fn the_node_client_test_suite_passes() {
    let Some(dir) = node_package("the_node_client_test_suite_passes") else { return };
    let out = Command::new("node")
        .args(["--test", "test/client.test.js"])
        .current_dir(&dir)
        .env("LEASE_SCHED_DSN", dsn())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // node prints TAP ("# pass 9") when its output is not a terminal, or "ℹ pass 9".
    let pass = all.lines().find(|l| l.trim_start_matches(['#', 'ℹ', ' ']).starts_with("pass ")).unwrap_or("");
    assert!(pass.trim_end().ends_with("pass 9"), "{all}");
    println!("node client: {}", pass.trim());
}

#[test]
fn the_node_client_type_declarations_pass_tsc_strict() {
    let Some(dir) = node_package("the_node_client_type_declarations_pass_tsc_strict") else { return };
    let out = Command::new("node")
        .args(["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The Go runner (examples/runner.go, on the Go client) built once; None (and a "skipped
/// test:" line) when go or pgx v4 is not installed.
fn go_runner(test: &str) -> Option<PathBuf> {
    if let Some(why) = go_missing() {
        println!("skipped test: {test}: {why}");
        return None;
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    Some(
        BUILT
            .get_or_init(|| {
                let bin = std::env::temp_dir().join(format!("lease_sched_runner_go_{}", std::process::id()));
                let out = go(&["build", "-o"]).arg(&bin).arg(checkout("examples/runner.go")).output().unwrap();
                assert!(out.status.success(), "go build examples/runner.go: {}", text(&out));
                bin
            })
            .clone(),
    )
}

#[test]
fn the_go_runner_claims_heartbeats_and_finishes() {
    let Some(bin) = go_runner("the_go_runner_claims_heartbeats_and_finishes") else { return };
    let job = unique("ex_go");
    // stale_timeout 1 s, 3 s of work: only its heartbeats keep the lease.
    let out = Command::new(&bin)
        .arg(dsn())
        .arg(&job)
        .env("LEASE_EXAMPLE_STALE_TIMEOUT", "1s")
        .env("LEASE_EXAMPLE_WORK", "3s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "won success");
    assert!(succeeded_once(&job));
}

#[test]
fn the_go_runner_stops_on_a_stolen_lease_and_never_finishes_it() {
    let Some(bin) = go_runner("the_go_runner_stops_on_a_stolen_lease_and_never_finishes_it") else { return };
    let job = unique("ex_go_steal");
    let child = Command::new(&bin)
        .arg(dsn())
        .arg(&job)
        .env("LEASE_EXAMPLE_STALE_TIMEOUT", "3s")
        .env("LEASE_EXAMPLE_WORK", "60s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = connect();
    let mut found = None;
    assert!(wait_until(Duration::from_secs(20), || {
        found = c
            .query_opt(
                "SELECT a.pid, e.id, e.plan_time FROM lease_sched.sys_cron_executions e
                   JOIN pg_stat_activity a ON a.application_name = 'lease_sched lease ' || e.id
                  WHERE e.job_name = $1",
                &[&job],
            )
            .unwrap()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, uuid::Uuid>(1), r.get::<_, chrono::DateTime<chrono::Utc>>(2)));
        found.is_some()
    }));
    let (pid, id, plan) = found.unwrap();
    c.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - interval '1 second' WHERE id = $1",
        &[&id],
    )
    .unwrap();
    let outcome: String = tx
        .query_one(
            "SELECT outcome FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => 'thief')",
            &[&job, &plan],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(outcome, "stole");
    let stolen = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stolen.elapsed() < Duration::from_secs(3), "stopped within one heartbeat interval: {:?}", stolen.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("lost: "), "{stdout}");
    let row = c
        .query_one("SELECT status, runner_id, attempt FROM lease_sched.sys_cron_executions WHERE id = $1", &[&id])
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, i32>(2)),
        ("RUNNING".to_string(), "thief".to_string(), 2),
        "the Go runner finished nothing after the steal"
    );
}

/// The 0.2.0 Python client, unchanged, passes its own suite against this version. Left out:
/// `test_two_leaders_never_both_hold`, whose check that each candidate wins some term is about
/// the machine's scheduling, not about leases (it fails on a busy machine; later suites assert
/// only that terms never overlap).
#[test]
fn the_released_0_2_0_python_client_passes_its_own_suite() {
    let Some(dir) = released_0_2_0("the_released_0_2_0_python_client_passes_its_own_suite", &["clients/python"]) else {
        return;
    };
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .args(["--deselect", "tests/test_sync.py::test_two_leaders_never_both_hold"])
        .current_dir(dir.join("clients/python"))
        // Ahead of the installed current client: the released one is what runs.
        .env("PYTHONPATH", dir.join("clients/python/src"))
        .env("LEASE_SCHED_DSN", dsn())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("15 passed"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 0.2.0 Rust client, unchanged, with the dependency versions it was released with, passes
/// its own suite against this version (without its fairness check, as for Python above).
#[test]
fn the_released_0_2_0_rust_client_passes_its_own_suite() {
    let Some(dir) = released_0_2_0("the_released_0_2_0_rust_client_passes_its_own_suite", &["clients/rust"]) else {
        return;
    };
    let out = Command::new(env!("CARGO"))
        .args(["test", "-q", "-j2", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .args(["-p", "lease-sched-client", "--", "--skip", "two_leaders_never_both_hold"])
        .env("LEASE_SCHED_DSN", dsn())
        // Its own target directory: in the shared one, the current client's suite (run at the
        // same time by the_rust_client_test_suite_passes) sometimes ran this build's binary.
        .env("CARGO_TARGET_DIR", "/tmp/lease_sched_clients_target_0_2_0")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("1 filtered out"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The calls 0.2.0's docs show, made by asyncpg as a service written for 0.2.0 makes them:
/// positional arguments, `SELECT * FROM` and named columns read off the one row.
const ASYNCPG_0_2_0_CALLER: &str = r#"
import asyncio, sys, datetime
import asyncpg

async def main(dsn, job):
    c = await asyncpg.connect(dsn)
    plan = datetime.datetime(2026, 1, 1, 3, 0, tzinfo=datetime.timezone.utc)
    won = await c.fetchrow("SELECT * FROM lease_sched.lease_try_claim($1, $2, $3)", job, plan, "a")
    lost = await c.fetchrow("SELECT outcome, execution_id FROM lease_sched.lease_try_claim($1, $2, $3)", job, plan, "b")
    rows = await c.fetch("SELECT * FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3)", job, plan, "c")
    beat = await c.fetchval("SELECT lease_sched.lease_heartbeat($1, $2)", won["execution_id"], won["lease_token"])
    done = await c.fetchval("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", won["execution_id"], won["lease_token"])
    lock = await c.fetchrow("SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, $2, '30 seconds')", job, "a")
    released = await c.fetchval("SELECT lease_sched.lock_release($1, $2)", job, lock["lock_token"])
    print(won["outcome"], won["attempt"], lost["outcome"], lost["execution_id"] == won["execution_id"], len(rows), rows[0]["outcome"],
          beat, done, lock["acquired"], lock["fencing_token"] > won["fencing_token"], released)
    await c.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

fn url_dsn() -> String {
    let kv = dsn();
    let get = |k: &str| kv.split_whitespace().find_map(|p| p.strip_prefix(&format!("{k}=")).map(str::to_string));
    format!(
        "postgresql://{}@{}:{}/{}",
        get("user").unwrap_or_else(|| "postgres".into()),
        get("host").unwrap_or_else(|| "127.0.0.1".into()),
        get("port").unwrap(),
        get("dbname").unwrap_or_else(|| "lease_sched".into())
    )
}

const CALLER_0_2_0_OUTPUT: &str = "won 1 conflicted True 1 conflicted True True True True True";

#[test]
fn asyncpg_code_written_for_0_2_0_runs_unchanged() {
    let job = unique("compat_asyncpg");
    let out = Command::new(python()).args(["-c", ASYNCPG_0_2_0_CALLER]).arg(url_dsn()).arg(&job).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CALLER_0_2_0_OUTPUT);
    assert!(succeeded_once(&job));
}

/// The same calls through node-postgres (`pg`, the Node package's one dependency).
const NODE_PG_0_2_0_CALLER: &str = r#"
const { createRequire } = require("node:module");
const pg = createRequire(process.argv[1] + "/")("pg");
(async () => {
  const [dir, dsn, job] = process.argv.slice(1);
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  const plan = new Date(Date.UTC(2026, 0, 1, 3, 0));
  const won = (await c.query("SELECT * FROM lease_sched.lease_try_claim($1, $2, $3)", [job, plan, "a"])).rows[0];
  const lost = (await c.query("SELECT outcome, execution_id FROM lease_sched.lease_try_claim($1, $2, $3)", [job, plan, "b"])).rows[0];
  const rows = (await c.query("SELECT * FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3)", [job, plan, "c"])).rows;
  const beat = (await c.query("SELECT lease_sched.lease_heartbeat($1, $2) AS ok", [won.execution_id, won.lease_token])).rows[0].ok;
  const done = (await c.query("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS') AS ok", [won.execution_id, won.lease_token])).rows[0].ok;
  const lock = (await c.query("SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, $2, '30 seconds')", [job, "a"])).rows[0];
  const released = (await c.query("SELECT lease_sched.lock_release($1, $2) AS ok", [job, lock.lock_token])).rows[0].ok;
  const py = (b) => (b ? "True" : "False");
  console.log([won.outcome, won.attempt, lost.outcome, py(lost.execution_id === won.execution_id), rows.length,
    rows[0].outcome, py(beat), py(done), py(lock.acquired), py(BigInt(lock.fencing_token) > BigInt(won.fencing_token)), py(released)].join(" "));
  await c.end();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn node_postgres_code_written_for_0_2_0_runs_unchanged() {
    let package = checkout("clients/node");
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true)
        || !package.join("node_modules/pg").exists()
    {
        skip(
            "node_postgres_code_written_for_0_2_0_runs_unchanged",
            "needs node and clients/node/node_modules (scripts/setup.sh: apt nodejs, npm ci)",
        );
        return;
    }
    let job = unique("compat_node");
    let out = Command::new("node")
        .args(["-e", NODE_PG_0_2_0_CALLER])
        .arg(&package)
        .arg(url_dsn())
        .arg(&job)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CALLER_0_2_0_OUTPUT);
    assert!(succeeded_once(&job));
}
