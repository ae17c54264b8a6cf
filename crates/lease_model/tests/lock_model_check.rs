//! Exhaustive exploration of the named-lock state machine (`lease_model::lock`) with
//! stateright: three clients acquire, heartbeat, release, stall and crash on one lock in
//! every order, with database time as an explicit input that advances in steps. What a
//! client believes (the secret it remembers, the expiry it was last told) is part of the
//! state, so the properties are about what clients may do, not only about the row.
//!
//! Also: `retry_backoff` over the whole GUC range (property test by enumeration).
use lease_model::lock::{self, Acquire, LockRow};
use lease_model::{retry_backoff, DbTime};
use stateright::{Checker, Model, Property};

const CLIENTS: usize = 3;
const HORIZON: DbTime = 6;
/// Grants are bounded so that acquire/release cycles within one clock step stay finite.
const MAX_GRANTS: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Client {
    /// The secret (and its fencing token) of the last grant this client got; kept after a
    /// crash, a stall or a release, so that it can still try it (a zombie).
    secret: Option<(u64, i64)>,
    /// The client acts as the holder: it got a grant or a successful heartbeat and has not
    /// released, crashed, or been told it lost the lock.
    believes: bool,
    /// The expiry the database last told this client (grant or heartbeat).
    valid_until: DbTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    row: Option<LockRow>,
    now: DbTime,
    grants: u64,
    clients: [Client; CLIENTS],
    /// The newest secret granted, and the highest fencing token granted so far.
    latest_secret: u64,
    highest_fencing: i64,
    /// Reachability witnesses (never reset).
    took_over: bool,
    revived: bool,
    reacquired_after_release: bool,
    released: bool,
    zombie_refused: bool,
    violation: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Acquire {
        client: usize,
        ttl: DbTime,
    },
    Heartbeat {
        client: usize,
    },
    Release {
        client: usize,
    },
    /// The client crashes or stalls: it stops acting as the holder but remembers its secret.
    Crash {
        client: usize,
    },
    Tick,
}

struct Locks;

impl Model for Locks {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let c = Client { secret: None, believes: false, valid_until: 0 };
        vec![State {
            row: None,
            now: 0,
            grants: 0,
            clients: [c; CLIENTS],
            latest_secret: 0,
            highest_fencing: 0,
            took_over: false,
            revived: false,
            reacquired_after_release: false,
            released: false,
            zombie_refused: false,
            violation: None,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.violation.is_some() {
            return;
        }
        for (client, c) in s.clients.iter().enumerate() {
            if !c.believes && s.grants < MAX_GRANTS {
                actions.push(Action::Acquire { client, ttl: 1 });
                actions.push(Action::Acquire { client, ttl: 2 });
            }
            if c.secret.is_some() {
                // Holders, and zombies that still have a secret, try it.
                actions.push(Action::Heartbeat { client });
                actions.push(Action::Release { client });
            }
            if c.believes {
                actions.push(Action::Crash { client });
            }
        }
        if s.now < HORIZON {
            actions.push(Action::Tick);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let before = s.row;
        let now = s.now;
        match action {
            Action::Tick => s.now += 1,
            Action::Acquire { client, ttl } => {
                let (secret, fencing) = (1000 + s.grants, s.highest_fencing + 1);
                match lock::acquire(&mut s.row, now, client as u32, ttl, secret, fencing) {
                    Acquire::Acquired { lock_token, fencing_token, expires_at } => {
                        if before.is_some_and(|r| !lock::is_expired(&r, now)) {
                            s.violation = Some("a live lock was granted to another client".into());
                        }
                        if fencing_token <= s.highest_fencing {
                            s.violation = Some("a lock's fencing token did not increase".into());
                        }
                        if lock_token == s.latest_secret || expires_at != now + ttl {
                            s.violation = Some("a grant reused a secret or has a wrong expiry".into());
                        }
                        s.took_over |= before.is_some();
                        s.reacquired_after_release |= before.is_none() && s.released;
                        s.grants += 1;
                        s.latest_secret = lock_token;
                        s.highest_fencing = fencing_token;
                        s.clients[client] = Client {
                            secret: Some((lock_token, fencing_token)),
                            believes: true,
                            valid_until: expires_at,
                        };
                    }
                    Acquire::Held { holder, expires_at } => {
                        match before {
                            None => s.violation = Some("a free (released) lock was refused".into()),
                            Some(r) if lock::is_expired(&r, now) => {
                                s.violation = Some("an expired lock was refused".into())
                            }
                            Some(r) if r.holder != holder || r.expires_at != expires_at => {
                                s.violation = Some("a refusal misreported the holder".into())
                            }
                            _ => {}
                        }
                        if s.row != before {
                            s.violation = Some("a refused acquire changed the row".into());
                        }
                    }
                }
            }
            Action::Heartbeat { client } => {
                let (secret, _) = s.clients[client].secret.unwrap();
                if lock::heartbeat(&mut s.row, secret, now) {
                    if secret != s.latest_secret {
                        s.violation = Some("a replaced secret heartbeat the lock".into());
                    }
                    s.revived |= before.is_some_and(|r| lock::is_expired(&r, now));
                    let r = s.row.unwrap();
                    if r.expires_at != now + r.ttl || r.lock_token != secret {
                        s.violation = Some("a heartbeat did not extend by the ttl".into());
                    }
                    s.clients[client].believes = true;
                    s.clients[client].valid_until = r.expires_at;
                } else {
                    if s.row != before {
                        s.violation = Some("a refused heartbeat changed the row".into());
                    }
                    s.zombie_refused |= secret != s.latest_secret;
                    s.clients[client].believes = false;
                    s.clients[client].secret = None; // told it lost the lock: forgets it
                }
            }
            Action::Release { client } => {
                let (secret, _) = s.clients[client].secret.take().unwrap();
                s.clients[client].believes = false;
                if lock::release(&mut s.row, secret) {
                    if secret != s.latest_secret {
                        s.violation = Some("a replaced secret released the lock".into());
                    }
                    s.released = true;
                } else if s.row != before {
                    s.violation = Some("a refused release changed the row".into());
                }
            }
            Action::Crash { client } => s.clients[client].believes = false,
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no invariant broken", |_, s: &State| s.violation.is_none()),
            Property::always("at most one client holds an unexpired lock", |_, s: &State| {
                s.clients.iter().filter(|c| c.believes && c.valid_until > s.now).count() <= 1
            }),
            Property::always("an unexpired believed lock is the row's current grant", |_, s: &State| {
                s.clients.iter().all(|c| {
                    !(c.believes && c.valid_until > s.now)
                        || s.row.is_some_and(|r| {
                            Some(r.lock_token) == c.secret.map(|x| x.0) && r.expires_at == c.valid_until
                        })
                })
            }),
            Property::always("the row holds the newest grant", |_, s: &State| {
                s.row.is_none_or(|r| r.lock_token == s.latest_secret && r.fencing_token == s.highest_fencing)
            }),
            // Guards against a vacuous model: these situations must be reachable.
            Property::sometimes("an expired lock is taken over", |_, s: &State| s.took_over),
            Property::sometimes("a heartbeat revives an expired lock", |_, s: &State| s.revived),
            Property::sometimes("a released lock is acquired again", |_, s: &State| s.reacquired_after_release),
            Property::sometimes("a replaced secret is refused", |_, s: &State| s.zombie_refused),
            Property::sometimes("a zombie and a holder both remember secrets", |_, s: &State| {
                s.clients.iter().filter(|c| c.secret.is_some()).count() >= 2 && s.clients.iter().any(|c| c.believes)
            }),
        ]
    }
}

#[test]
fn the_lock_state_machine_keeps_its_invariants_in_every_reachable_state() {
    let checker = Locks.checker().spawn_bfs().join();
    checker.assert_properties();
    let states = checker.unique_state_count();
    eprintln!("lock model check: {states} states explored, 0 violations");
    assert!(states > 10_000, "explored only {states} states");
}

/// A seeded bug is caught: a heartbeat that ignores the secret.
#[test]
fn a_heartbeat_that_ignores_the_secret_is_caught() {
    struct Buggy;
    impl Model for Buggy {
        type State = State;
        type Action = Action;
        fn init_states(&self) -> Vec<State> {
            Locks.init_states()
        }
        fn actions(&self, s: &State, a: &mut Vec<Action>) {
            Locks.actions(s, a)
        }
        fn next_state(&self, last: &State, action: Action) -> Option<State> {
            if let Action::Heartbeat { client } = action {
                // the bug: any client's heartbeat extends whatever row there is
                let mut s = last.clone();
                let (secret, _) = s.clients[client].secret.unwrap();
                if let Some(r) = s.row.as_mut() {
                    r.expires_at = s.now + r.ttl;
                    if secret != s.latest_secret {
                        s.violation = Some("a replaced secret heartbeat the lock".into());
                    }
                    s.clients[client].believes = true;
                    s.clients[client].valid_until = r.expires_at;
                    return Some(s);
                }
            }
            Locks.next_state(last, action)
        }
        fn properties(&self) -> Vec<Property<Self>> {
            vec![
                Property::always("no invariant broken", |_, s: &State| s.violation.is_none()),
                Property::always("at most one client holds an unexpired lock", |_, s: &State| {
                    s.clients.iter().filter(|c| c.believes && c.valid_until > s.now).count() <= 1
                }),
            ]
        }
    }
    let checker = Buggy.checker().spawn_bfs().join();
    assert!(checker.discovery("at most one client holds an unexpired lock").is_some());
    assert!(checker.discovery("no invariant broken").is_some());
}

/// `retry_backoff` for the settings' whole range (0 ..= i32::MAX ms, in microseconds) and
/// every attempt: never panics or overflows, equals base * 2^(attempt-1) capped at max
/// (computed exactly in i128), saturates at max, and is monotone in the attempt.
#[test]
fn retry_backoff_saturates_for_every_attempt_and_setting() {
    const MS: i64 = 1000;
    let top = i32::MAX as i64 * MS;
    let mut settings: Vec<i64> =
        vec![0, 1, MS, 10 * MS, 1_000 * MS, 3_600_000 * MS, 20 * 86_400_000 * MS, top - MS, top];
    // plus pseudo-random values spread over the range (log-uniform)
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bits = x % 42; // top < 2^41
        settings.push(((x >> 8) % (1u64 << bits).max(1)) as i64 % (top + 1) / MS * MS);
    }
    let mut attempts: Vec<i32> = (-3..=80).collect();
    attempts.extend([i32::MIN, i32::MIN + 1, 1000, 65_536, i32::MAX / 2, i32::MAX - 1, i32::MAX]);
    attempts.sort();
    let mut checked = 0u64;
    for &base in &settings {
        for &max in &settings {
            let mut previous = i64::MIN;
            for &attempt in &attempts {
                let got = std::panic::catch_unwind(|| retry_backoff(attempt, base, max))
                    .unwrap_or_else(|_| panic!("retry_backoff({attempt}, {base}, {max}) panicked"));
                let doublings = (attempt.max(1) - 1) as u32;
                let exact = if doublings >= 80 { i128::MAX } else { (base as i128) << doublings };
                let expected = if base == 0 { 0 } else { exact.min(max as i128) as i64 };
                assert_eq!(got, expected, "retry_backoff({attempt}, {base}, {max})");
                assert!(got <= max && got >= 0, "retry_backoff({attempt}, {base}, {max}) = {got}");
                assert!(got >= previous, "not monotone at attempt {attempt} ({base}, {max})");
                previous = got;
                checked += 1;
            }
            if base > 0 {
                assert_eq!(retry_backoff(i32::MAX, base, max), max, "never saturates ({base}, {max})");
            }
        }
    }
    eprintln!("retry_backoff: {checked} (attempt, base, max) combinations checked");
}
