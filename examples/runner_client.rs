//! The runner of examples/runner.rs, with the lease-sched-client crate (clients/rust): the
//! guard heartbeats in the background, its cancellation token fires on loss, and `finish`
//! consumes it (a lost lease is never finished).
//!
//!     cargo run -p lease_sched_examples --bin runner_client -- \
//!         "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres" example-report
use std::time::Duration;

use lease_sched_client::{Client, Error, Outcome};

/// The job's real work: gets the fencing token to hand downstream.
async fn work(conn: &tokio_postgres::Client, fencing_token: i64) -> Result<serde_json::Value, tokio_postgres::Error> {
    conn.execute("SELECT pg_sleep(0.5)", &[]).await?;
    Ok(serde_json::json!({ "rows": 1, "fencing_token": fencing_token }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let dsn = args.next().unwrap_or_else(|| "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres".into());
    let job = args.next().unwrap_or_else(|| "example-report".into());
    let client = Client::connect(&dsn).await?;

    let Some(plan) = client.next_plan(&job, Duration::from_secs(60)).await? else {
        println!("nothing due");
        return Ok(());
    };
    let runner = format!("rust-{}", std::process::id());
    let Some(lease) = client.try_claim(&job, plan, &runner, Duration::from_secs(30)).await? else {
        println!("conflicted");
        return Ok(());
    };
    let outcome = lease.outcome().to_string();
    let conn = client.connect_more().await?;
    lease.cancel_query_on_loss(&conn); // a lost lease cancels the work's running query
    tokio::select! {
        r = work(&conn, lease.fencing_token()) => match r {
            Ok(result) => match lease.finish(Outcome::success_with(result, Some(1))).await {
                Ok(()) => println!("{outcome} success"),
                Err(Error::Lost(why)) => println!("lost: {why}"),
                Err(e) => return Err(e),
            },
            Err(e) => {
                if lease.is_lost() {
                    println!("lost: {}", lease.lost_reason());
                } else {
                    lease.finish(Outcome::from_error(&e)).await?;
                    println!("{outcome} failed");
                }
            }
        },
        _ = lease.lost() => println!("lost: {}", lease.lost_reason()), // dropped: never finished
    }
    Ok(())
}
