//! The Prometheus custom-queries file works for real: start Debian's
//! prometheus-postgres-exporter on loopback against the test cluster, scrape /metrics,
//! and find the lease_sched series.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lease_sched_integration::*;

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn the_exporter_publishes_lease_sched_series() {
    let mut c = connect();
    let job = unique("exported");
    let r = claim(&mut c, &job, plan(), "r1");
    assert!(finish_ok(&mut c, r.id(), r.token()));
    let port = 19187u16;
    let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/monitoring/postgres_exporter_queries.yaml");
    let db_port = dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap();
    let _exporter = Exporter(
        Command::new("prometheus-postgres-exporter")
            .args([
                &format!("--web.listen-address=127.0.0.1:{port}"),
                &format!("--extend.query-path={queries}"),
                "--disable-default-metrics",
                "--disable-settings-metrics",
            ])
            .env("DATA_SOURCE_NAME", format!("postgresql://postgres@127.0.0.1:{db_port}/lease_sched?sslmode=disable"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-postgres-exporter (installed by scripts/setup.sh)"),
    );
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            body = scrape(port).unwrap_or_default();
            body.contains("lease_sched_stats_value")
        }),
        "no lease_sched series in:\n{body}"
    );
    assert!(body.contains("lease_sched_stats_value{counter=\"claims_won\""), "{body}");
    assert!(body.contains(&format!("lease_sched_job_succeeded{{job_name=\"{job}\"")), "{body}");
    assert!(body.contains("lease_sched_leases_running"), "{body}");
    assert!(body.contains("lease_sched_runtimes_count"), "{body}");
}
