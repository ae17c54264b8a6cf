//! A lease_sched runner in Rust (tokio-postgres): claim the due plan of a job, heartbeat
//! on a timer while the work runs, finish with the token.
//!
//!     cargo run -p lease_sched_examples --bin runner -- \
//!         "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres" example-report
use std::time::Duration;

use tokio_postgres::NoTls;

const STALE_TIMEOUT_SECS: u64 = 30;

async fn work() -> serde_json::Value {
    tokio::time::sleep(Duration::from_millis(500)).await; // the job's real work goes here
    serde_json::json!({ "rows": 1 })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tokio_postgres::Error> {
    let mut args = std::env::args().skip(1);
    let dsn = args.next().unwrap_or_else(|| "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres".into());
    let job = args.next().unwrap_or_else(|| "example-report".into());
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(connection);

    let plan: Option<chrono::DateTime<chrono::Utc>> = client
        .query_one("SELECT lease_sched.lease_next_plan(job_name => $1, every => '1 minute')", &[&job])
        .await?
        .get(0);
    let Some(plan) = plan else {
        println!("nothing due");
        return Ok(());
    };
    let claim = client
        .query_one(
            "SELECT outcome, execution_id, lease_token, fencing_token
               FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3,
                                                stale_timeout => make_interval(secs => $4))",
            &[&job, &plan, &format!("rust-{}", std::process::id()), &(STALE_TIMEOUT_SECS as f64)],
        )
        .await?;
    let outcome: String = claim.get(0);
    if outcome == "conflicted" {
        println!("conflicted");
        return Ok(());
    }
    let (id, token): (uuid::Uuid, uuid::Uuid) = (claim.get(1), claim.get(2));
    let _fencing_token: i64 = claim.get(3); // hand this to downstream systems

    // Heartbeat while working; a false heartbeat means the lease is lost.
    let mut ticker = tokio::time::interval(Duration::from_secs(STALE_TIMEOUT_SECS / 3));
    ticker.tick().await;
    let work = work();
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break Some(result),
            _ = ticker.tick() => {
                let ok: bool = client.query_one("SELECT lease_sched.lease_heartbeat($1, $2)", &[&id, &token]).await?.get(0);
                if !ok { break None; }
            }
        }
    };
    let Some(result) = result else {
        println!("lost");
        return Ok(());
    };
    let finished: bool = client
        .query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS', result => $3)", &[&id, &token, &result])
        .await?
        .get(0);
    println!("{}", if finished { format!("{outcome} success") } else { "lost".into() });
    Ok(())
}
