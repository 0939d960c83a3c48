//! Decision logic: signals in, `ok | pressured | shedding | down` out, with hysteresis.
//!
//! Pure and clock-free: the caller passes `now`, so tests drive it with a synthetic clock.
//!
//! - A worse state is entered at once when a signal reaches its threshold (a backend about to
//!   run out must shed now, not in `min_hold`).
//! - A better state is entered only when every signal that holds the current state has dropped
//!   below threshold × `leave_ratio` *and* the state has been held `min_hold`: a signal
//!   oscillating around a threshold does not flap the state.
//! - `down` follows health alone: `down_after` consecutive failed probes enter it, the first
//!   good probe leaves it (to whatever the other signals say).

use super::config::{Rules, Thresholds};
use super::model::BackendState;
use std::time::{Duration, Instant};

/// Which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Waiting requests.
    QueueDepth,
    /// KV-cache use.
    KvCache,
    /// GPU free memory under the reserve.
    GpuHeadroom,
    /// Engine memory over its budget.
    OverBudget,
    /// Health probes.
    Health,
    /// Nothing is wrong.
    None,
}

impl Rule {
    /// Name as in `/v1/state` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::QueueDepth => "queue_depth",
            Rule::KvCache => "kv_cache",
            Rule::GpuHeadroom => "gpu_headroom",
            Rule::OverBudget => "over_budget",
            Rule::Health => "health",
            Rule::None => "none",
        }
    }

    fn thresholds(self, r: &Rules) -> Option<Thresholds> {
        let t = match self {
            Rule::QueueDepth => r.queue_depth,
            Rule::KvCache => r.kv_cache,
            Rule::GpuHeadroom => r.gpu_headroom,
            Rule::OverBudget => r.over_budget,
            Rule::Health | Rule::None => return None,
        };
        t.enabled.then_some(t)
    }
}

/// One measured signal (higher is worse).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    /// The rule it feeds.
    pub rule: Rule,
    /// Its value in the rule's unit (requests, fraction, ratio).
    pub value: f64,
}

/// What one probe round saw of a backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Whether the health probe succeeded.
    pub healthy: bool,
    /// Why it failed, when it did.
    pub health_error: String,
    /// The signals available this round (missing ones are simply absent).
    pub signals: Vec<Signal>,
}

/// The decision after one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The state.
    pub state: BackendState,
    /// The rule that holds it (`None` when ok).
    pub rule: Rule,
    /// Why, with numbers.
    pub reason: String,
    /// True when the state changed this round.
    pub changed: bool,
}

/// Per-backend decision state across rounds.
#[derive(Debug, Clone)]
pub struct Decider {
    rules: Rules,
    state: BackendState,
    rule: Rule,
    since: Instant,
    fails: u32,
}

fn level(s: BackendState) -> u8 {
    s.level() as u8
}

fn from_level(l: u8) -> BackendState {
    match l {
        0 => BackendState::Ok,
        1 => BackendState::Pressured,
        2 => BackendState::Shedding,
        _ => BackendState::Down,
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// The (level, rule, text) a set of signals reaches, scaling every threshold by `scale`.
fn reach(
    rules: &Rules,
    signals: &[Signal],
    scale: impl Fn(Rule) -> f64,
    cap: u8,
) -> (u8, Rule, String) {
    let mut best: (u8, f64, Rule, String) = (0, 0.0, Rule::None, "ok".into());
    for s in signals {
        let Some(t) = s.rule.thresholds(rules) else {
            continue;
        };
        let k = scale(s.rule);
        for (lvl, thr) in [(2u8, t.shedding), (1u8, t.pressured)] {
            let Some(thr) = thr else { continue };
            if lvl > cap {
                continue;
            }
            let thr = thr * k;
            if s.value >= thr {
                // Among rules at the same level, the one furthest past its threshold explains it.
                let over = if thr > 0.0 {
                    s.value / thr
                } else {
                    f64::INFINITY
                };
                if lvl > best.0 || (lvl == best.0 && over > best.1) {
                    best = (
                        lvl,
                        over,
                        s.rule,
                        format!(
                            "{} {} >= {}",
                            s.rule.as_str(),
                            fmt_num(s.value),
                            fmt_num(thr)
                        ),
                    );
                }
                break;
            }
        }
    }
    (best.0, best.2, best.3)
}

impl Decider {
    /// Starts `ok` at `now`.
    pub fn new(rules: Rules, now: Instant) -> Decider {
        Decider {
            rules,
            state: BackendState::Ok,
            rule: Rule::None,
            since: now,
            fails: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    fn leave_ratio(&self, r: Rule) -> f64 {
        r.thresholds(&self.rules)
            .and_then(|t| t.leave_ratio)
            .unwrap_or(self.rules.hysteresis.leave_ratio)
    }

    fn go(&mut self, now: Instant, state: BackendState, rule: Rule, reason: String) -> Decision {
        let changed = state != self.state;
        if changed {
            self.since = now;
        }
        self.state = state;
        self.rule = rule;
        Decision {
            state,
            rule,
            reason,
            changed,
        }
    }

    /// Feeds one round's inputs observed at `now`; returns the decision.
    pub fn update(&mut self, now: Instant, input: &Inputs) -> Decision {
        if input.healthy {
            self.fails = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
        }
        if self.fails >= self.rules.down_after.max(1) {
            let why = format!(
                "health: {} failed probes: {}",
                self.fails, input.health_error
            );
            return self.go(now, BackendState::Down, Rule::Health, why);
        }
        let (enter, enter_rule, enter_why) = reach(&self.rules, &input.signals, |_| 1.0, 2);
        let cur = level(self.state);
        if self.state == BackendState::Down || enter > cur {
            // Worse states are entered at once; a recovered engine leaves `down` at once.
            return self.go(now, from_level(enter), enter_rule, enter_why);
        }
        // Which level do the signals still hold with the leave thresholds?
        let (stay, stay_rule, stay_why) =
            reach(&self.rules, &input.signals, |r| self.leave_ratio(r), cur);
        if stay >= cur {
            // Still held: by the entering rule if it is at this level, else by the band.
            let (rule, why) = if enter == cur {
                (enter_rule, enter_why)
            } else {
                (stay_rule, format!("{stay_why} (leave threshold)"))
            };
            return self.go(now, self.state, rule, why);
        }
        let held = now.saturating_duration_since(self.since);
        let min_hold: Duration = self.rules.hysteresis.min_hold.0;
        if held < min_hold {
            let why = format!(
                "{} held {:.1}s of min_hold {:.1}s",
                self.rule.as_str(),
                held.as_secs_f64(),
                min_hold.as_secs_f64()
            );
            let rule = self.rule;
            return self.go(now, self.state, rule, why);
        }
        let target = stay.max(enter);
        let (rule, why) = if target == 0 {
            (Rule::None, "ok".to_string())
        } else if enter == target {
            (enter_rule, enter_why)
        } else {
            (stay_rule, format!("{stay_why} (leave threshold)"))
        };
        self.go(now, from_level(target), rule, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use okome_core::config::Dur;

    fn q(v: f64) -> Inputs {
        Inputs {
            healthy: true,
            health_error: String::new(),
            signals: vec![Signal {
                rule: Rule::QueueDepth,
                value: v,
            }],
        }
    }

    fn rules() -> Rules {
        let mut r = Rules::default();
        r.hysteresis.min_hold = Dur(Duration::from_secs(3));
        r
    }

    #[test]
    fn enters_worse_states_at_once() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        assert_eq!(d.update(t0, &q(8.0)).state, BackendState::Pressured);
        let x = d.update(t0, &q(40.0));
        assert_eq!(x.state, BackendState::Shedding);
        assert_eq!(x.rule, Rule::QueueDepth);
        assert!(x.reason.contains("40 >= 32"), "{}", x.reason);
    }

    #[test]
    fn oscillation_around_threshold_does_not_flap() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        let mut changes = 0;
        for i in 0..200u64 {
            let now = t0 + Duration::from_millis(100 * i);
            let v = if i % 2 == 0 { 33.0 } else { 30.0 }; // around shedding = 32
            if d.update(now, &q(v)).changed {
                changes += 1;
            }
        }
        assert_eq!(changes, 1, "entered shedding once and stayed");
        assert_eq!(d.state(), BackendState::Shedding);
    }

    #[test]
    fn min_hold_is_respected() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        d.update(t0, &q(50.0));
        // Far below every threshold, but held only 2.9 s.
        let x = d.update(t0 + Duration::from_millis(2900), &q(0.0));
        assert_eq!(x.state, BackendState::Shedding);
        assert!(x.reason.contains("min_hold"), "{}", x.reason);
        let x = d.update(t0 + Duration::from_millis(3000), &q(0.0));
        assert_eq!(x.state, BackendState::Ok);
        assert_eq!(x.rule, Rule::None);
        assert!(x.changed);
    }

    #[test]
    fn leaves_only_below_the_leave_threshold() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        d.update(t0, &q(40.0));
        let later = t0 + Duration::from_secs(10);
        // 26 is below 32 but above 32 × 0.8 = 25.6: stays shedding however long.
        let x = d.update(later, &q(26.0));
        assert_eq!(x.state, BackendState::Shedding);
        assert!(x.reason.contains("leave threshold"), "{}", x.reason);
        // 25 is below 25.6 for shedding, above 8 for pressured: steps down to pressured.
        let x = d.update(later, &q(25.0));
        assert_eq!(x.state, BackendState::Pressured);
        // Pressured also holds min_hold, then leaves below 8 × 0.8 = 6.4.
        let later2 = later + Duration::from_secs(4);
        assert_eq!(d.update(later2, &q(7.0)).state, BackendState::Pressured);
        assert_eq!(d.update(later2, &q(6.0)).state, BackendState::Ok);
    }

    #[test]
    fn down_after_consecutive_failures_and_back() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        let bad = Inputs {
            healthy: false,
            health_error: "connection refused".into(),
            signals: vec![],
        };
        assert_eq!(
            d.update(t0, &bad).state,
            BackendState::Ok,
            "one failure is noise"
        );
        let x = d.update(t0, &bad);
        assert_eq!(x.state, BackendState::Down);
        assert_eq!(x.rule, Rule::Health);
        assert!(x.reason.contains("connection refused"));
        // Recovers at once, to whatever the signals say.
        assert_eq!(d.update(t0, &q(50.0)).state, BackendState::Shedding);
    }

    #[test]
    fn memory_rules_use_their_own_leave_ratio() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        let mem = |v| Inputs {
            healthy: true,
            health_error: String::new(),
            signals: vec![Signal {
                rule: Rule::OverBudget,
                value: v,
            }],
        };
        assert_eq!(d.update(t0, &mem(1.1)).state, BackendState::Shedding);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(d.update(later, &mem(0.98)).state, BackendState::Shedding);
        let x = d.update(later, &mem(0.96));
        assert_eq!(x.state, BackendState::Ok);
    }

    #[test]
    fn worst_rule_explains_the_state() {
        let t0 = Instant::now();
        let mut d = Decider::new(rules(), t0);
        let x = d.update(
            t0,
            &Inputs {
                healthy: true,
                health_error: String::new(),
                signals: vec![
                    Signal {
                        rule: Rule::QueueDepth,
                        value: 10.0,
                    },
                    Signal {
                        rule: Rule::KvCache,
                        value: 0.97,
                    },
                ],
            },
        );
        assert_eq!(x.state, BackendState::Shedding);
        assert_eq!(x.rule, Rule::KvCache);
    }
}
