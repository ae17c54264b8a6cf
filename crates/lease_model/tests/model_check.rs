//! Exhaustive exploration of the lease state machine with stateright: three runners and
//! the sweeper act on one plan in every order, with database time as an explicit input
//! that advances in steps. The same invariants as the torture checker must hold in every
//! reachable state.
use lease_model::*;
use stateright::{Checker, Model, Property};

const RUNNERS: usize = 3;
const STALE_TIMEOUT: DbTime = 2;
const MAX_ATTEMPTS: i32 = 3;
const RETRY_DELAY: DbTime = 1;
const HORIZON: DbTime = 6;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    row: Option<Execution>,
    now: DbTime,
    next_token: u64,
    next_fencing: i64,
    /// What each runner believes it holds: (lease token, fencing token).
    held: [Option<(u64, i64)>; RUNNERS],
    highest_grant: i64,
    violation: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Claim { runner: usize, reentry: bool },
    Heartbeat { runner: usize },
    Finish { runner: usize, success: bool },
    Sweep,
    Tick,
}

struct Lease;

impl Model for Lease {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            row: None,
            now: 0,
            next_token: 1,
            next_fencing: 1,
            held: [None; RUNNERS],
            highest_grant: 0,
            violation: None,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.violation.is_some() {
            return;
        }
        for runner in 0..RUNNERS {
            if s.held[runner].is_none() {
                actions.push(Action::Claim { runner, reentry: true });
                actions.push(Action::Claim { runner, reentry: false });
            } else {
                actions.push(Action::Heartbeat { runner });
                actions.push(Action::Finish { runner, success: true });
                actions.push(Action::Finish { runner, success: false });
            }
        }
        actions.push(Action::Sweep);
        if s.now < HORIZON {
            actions.push(Action::Tick);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let before = s.row.clone();
        match action {
            Action::Tick => s.now += 1,
            Action::Claim { runner, reentry } => {
                let params = ClaimParams {
                    allow_stale_reentry: reentry,
                    stale_timeout: STALE_TIMEOUT,
                    max_attempts: MAX_ATTEMPTS,
                };
                let (token, fencing) = (s.next_token, s.next_fencing);
                match claim(&mut s.row, s.now, params, token, fencing) {
                    ClaimOutcome::Conflicted => {
                        if s.row != before {
                            s.violation = Some("a conflicted claim changed the row".into());
                        }
                    }
                    outcome => {
                        s.next_token += 1;
                        s.next_fencing += 1;
                        let r = s.row.as_ref().unwrap();
                        if fencing <= s.highest_grant {
                            s.violation = Some("fencing token did not increase".into());
                        }
                        let expected_attempt =
                            if outcome == ClaimOutcome::Won { 1 } else { before.as_ref().unwrap().attempt + 1 };
                        if r.attempt != expected_attempt || r.attempt > r.max_attempts {
                            s.violation = Some(format!("attempt {} after {outcome:?}", r.attempt));
                        }
                        if before.as_ref().is_some_and(|b| b.status == Status::Success) {
                            s.violation = Some("a SUCCESS run was claimed again".into());
                        }
                        s.highest_grant = fencing;
                        s.held[runner] = Some((token, fencing));
                    }
                }
            }
            Action::Heartbeat { runner } => {
                let (token, fencing) = s.held[runner].unwrap();
                if heartbeat(&mut s.row, token, s.now) {
                    if fencing != s.highest_grant {
                        s.violation = Some("an old holder extended a lease after a newer grant".into());
                    }
                } else {
                    s.held[runner] = None; // lost: the runner stops
                }
            }
            Action::Finish { runner, success } => {
                let (token, fencing) = s.held.get_mut(runner).unwrap().take().unwrap();
                let status = if success { Status::Success } else { Status::Failed };
                if finish(&mut s.row, token, s.now, status, RETRY_DELAY) && fencing != s.highest_grant {
                    s.violation = Some("an old holder finished after a newer grant".into());
                }
            }
            Action::Sweep => {
                sweep(&mut s.row, s.now, RETRY_DELAY);
                if s.row.as_ref().is_some_and(|r| is_abandoned(&r.lease(), s.now)) {
                    s.violation = Some("the sweep left an abandoned lease RUNNING".into());
                }
            }
        }
        if before.as_ref().is_some_and(|b| b.status == Status::Success) && s.row != before {
            s.violation = Some("a SUCCESS row changed".into());
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no invariant broken", |_, s: &State| s.violation.is_none()),
            Property::always("at most one runner holds the current lease", |_, s: &State| {
                let current = s.row.as_ref().filter(|r| r.status == Status::Running).map(|r| r.lease_token);
                s.held.iter().filter(|h| h.map(|(t, _)| Some(t)) == Some(current)).count() <= 1
            }),
            Property::always("attempts within max_attempts", |_, s: &State| {
                s.row.as_ref().is_none_or(|r| r.attempt <= r.max_attempts)
            }),
            // Guards against a vacuous model: these situations must be reachable.
            Property::sometimes("a stale lease is stolen", |_, s: &State| {
                s.row.as_ref().is_some_and(|r| r.status == Status::Running && r.attempt >= 2)
            }),
            Property::sometimes("attempts are exhausted", |_, s: &State| {
                s.row.as_ref().is_some_and(|r| r.status == Status::Failed && r.attempt == r.max_attempts)
            }),
            Property::sometimes("an old holder is still running when a new one holds", |_, s: &State| {
                s.held.iter().flatten().count() >= 2
            }),
        ]
    }
}

#[test]
fn the_lease_state_machine_keeps_its_invariants_in_every_reachable_state() {
    let checker = Lease.checker().spawn_bfs().join();
    checker.assert_properties();
    let states = checker.unique_state_count();
    eprintln!("model check: {states} states explored, 0 violations");
    assert!(states > 1_000, "explored only {states} states");
}
