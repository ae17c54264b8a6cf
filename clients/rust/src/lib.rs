//! Client for the `lease_sched` PostgreSQL extension (tokio-postgres): a lease you can't
//! hold wrong.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lease_sched_client::Error> {
//! use std::time::Duration;
//! use lease_sched_client::{Client, Outcome};
//! let client = Client::connect("host=127.0.0.1 dbname=app user=runner").await?;
//! let plan = chrono::Utc::now();
//! if let Some(lease) = client.try_claim("nightly", plan, "host-a", Duration::from_secs(30)).await? {
//!     let token = lease.cancellation_token();
//!     let work = async { /* pass lease.fencing_token() downstream */ Ok::<_, String>(()) };
//!     tokio::select! {
//!         r = work => match r {
//!             Ok(()) => lease.finish(Outcome::success()).await?,
//!             Err(e) => lease.finish(Outcome::failed("handler_error", e)).await?,
//!         },
//!         _ = token.cancelled() => { /* lost: stop; never finish */ drop(lease) }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The rules (docs/clients.md):
//! - every guard heartbeats on its own connection (`application_name` =
//!   `lease_sched lease <execution_id>` / `lease_sched lock <name>`) every TTL/3, and LISTENs on
//!   `lease_sched_lost`;
//! - it is *lost* when a heartbeat returns false, a matching notification arrives, or the local
//!   deadline passes: the monotonic instant the last acknowledged heartbeat was sent + TTL −
//!   margin (`min(TTL/10, 1 s)`), whether or not the database can be reached;
//! - once lost, [`LeaseGuard::finish`] writes nothing and returns [`Error::Lost`];
//! - dropping a guard unfinished stops its heartbeat and leaves the lease (lock) to expire after
//!   its TTL, when another runner may take it (a lease is then retried like any abandoned run).
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_postgres::{AsyncMessage, Config, NoTls};
pub use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel the extension notifies on when a lease is stolen (payload: execution id) or a
/// lock taken over (payload `lock:<name>`).
pub const LOST_CHANNEL: &str = "lease_sched_lost";

/// Errors of this crate.
#[derive(Debug)]
pub enum Error {
    /// A database error (connecting, or a call that failed).
    Db(tokio_postgres::Error),
    /// The lease or lock was lost; nothing was written. The string says how it was noticed.
    Lost(String),
    /// `lock_fence` / `lease_fence` does not exist in this database (older lease_sched).
    FenceUnavailable(&'static str),
    /// Bad arguments (a zero TTL, ...).
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(e) => write!(f, "lease_sched: {e}"),
            Error::Lost(why) => write!(f, "lease_sched: lost ({why}); nothing was written"),
            Error::FenceUnavailable(what) => write!(
                f,
                "lease_sched.{what} does not exist in this database: the installed lease_sched is older \
                 than the fencing API (ALTER EXTENSION lease_sched UPDATE after installing a newer version)"
            ),
            Error::Invalid(m) => write!(f, "lease_sched: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

/// How a run ended, for [`LeaseGuard::finish`].
#[derive(Debug, Clone)]
pub enum Outcome {
    Success { result: Option<serde_json::Value>, rows_affected: Option<i64> },
    Failed { code: String, message: String, retry_in: Option<Duration> },
}

impl Outcome {
    pub fn success() -> Outcome {
        Outcome::Success { result: None, rows_affected: None }
    }
    pub fn success_with(result: serde_json::Value, rows_affected: Option<i64>) -> Outcome {
        Outcome::Success { result: Some(result), rows_affected }
    }
    pub fn failed(code: impl Into<String>, message: impl fmt::Display) -> Outcome {
        Outcome::Failed { code: code.into(), message: message.to_string(), retry_in: None }
    }
    /// FAILED with the error's SQLSTATE when it is a database error, else `handler_error`.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Outcome {
        let code = e
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| "handler_error".into());
        let message = match e.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.as_db_error()) {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        };
        Outcome::Failed { code, message, retry_in: None }
    }
}

/// Claim options beyond the four the issue's signature takes.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    pub scope_kind: String,
    pub scope_id: String,
    pub max_attempts: i32,
    pub allow_stale_reentry: bool,
    /// How long before the database may call the lease stale the holder gives up; default
    /// `min(ttl / 10, 1 s)`.
    pub margin: Option<Duration>,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        ClaimOptions {
            scope_kind: "global".into(),
            scope_id: String::new(),
            max_attempts: 3,
            allow_stale_reentry: true,
            margin: None,
        }
    }
}

/// The claim row of a conflicted claim (someone else holds the plan, or it is done).
#[derive(Debug, Clone)]
pub struct Conflict {
    pub execution_id: Option<Uuid>,
    pub attempt: Option<i32>,
    pub stale_after: Option<DateTime<Utc>>,
}

fn interval(d: Duration) -> String {
    format!("{} microseconds", d.as_micros())
}

fn margin_for(ttl: Duration, margin: Option<Duration>) -> Result<Duration, Error> {
    if ttl.is_zero() {
        return Err(Error::Invalid("the ttl / stale_timeout must be positive".into()));
    }
    let m = margin.unwrap_or_else(|| (ttl / 10).min(Duration::from_secs(1)));
    if m >= ttl * 2 / 3 {
        return Err(Error::Invalid("margin must be below two thirds of the ttl".into()));
    }
    Ok(m)
}

/// Connects, returning the client and a receiver of its notifications; the connection is
/// driven by a spawned task that ends when the client is dropped or the connection breaks.
async fn connect_listening(
    config: &Config,
) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<tokio_postgres::Notification>), Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

/// A lease_sched client: one connection for claims and finishes; every guard opens its own
/// heartbeat connection from the same configuration.
#[derive(Clone)]
pub struct Client {
    config: Config,
    client: Arc<tokio_postgres::Client>,
}

impl Client {
    pub async fn connect(dsn: &str) -> Result<Client, Error> {
        let config: Config = dsn.parse()?;
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(Client { config, client: Arc::new(client) })
    }

    /// The connection claims and finishes go through.
    pub fn pg(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// A new connection for the body's work (`cancel_query_on_loss` can cancel its query).
    pub async fn connect_more(&self) -> Result<tokio_postgres::Client, Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Claims `(job, plan)` for `runner` with `stale_timeout = ttl`: `Ok(None)` when conflicted.
    pub async fn try_claim(
        &self,
        job: &str,
        plan: DateTime<Utc>,
        runner: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseGuard>, Error> {
        Ok(self.try_claim_with(job, plan, runner, ttl, &ClaimOptions::default()).await?.ok())
    }

    /// [`Client::try_claim`] with options; `Err(Conflict)` inside carries the claim row.
    pub async fn try_claim_with(
        &self,
        job: &str,
        plan: DateTime<Utc>,
        runner: &str,
        ttl: Duration,
        opts: &ClaimOptions,
    ) -> Result<Result<LeaseGuard, Conflict>, Error> {
        let margin = margin_for(ttl, opts.margin)?;
        let started = Instant::now();
        let row = self
            .client
            .query_one(
                "SELECT outcome, execution_id, lease_token, attempt, fencing_token, stale_after
                   FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3,
                        scope_kind => $4, scope_id => $5, stale_timeout => $6::text::interval,
                        max_attempts => $7, allow_stale_reentry => $8)",
                &[
                    &job,
                    &plan,
                    &runner,
                    &opts.scope_kind,
                    &opts.scope_id,
                    &interval(ttl),
                    &opts.max_attempts,
                    &opts.allow_stale_reentry,
                ],
            )
            .await?;
        let outcome: String = row.get(0);
        if outcome != "won" && outcome != "stole" {
            return Ok(Err(Conflict { execution_id: row.get(1), attempt: row.get(3), stale_after: row.get(5) }));
        }
        let execution_id: Uuid = row.get(1);
        let lease_token: Uuid = row.get(2);
        let keeper = Keeper::start(
            self.config.clone(),
            format!("lease_sched lease {execution_id}"),
            "SELECT lease_sched.lease_heartbeat(execution_id => $1::text::uuid, lease_token => $2::text::uuid)",
            [execution_id.to_string(), lease_token.to_string()],
            execution_id.to_string(),
            ttl,
            margin,
            started,
        );
        Ok(Ok(LeaseGuard {
            client: self.clone(),
            outcome,
            execution_id,
            lease_token,
            attempt: row.get(3),
            fencing_token: row.get(4),
            stale_after: row.get(5),
            keeper,
        }))
    }

    /// The plan a runner should claim now for `job` every `every` (`lease_next_plan`).
    pub async fn next_plan(&self, job: &str, every: Duration) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self
            .client
            .query_one(
                "SELECT lease_sched.lease_next_plan(job_name => $1, every => $2::text::interval)",
                &[&job, &interval(every)],
            )
            .await?
            .get(0))
    }

    /// Acquires the lock `name` for `holder`: `Ok(None)` while someone else holds it.
    pub async fn try_lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<LeaderGuard>, Error> {
        let margin = margin_for(ttl, None)?;
        let started = Instant::now();
        let row = self
            .client
            .query_one(
                "SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire(
                     lock_name => $1, holder => $2, ttl => $3::text::interval)",
                &[&name, &holder, &interval(ttl)],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let lock_token: Uuid = row.get(1);
        let keeper = Keeper::start(
            self.config.clone(),
            format!("lease_sched lock {name}"),
            "SELECT lease_sched.lock_heartbeat(lock_name => $1, lock_token => $2::text::uuid)",
            [name.to_string(), lock_token.to_string()],
            format!("lock:{name}"),
            ttl,
            margin,
            started,
        );
        Ok(Some(LeaderGuard {
            client: self.clone(),
            name: name.to_string(),
            lock_token,
            fencing_token: row.get(2),
            keeper,
        }))
    }

    /// Registers a runtime and touches it every `every` until the guard is stopped or dropped.
    pub async fn runtime(&self, name: &str, every: Duration) -> Result<RuntimeGuard, Error> {
        let id: Uuid = self.client.query_one("SELECT lease_sched.runtime_register($1)", &[&name]).await?.get(0);
        let stop = CancellationToken::new();
        let touches = Arc::new(AtomicU64::new(0));
        let (config, s, t) = (self.config.clone(), stop.clone(), touches.clone());
        let app = format!("lease_sched runtime {name}");
        let task = tokio::spawn(async move {
            let mut conn: Option<tokio_postgres::Client> = None;
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = sleep(every) => {}
                }
                if conn.is_none() {
                    let mut c = config.clone();
                    c.application_name(&app);
                    if let Ok((client, connection)) = c.connect(NoTls).await {
                        tokio::spawn(connection);
                        conn = Some(client);
                    }
                }
                if let Some(c) = &conn {
                    match c.query_one("SELECT lease_sched.runtime_touch($1)", &[&id]).await {
                        Ok(_) => {
                            t.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => conn = None,
                    }
                }
            }
        });
        Ok(RuntimeGuard { id, stop, touches, task: Some(task) })
    }
}

/// The background part of a guard: heartbeats, LISTEN, local deadline.
struct Keeper {
    lost: CancellationToken,
    stop: CancellationToken,
    reason: Arc<Mutex<String>>,
    beats: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    #[allow(clippy::too_many_arguments)]
    fn start(
        mut config: Config,
        app: String,
        sql: &'static str,
        args: [String; 2],
        payload: String,
        ttl: Duration,
        margin: Duration,
        started: Instant,
    ) -> Keeper {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let reason = Arc::new(Mutex::new(String::new()));
        let beats = Arc::new(AtomicU64::new(0));
        let every = ttl / 3;
        config.application_name(&app);
        config.connect_timeout(every.max(Duration::from_secs(1)));
        config.keepalives(true).keepalives_idle(every.max(Duration::from_secs(1)));
        let (l, s, r, b) = (lost.clone(), stop.clone(), reason.clone(), beats.clone());
        let task = tokio::spawn(async move {
            let lose = |why: &str| {
                *r.lock().unwrap() = why.to_string();
                l.cancel();
            };
            let mut deadline = started + ttl - margin;
            let mut next_beat = started + every;
            let mut conn: Option<(tokio_postgres::Client, mpsc::UnboundedReceiver<tokio_postgres::Notification>)> =
                None;
            loop {
                if conn.is_none() {
                    tokio::select! {
                        _ = s.cancelled() => return,
                        _ = sleep_until(deadline) => return lose("local deadline passed without an acknowledged heartbeat"),
                        c = async {
                            let (c, rx) = connect_listening(&config).await?;
                            c.batch_execute(&format!("LISTEN {LOST_CHANNEL}")).await?;
                            Ok::<_, Error>((c, rx))
                        } => match c {
                            Ok(c) => conn = Some(c),
                            Err(_) => {
                                tokio::select! {
                                    _ = s.cancelled() => return,
                                    _ = sleep_until(deadline) => return lose("local deadline passed without an acknowledged heartbeat"),
                                    _ = sleep(Duration::from_millis(300).min(every)) => {}
                                }
                                next_beat = Instant::now();
                                continue;
                            }
                        }
                    }
                }
                let (client, rx) = conn.as_mut().unwrap();
                let mut broken = false;
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = sleep_until(deadline) => return lose("local deadline passed without an acknowledged heartbeat"),
                    n = rx.recv() => match n {
                        Some(n) if n.channel() == LOST_CHANNEL && n.payload() == payload => {
                            return lose("notified on lease_sched_lost");
                        }
                        Some(_) => {}
                        None => broken = true,
                    },
                    _ = sleep_until(next_beat) => {
                        let sent = Instant::now();
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&args[0], &args[1]];
                        let beat = client.query_one(sql, &params);
                        tokio::select! {
                            _ = s.cancelled() => return,
                            _ = sleep_until(deadline) => return lose("local deadline passed without an acknowledged heartbeat"),
                            res = beat => match res {
                                Ok(row) if row.get::<_, bool>(0) => {
                                    b.fetch_add(1, Ordering::Relaxed);
                                    deadline = deadline.max(sent + ttl - margin);
                                    next_beat = sent + every;
                                }
                                Ok(_) => return lose("heartbeat returned false: someone else holds it now"),
                                Err(_) => broken = true,
                            }
                        }
                    }
                }
                if broken {
                    conn = None;
                    next_beat = Instant::now();
                }
            }
        });
        Keeper { lost, stop, reason, beats, task: Some(task) }
    }

    fn reason(&self) -> String {
        self.reason.lock().unwrap().clone()
    }

    /// Stops the heartbeat and waits for it; returns whether the lease was lost.
    async fn stop(&mut self) -> bool {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.lost.is_cancelled()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

macro_rules! loss_api {
    () => {
        /// Resolves once the lease (lock) is lost; use it in `tokio::select!`.
        pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
            self.keeper.lost.clone().cancelled_owned()
        }
        /// Whether it is lost (final).
        pub fn is_lost(&self) -> bool {
            self.keeper.lost.is_cancelled()
        }
        /// Cancelled on loss: hand it (or child tokens) to the work.
        pub fn cancellation_token(&self) -> CancellationToken {
            self.keeper.lost.child_token()
        }
        /// `Err(Error::Lost)` once lost.
        pub fn check(&self) -> Result<(), Error> {
            if self.is_lost() {
                Err(Error::Lost(self.keeper.reason()))
            } else {
                Ok(())
            }
        }
        /// How it was lost (empty while held).
        pub fn lost_reason(&self) -> String {
            self.keeper.reason()
        }
        /// Heartbeats acknowledged so far.
        pub fn heartbeats(&self) -> u64 {
            self.keeper.beats.load(Ordering::Relaxed)
        }
        /// Cancels the query running on `conn` (with `pg_cancel_backend`'s protocol message)
        /// the moment the lease is lost. The watcher ends with the guard.
        pub fn cancel_query_on_loss(&self, conn: &tokio_postgres::Client) {
            let cancel = conn.cancel_token();
            let lost = self.keeper.lost.clone();
            let stop = self.keeper.stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = lost.cancelled() => { let _ = cancel.cancel_query(NoTls).await; }
                    _ = stop.cancelled() => {}
                }
            });
        }
    };
}

/// A held lease. Heartbeats in the background until [`LeaseGuard::finish`] consumes it.
///
/// Dropping it without finishing stops the heartbeat and leaves the lease RUNNING until its
/// `stale_timeout` passes; then another runner may steal it (or the sweeper fails it), and the
/// run is retried like any abandoned one.
#[must_use = "finish the lease: dropping it stops the heartbeat and leaves the lease to expire"]
pub struct LeaseGuard {
    client: Client,
    outcome: String,
    execution_id: Uuid,
    lease_token: Uuid,
    attempt: i32,
    fencing_token: i64,
    stale_after: DateTime<Utc>,
    keeper: Keeper,
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("outcome", &self.outcome)
            .field("execution_id", &self.execution_id)
            .field("attempt", &self.attempt)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    loss_api!();

    pub fn execution_id(&self) -> Uuid {
        self.execution_id
    }
    pub fn fencing_token(&self) -> i64 {
        self.fencing_token
    }
    pub fn attempt(&self) -> i32 {
        self.attempt
    }
    /// `won` or `stole`.
    pub fn outcome(&self) -> &str {
        &self.outcome
    }
    /// `stale_after` as the claim returned it (database clock).
    pub fn stale_after(&self) -> DateTime<Utc> {
        self.stale_after
    }

    /// `lease_sched.lease_fence(execution_id, fencing_token, lease_token)` in `conn`'s
    /// current transaction: with the secret, the fence holds until that transaction ends.
    pub async fn fence(&self, conn: &tokio_postgres::Client) -> Result<(), Error> {
        fence(
            conn,
            "lease_fence",
            "SELECT lease_sched.lease_fence($1, $2, $3::text::uuid)",
            &self.execution_id,
            self.fencing_token,
            self.lease_token.to_string(),
        )
        .await
    }

    /// Stops the heartbeat and writes the terminal state. After loss it writes nothing and
    /// returns `Err(Error::Lost)`; a `false` finish (taken over since the last heartbeat)
    /// also returns `Err(Error::Lost)`.
    ///
    /// A result the database cannot store (over [`RESULT_MAX_BYTES`] of JSON, or refused by
    /// `jsonb`, e.g. a `\u0000`) does not leave the run RUNNING (it would run again after
    /// `stale_timeout`): the run is finished all the same, with
    /// `{"result_not_stored": "<why>"}` as its result.
    pub async fn finish(mut self, outcome: Outcome) -> Result<(), Error> {
        let (status, mut result, rows, code, msg, retry_in) = match outcome {
            Outcome::Success { result, rows_affected } => ("SUCCESS", result, rows_affected, None, None, None),
            Outcome::Failed { code, message, retry_in } => {
                ("FAILED", None, None, Some(code), Some(message), retry_in.map(interval))
            }
        };
        // Checked while the heartbeat still runs: an oversized result is replaced, never a
        // reason to leave the run unfinished.
        if let Some(r) = &result {
            let size = r.to_string().len();
            if size > RESULT_MAX_BYTES {
                result = Some(unstored_result(&format!(
                    "result is {size} bytes of JSON, over the {RESULT_MAX_BYTES} bytes lease_finish stores"
                )));
            }
        }
        if self.keeper.stop().await {
            return Err(Error::Lost(self.keeper.reason()));
        }
        let finish = |result: Option<serde_json::Value>| {
            let (client, id, token) = (self.client.client.clone(), self.execution_id, self.lease_token);
            let (code, msg, retry_in) = (code.clone(), msg.clone(), retry_in.clone());
            async move {
                client
                    .query_one(
                        "SELECT lease_sched.lease_finish(execution_id => $1, lease_token => $2, status => $3,
                             result => $4, rows_affected => $5, error_code => $6, error_msg => $7,
                             retry_in => $8::text::interval)",
                        &[&id, &token, &status, &result, &rows, &code, &msg, &retry_in],
                    )
                    .await
            }
        };
        let had_result = result.is_some();
        let row = match finish(result).await {
            // Refused by the database (too large as jsonb prints it, or not valid jsonb): the
            // lease is still RUNNING; finish it with the substitute.
            Err(e) if had_result && e.code().is_some_and(|c| c.code().starts_with("22")) => {
                let why = format!(
                    "lease_finish refused the result: {}",
                    e.as_db_error().map_or(e.to_string(), |d| d.message().to_string())
                );
                finish(Some(unstored_result(&why))).await?
            }
            r => r?,
        };
        if row.get::<_, bool>(0) {
            Ok(())
        } else {
            Err(Error::Lost("finish returned false: taken over since the last heartbeat".into()))
        }
    }
}

/// What `lease_finish` stores at most as a result (bytes of JSON as `jsonb` prints it; larger
/// is refused with SQLSTATE 22001).
pub const RESULT_MAX_BYTES: usize = 16 * 1024;

/// The result stored in place of one that cannot be stored: `{"result_not_stored": why}`.
fn unstored_result(why: &str) -> serde_json::Value {
    let why: String = why.chars().take(1000).collect();
    serde_json::json!({ "result_not_stored": why })
}

async fn fence(
    conn: &tokio_postgres::Client,
    what: &'static str,
    sql: &str,
    key: &(dyn tokio_postgres::types::ToSql + Sync),
    token: i64,
    secret: String,
) -> Result<(), Error> {
    match conn.execute(sql, &[key, &token, &secret]).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
            Err(Error::FenceUnavailable(what))
        }
        Err(e) => Err(e.into()),
    }
}

/// A held lock (leader election). Consumed by [`LeaderGuard::release`]; dropping it stops
/// the heartbeat and leaves the lock to expire after its TTL.
#[must_use = "release the lock: dropping it stops the heartbeat and leaves the lock to expire"]
pub struct LeaderGuard {
    client: Client,
    name: String,
    lock_token: Uuid,
    fencing_token: i64,
    keeper: Keeper,
}

impl fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("name", &self.name)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LeaderGuard {
    loss_api!();

    pub fn fencing_token(&self) -> i64 {
        self.fencing_token
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `lease_sched.lock_fence(lock_name, fencing_token, lock_token)` in `conn`'s current
    /// transaction: with the secret, the fence holds until that transaction ends.
    pub async fn fence(&self, conn: &tokio_postgres::Client) -> Result<(), Error> {
        fence(
            conn,
            "lock_fence",
            "SELECT lease_sched.lock_fence($1, $2, $3::text::uuid)",
            &self.name,
            self.fencing_token,
            self.lock_token.to_string(),
        )
        .await
    }

    /// Stops the heartbeat and releases the lock; `Err(Error::Lost)` (nothing written) if it
    /// was lost.
    pub async fn release(mut self) -> Result<(), Error> {
        if self.keeper.stop().await {
            return Err(Error::Lost(self.keeper.reason()));
        }
        let ok: bool = self
            .client
            .client
            .query_one(
                "SELECT lease_sched.lock_release(lock_name => $1, lock_token => $2)",
                &[&self.name, &self.lock_token],
            )
            .await?
            .get(0);
        if ok {
            Ok(())
        } else {
            Err(Error::Lost("release returned false: taken over since the last heartbeat".into()))
        }
    }
}

/// A registered runtime, touched in the background until [`RuntimeGuard::stop`] (or drop).
pub struct RuntimeGuard {
    id: Uuid,
    stop: CancellationToken,
    touches: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl RuntimeGuard {
    pub fn id(&self) -> Uuid {
        self.id
    }
    pub fn touches(&self) -> u64 {
        self.touches.load(Ordering::Relaxed)
    }
    /// Stops touching and waits for the background task.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
