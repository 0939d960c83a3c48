//! Prefix-affinity picks (`pools.<name>.pick: prefix_affinity`): requests whose prompts start
//! alike go to the backend that served that start before, so the engine's prefix cache (vLLM's
//! and SGLang's KV blocks, Ollama's slot) is reused instead of computed again on another replica.
//!
//! The pool remembers, per prompt block hash (`edge::prompt`: chained, so a block stands for the
//! whole prefix up to its end), which backends served it, as a bitmask over the first 64
//! backends. A pick walks the request's blocks and keeps the backends that served all of them so
//! far: the deepest survivors have the longest matching prefix. A prefix every backend served (a
//! system prompt shared by all conversations) leaves them all tied, and the tie goes to the least
//! loaded, so a common system prompt spreads instead of piling onto one replica.
//!
//! A match is followed only when it covers at least `min_match` of the prompt's blocks (as
//! SGLang's cache-aware router does): a new conversation whose only match is a short shared
//! system prompt is placed by load. A match that several backends share in full (a long common
//! preamble, a prompt sent again and again) goes to the least loaded backend, those holding it
//! first on a tie: a backend that lacks it pays one miss and then holds it too, instead of
//! being starved by the preamble.
//!
//! Load is bounded as in consistent hashing with bounded loads: a backend takes a request by
//! affinity only while its load (in-flight + the engine's queue) plus this request stays within
//! `ceil(load_factor × (total load + 1) / eligible backends) + load_slack` (the slack keeps one
//! extra stream from moving a conversation when loads are small; engines batch many sequences).
//! The least-loaded backend always fits, so a pick never fails for load. When the
//! best-matching backends are over it, the request goes to the least loaded of the fitting
//! backends that share a long enough prefix, or to the power-of-two-choices pick.
//!
//! The table is bounded (`entries`) by two generations: blocks are recorded in the young one;
//! when it fills, it becomes the old one and the former old one is dropped. A lookup reads both
//! and a hit moves the block to the young one, so a prefix in use stays. One short lock per
//! pick, never held across an await; the per-request work is one walk of at most
//! `bytes / block` blocks.

use super::select;
use super::Backend;
use crate::config::affinity::AffinitySettings;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;

/// How one pick went (`okome_prefix_affinity_picks_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A backend with the longest matching prefix took it.
    Hit,
    /// No backend served any block of the prompt: least loaded.
    Miss,
    /// The best-matching backends were over the load bound: least loaded of the others.
    Overloaded,
    /// The request has no whole block of prompt: least loaded.
    NoPrefix,
}

/// A pick: the backend, why, and how many blocks of the prompt it had served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Index of the backend in the pool.
    pub index: usize,
    /// How the pick went.
    pub outcome: Outcome,
    /// Leading blocks of the prompt the picked backend had served.
    pub matched: usize,
}

/// One pool's prefix table, settings and counters.
pub struct Affinity {
    /// The pool's settings.
    pub settings: AffinitySettings,
    table: Mutex<Table>,
    counters: Option<Counters>,
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity")
            .field("settings", &self.settings)
            .finish()
    }
}

/// The pool's series, resolved once.
struct Counters {
    hit: prometheus::IntCounter,
    miss: prometheus::IntCounter,
    overloaded: prometheus::IntCounter,
    none: prometheus::IntCounter,
    looked_up: prometheus::IntCounter,
    matched: prometheus::IntCounter,
}

/// Block hash → backends that served it, in two generations.
#[derive(Default)]
struct Table {
    young: HashMap<u64, u64>,
    old: HashMap<u64, u64>,
    /// Blocks the young generation holds before it turns old.
    generation: usize,
}

impl Table {
    fn served_by(&self, block: u64) -> u64 {
        self.young.get(&block).copied().unwrap_or(0) | self.old.get(&block).copied().unwrap_or(0)
    }

    fn record(&mut self, block: u64, bit: u64) {
        let before = self.old.remove(&block).unwrap_or(0);
        *self.young.entry(block).or_insert(0) |= before | bit;
        if self.young.len() >= self.generation {
            self.old = std::mem::take(&mut self.young);
        }
    }
}

/// The bit of backend `i` in a table mask (backends past the 64th are not remembered).
fn bit(i: usize) -> u64 {
    if i < 64 {
        1 << i
    } else {
        0
    }
}

impl Affinity {
    /// An empty table with `settings`.
    pub fn new(settings: AffinitySettings) -> Self {
        Affinity {
            settings,
            table: Mutex::new(Table {
                generation: (settings.entries / 2).max(1),
                ..Table::default()
            }),
            counters: None,
        }
    }

    /// Counts picks in `okome_prefix_affinity_*{pool=pool}`.
    pub fn counted(mut self, metrics: &crate::metrics::Metrics, pool: &str) -> Self {
        let p = |r: &str| metrics.affinity_picks.with_label_values(&[pool, r]);
        let b = |k: &str| metrics.affinity_bytes.with_label_values(&[pool, k]);
        self.counters = Some(Counters {
            hit: p("hit"),
            miss: p("miss"),
            overloaded: p("overloaded"),
            none: p("none"),
            looked_up: b("looked_up"),
            matched: b("matched"),
        });
        self
    }

    /// Picks a backend for a prompt whose blocks are `blocks`, among eligible backends not
    /// `skip`ped, and records the pick for those blocks. `None` when no backend can take it.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        blocks: &[u64],
        skip: impl Fn(usize) -> bool,
    ) -> Option<Picked> {
        let ok = |i: usize| backends[i].eligible() && !skip(i);
        let (mut eligible, mut count, mut total) = (0u64, 0u64, 0u64);
        for (i, b) in backends.iter().enumerate() {
            if ok(i) {
                eligible |= bit(i);
                count += 1;
                total += b.load();
            }
        }
        if count == 0 {
            return None;
        }
        if blocks.is_empty() {
            let index = select::pick(backends, &skip)?;
            return Some(self.counted_pick(Picked {
                index,
                outcome: Outcome::NoPrefix,
                matched: 0,
            }));
        }
        let bound = (self.settings.load_factor * (total + 1) as f64 / count as f64).ceil() as u64
            + self.settings.load_slack as u64;
        // Within the bound counting this request: load + 1 <= bound.
        let fits = |i: usize| backends[i].load() < bound;
        let mut fitting = 0u64;
        for i in 0..backends.len().min(64) {
            if eligible & bit(i) != 0 && fits(i) {
                fitting |= bit(i);
            }
        }
        // Walk the chain: `alive` are the eligible backends that served every block so far.
        let (mut deepest, mut deepest_set, mut best_fit, mut best_fit_set) = (0, 0u64, 0, 0u64);
        {
            let table = self.table.lock();
            let mut alive = eligible;
            for (d, &h) in blocks.iter().enumerate() {
                alive &= table.served_by(h);
                if alive == 0 {
                    break;
                }
                deepest = d + 1;
                deepest_set = alive;
                if alive & fitting != 0 {
                    best_fit = d + 1;
                    best_fit_set = alive & fitting;
                }
            }
        }
        // A match worth following covers a good share of the prompt: a short shared start (a
        // system prompt on some backends) must not outweigh load, or idle backends starve.
        let needed = ((self.settings.min_match * blocks.len() as f64).ceil() as usize).max(1);
        let picked = if deepest < needed {
            Picked {
                index: select::pick(backends, &skip)?,
                outcome: Outcome::Miss,
                matched: 0,
            }
        } else if best_fit == deepest && deepest_set.count_ones() > 1 {
            // The whole match is shared by several backends (a popular preamble, or a prompt
            // sent again and again): any backend gets it cached after one miss, so load decides
            // and a backend without it is not starved. Ties go to those that have it.
            let a = least_loaded(backends, best_fit_set)?;
            match least_loaded(backends, eligible) {
                Some(b) if backends[b].load() < backends[a].load() => Picked {
                    index: b,
                    outcome: Outcome::Miss,
                    matched: 0,
                },
                _ => Picked {
                    index: a,
                    outcome: Outcome::Hit,
                    matched: best_fit,
                },
            }
        } else if best_fit >= needed {
            Picked {
                index: least_loaded(backends, best_fit_set)?,
                outcome: if best_fit == deepest {
                    Outcome::Hit
                } else {
                    Outcome::Overloaded
                },
                matched: best_fit,
            }
        } else {
            // The backends with enough of the prompt are over the bound: the plain pick among
            // those within it (the least loaded always is, unless loads moved meanwhile).
            let index = select::pick(backends, |i| skip(i) || !fits(i))
                .or_else(|| select::pick(backends, &skip))?;
            Picked {
                index,
                outcome: Outcome::Overloaded,
                matched: 0,
            }
        };
        let b = bit(picked.index);
        if b != 0 {
            let mut table = self.table.lock();
            for &h in blocks {
                table.record(h, b);
            }
        }
        if let Some(c) = &self.counters {
            let block = self.settings.block as u64;
            c.looked_up.inc_by(blocks.len() as u64 * block);
            c.matched.inc_by(picked.matched as u64 * block);
        }
        Some(self.counted_pick(picked))
    }

    fn counted_pick(&self, p: Picked) -> Picked {
        if let Some(c) = &self.counters {
            match p.outcome {
                Outcome::Hit => c.hit.inc(),
                Outcome::Miss => c.miss.inc(),
                Outcome::Overloaded => c.overloaded.inc(),
                Outcome::NoPrefix => c.none.inc(),
            }
        }
        p
    }
}

/// The least loaded backend in `set` (a mask), a random one of those tied.
fn least_loaded(backends: &[Arc<Backend>], set: u64) -> Option<usize> {
    let members = || (0..backends.len().min(64)).filter(move |&i| set & bit(i) != 0);
    let min = members().map(|i| backends[i].load()).min()?;
    let tied = members().filter(|&i| backends[i].load() == min).count();
    let k = rand::rng().random_range(0..tied);
    members()
        .filter(|&i| backends[i].load() == min)
        .nth(k)
        .or_else(|| members().next())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pool(n: usize) -> Vec<Arc<Backend>> {
        crate::upstream::healthy_backends(n, 2000)
    }

    /// No slack: the bound bites at once, so spreading is exact.
    fn aff() -> Affinity {
        Affinity::new(AffinitySettings {
            entries: 1000,
            load_slack: 0,
            ..AffinitySettings::default()
        })
    }

    /// Blocks of a conversation: a shared system prompt (2 blocks), then its own turns.
    fn convo(c: u64, turns: u64) -> Vec<u64> {
        let mut v = vec![1, 2];
        v.extend((0..turns).map(|t| 1000 * (c + 1) + t));
        v
    }

    #[test]
    fn a_conversation_stays_and_conversations_spread() {
        let p = pool(4);
        let a = aff();
        let mut home = Vec::new();
        for c in 0..40 {
            // Each new conversation is held open (in flight) like a stream, so loads differ.
            let first = a.pick(&p, &convo(c, 1), |_| false).unwrap();
            home.push((first.index, p[first.index].acquire()));
        }
        let mut per = [0usize; 4];
        for (i, _) in &home {
            per[*i] += 1;
        }
        // The shared system prompt does not pull every conversation onto one backend.
        assert!(per.iter().all(|&n| n == 10), "{per:?}");
        let homes: Vec<usize> = home.iter().map(|(i, _)| *i).collect();
        drop(home);
        for turn in 2..5 {
            for c in 0..40u64 {
                let got = a.pick(&p, &convo(c, turn), |_| false).unwrap();
                assert_eq!(got.index, homes[c as usize], "conversation {c} moved");
                assert_eq!(got.outcome, Outcome::Hit);
                assert_eq!(got.matched, 2 + turn as usize - 1);
            }
        }
    }

    #[test]
    fn overload_unhealthy_and_retries_fall_back() {
        let p = pool(4);
        let a = aff();
        let first = a.pick(&p, &convo(7, 1), |_| false).unwrap();
        assert_eq!(first.outcome, Outcome::Miss);
        let home = first.index;
        // Its backend is far above the mean: the next turn goes elsewhere, counted.
        let _held: Vec<_> = (0..8).map(|_| p[home].acquire()).collect();
        let moved = a.pick(&p, &convo(7, 2), |_| false).unwrap();
        assert_ne!(moved.index, home);
        assert_eq!(moved.outcome, Outcome::Overloaded);
        drop(_held);
        // A retry that excludes the home backend, or the home backend going down, moves it too
        // (to the one that served the prefix meanwhile: it holds the turn-1 blocks as well).
        let retry = a.pick(&p, &convo(7, 2), |i| i == home).unwrap();
        assert_ne!(retry.index, home);
        p[home].probe_result(false, 1, 1, "down");
        let down = a.pick(&p, &convo(7, 3), |_| false).unwrap();
        assert_ne!(down.index, home);
        assert_eq!(a.pick(&p, &convo(7, 3), |_| true), None);
        // No prefix at all: a plain pick.
        assert_eq!(
            a.pick(&p, &[], |_| false).unwrap().outcome,
            Outcome::NoPrefix
        );
    }

    #[test]
    fn a_short_shared_start_does_not_outweigh_load() {
        let p = pool(4);
        let a = Affinity::new(AffinitySettings::default());
        // Backend of the first conversation: it alone served the shared first block.
        let first = a.pick(&p, &[1, 10, 11, 12], |_| false).unwrap().index;
        let _busy = p[first].acquire();
        for c in 0..20u64 {
            // One block of four in common: below min_match, so least loaded, never `first`.
            let got = a
                .pick(&p, &[1, 100 + c, 200 + c, 300 + c], |_| false)
                .unwrap();
            assert_eq!(got.outcome, Outcome::Miss);
            assert_ne!(got.index, first);
        }
        // Two of four is enough (and `first` is within the bound thanks to the slack).
        let got = a.pick(&p, &[1, 10, 500, 501], |_| false).unwrap();
        assert_eq!(
            (got.index, got.outcome, got.matched),
            (first, Outcome::Hit, 2)
        );
    }

    #[test]
    fn a_long_shared_preamble_does_not_starve_a_backend() {
        let p = pool(4);
        let a = aff();
        // Backends 0-2 served a long preamble (4 blocks); backend 3 never did.
        for i in 0..3 {
            a.pick(&p, &[1, 2, 3, 4, 50 + i as u64], |b| b != i)
                .unwrap();
        }
        let _busy: Vec<_> = (0..3).map(|i| p[i].acquire()).collect();
        let got = a.pick(&p, &[1, 2, 3, 4, 99], |_| false).unwrap();
        assert_eq!((got.index, got.outcome), (3, Outcome::Miss));
        // Once it holds the preamble too, equal loads go to any holder.
        let _also = p[3].acquire();
        let got = a.pick(&p, &[1, 2, 3, 4, 98], |_| false).unwrap();
        assert_eq!(got.outcome, Outcome::Hit);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_what_is_in_use() {
        let p = pool(2);
        let a = Affinity::new(AffinitySettings {
            entries: 100,
            ..AffinitySettings::default()
        });
        let hot = convo(0, 3);
        let home = a.pick(&p, &hot, |_| false).unwrap().index;
        for c in 1..500 {
            a.pick(&p, &convo(c, 3), |_| false).unwrap();
            if c % 10 == 0 {
                assert_eq!(a.pick(&p, &hot, |_| false).unwrap().index, home);
            }
            let t = a.table.lock();
            assert!(t.young.len() + t.old.len() <= 100);
        }
    }
}
