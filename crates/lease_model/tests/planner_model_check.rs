//! Exhaustive exploration of the planner (`lease_next_plan` for a job with a definition)
//! with stateright, for each misfire policy with and without grace: a runner calls the
//! planner, write the SKIPPED rows it decides, claim (the real claim state machine) and
//! finish or die mid-plan, while the clock ticks and the job is paused and resumed in every
//! order. In every reachable state: no slot is ever lost silently (every slot between the
//! first plan and the latest has a row), a SKIPPED slot is never claimed, a paused job is
//! offered nothing, and each policy offers only the slots it promises.
use std::collections::BTreeMap;

use lease_model::planner::*;
use lease_model::*;
use stateright::{Checker, Model, Property};

const EVERY: DbTime = 2;
const STALE_TIMEOUT: DbTime = 3;
const HORIZON: DbTime = 11;
/// One runner process at a time: a runner that died is replaced by a fresh one (the same
/// slot in `held`), which is what a takeover needs. Two runners race in model_check.rs.
const RUNNERS: usize = 1;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: DbTime,
    rows: BTreeMap<DbTime, Execution>,
    reasons: BTreeMap<DbTime, SkipReason>,
    held: [Option<(DbTime, u64)>; RUNNERS],
    paused: bool,
    /// One pause and one resume per run of the model (bounds the state space).
    pauses_left: u8,
    resumed_at: Option<DbTime>,
    violation: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Plan(usize),
    Finish(usize, bool),
    Die(usize),
    Pause,
    Resume,
    Tick,
}

struct Planner {
    misfire: Misfire,
    grace: Option<DbTime>,
}

impl Planner {
    fn policy(&self, s: &State) -> Policy {
        Policy { every: EVERY, misfire: self.misfire, grace: self.grace, paused: s.paused, resumed_at: s.resumed_at }
    }
}

fn latest(s: &State) -> Option<planner::LatestPlan> {
    s.rows.range(..=s.now).next_back().map(|(&plan_time, r)| planner::LatestPlan {
        plan_time,
        status: r.status,
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        next_retry_at: r.next_retry_at,
        stale_after: Some(r.stale_after),
    })
}

impl Model for Planner {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            now: 1,
            rows: BTreeMap::new(),
            reasons: BTreeMap::new(),
            held: [None; RUNNERS],
            paused: false,
            pauses_left: 1,
            resumed_at: None,
            violation: None,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.violation.is_some() {
            return;
        }
        for r in 0..RUNNERS {
            if s.held[r].is_none() {
                actions.push(Action::Plan(r));
            } else {
                actions.push(Action::Finish(r, true));
                actions.push(Action::Finish(r, false));
                actions.push(Action::Die(r));
            }
        }
        if s.paused {
            actions.push(Action::Resume);
        } else if s.pauses_left > 0 {
            actions.push(Action::Pause);
        }
        if s.now < HORIZON {
            actions.push(Action::Tick);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => s.now += 1,
            Action::Pause => {
                s.paused = true;
                s.pauses_left -= 1;
            }
            Action::Resume => {
                s.paused = false;
                s.resumed_at = Some(s.now);
            }
            Action::Die(r) => s.held[r] = None,
            Action::Finish(r, ok) => {
                let (plan, token) = s.held[r].take().unwrap();
                let status = if ok { Status::Success } else { Status::Failed };
                let mut row = s.rows.remove(&plan);
                finish(&mut row, token, s.now, status, 0);
                s.rows.insert(plan, row.unwrap());
            }
            Action::Plan(r) => {
                let before = latest(&s);
                let p = self.policy(&s);
                let d = decide(before.as_ref(), s.now, &p);
                let current = slot(EVERY, s.now);
                let fail = |why: &str| Some(format!("{why}: {d:?} at {} ({action:?})", s.now));
                let mut violation = None;
                if s.paused && d != Decision::default() {
                    violation = fail("a paused job was offered a plan or skipped slots");
                }
                for range in &d.skip {
                    if self.misfire == Misfire::All && range.reason == SkipReason::Misfire {
                        violation = fail("misfire all skipped a slot");
                    }
                    for t in range.slots(EVERY) {
                        if t > s.now {
                            violation = fail("skipped a slot in the future");
                        }
                        if s.rows.contains_key(&t) {
                            continue; // ON CONFLICT DO NOTHING
                        }
                        s.rows.insert(
                            t,
                            Execution {
                                status: Status::Skipped,
                                attempt: 1,
                                max_attempts: 1,
                                allow_stale_reentry: true,
                                stale_timeout: STALE_TIMEOUT,
                                stale_after: 0,
                                next_retry_at: None,
                                lease_token: 0,
                                fencing_token: 0,
                            },
                        );
                        s.reasons.insert(t, range.reason);
                    }
                }
                if let Some(plan) = d.run {
                    let new_slot = !last.rows.contains_key(&plan);
                    if plan > s.now {
                        violation = fail("offered a plan after now");
                    }
                    if s.rows.get(&plan).is_some_and(|r| r.status == Status::Skipped) {
                        violation = fail("offered a SKIPPED slot");
                    }
                    if new_slot {
                        let ok = match self.misfire {
                            Misfire::All => true,
                            Misfire::Latest => plan == current || plan == current - EVERY,
                            Misfire::Skip => plan == current,
                        };
                        if !ok {
                            violation = fail("offered a slot the policy does not run");
                        }
                        if self.grace.is_some_and(|g| plan < s.now - g) {
                            violation = fail("offered a slot older than now - grace");
                        }
                        if s.resumed_at.is_some_and(|r| plan < r) {
                            violation = fail("offered a slot due while paused");
                        }
                    }
                    let mut row = s.rows.remove(&plan);
                    let params =
                        ClaimParams { allow_stale_reentry: true, stale_timeout: STALE_TIMEOUT, max_attempts: 2 };
                    // Tokens only need to tell holders of one slot apart: (slot, attempt).
                    let token = (plan as u64) * 10 + row.as_ref().map_or(1, |r| r.attempt as u64 + 1);
                    let outcome = claim(&mut row, s.now, params, token, token as i64);
                    if let Some(row) = row {
                        s.rows.insert(plan, row);
                    }
                    if outcome != ClaimOutcome::Conflicted {
                        if s.reasons.contains_key(&plan) {
                            violation = fail("a SKIPPED slot was claimed");
                        }
                        s.held[r] = Some((plan, token));
                    }
                }
                s.violation = s.violation.or(violation);
            }
        }
        normalize(&mut s);
        // A SKIPPED row stays SKIPPED.
        for t in last.reasons.keys() {
            if s.rows.get(t).map(|r| r.status) != Some(Status::Skipped) {
                s.violation = Some(format!("the SKIPPED slot {t} changed"));
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no invariant broken", |_, s: &State| s.violation.is_none()),
            Property::always("no slot is lost silently", |_, s: &State| {
                let (Some(first), Some(last)) = (s.rows.keys().next(), s.rows.keys().next_back()) else { return true };
                (0..=(last - first) / EVERY).all(|i| s.rows.contains_key(&(first + i * EVERY)))
            }),
            Property::always("slots are aligned", |_, s: &State| s.rows.keys().all(|t| slot(EVERY, *t) == *t)),
            Property::sometimes("a slot is skipped as paused", |_, s: &State| {
                s.reasons.values().any(|r| *r == SkipReason::Paused)
            }),
            // Guards against a vacuous model: the skip each setting exists for must happen.
            Property::sometimes("the policy skips a missed slot (latest, skip)", |m: &Planner, s: &State| {
                m.misfire == Misfire::All || s.reasons.values().any(|r| *r == SkipReason::Misfire)
            }),
            Property::sometimes("grace skips a late slot", |m: &Planner, s: &State| {
                m.grace.is_none() || s.reasons.values().any(|r| *r == SkipReason::Grace)
            }),
            Property::sometimes("a runner died and its plan was taken over", |_, s: &State| {
                s.rows.values().any(|r| r.attempt == 2)
            }),
            Property::sometimes("three slots succeeded", |_, s: &State| {
                s.rows.values().filter(|r| r.status == Status::Success).count() >= 3
            }),
        ]
    }
}

/// The planner reads only the latest row; rows before it matter only by their status
/// (and attempt). Forgetting their times and tokens (unless a runner holds one) keeps the
/// state space small without hiding anything the planner or a claim could see.
fn normalize(s: &mut State) {
    let Some(&last) = s.rows.keys().next_back() else { return };
    let held: Vec<DbTime> = s.held.iter().flatten().map(|(p, _)| *p).collect();
    for (t, r) in s.rows.iter_mut() {
        if *t < last && !held.contains(t) {
            r.stale_after = 0;
            r.next_retry_at = None;
            r.lease_token = 0;
            r.fencing_token = 0;
        }
    }
}

fn check(misfire: Misfire, grace: Option<DbTime>) {
    let checker = Planner { misfire, grace }.checker().spawn_bfs().join();
    checker.assert_properties();
    let states = checker.unique_state_count();
    eprintln!("planner model check ({misfire:?}, grace {grace:?}): {states} states, 0 violations");
    assert!(states > 1_000, "explored only {states} states");
}

#[test]
fn misfire_all() {
    check(Misfire::All, None);
}

#[test]
fn misfire_latest() {
    check(Misfire::Latest, None);
}

#[test]
fn misfire_skip() {
    check(Misfire::Skip, None);
}

#[test]
fn misfire_all_with_grace() {
    check(Misfire::All, Some(5));
}

#[test]
fn misfire_latest_with_grace() {
    check(Misfire::Latest, Some(5));
}

#[test]
fn misfire_skip_with_grace() {
    check(Misfire::Skip, Some(5));
}
