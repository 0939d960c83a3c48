//! Live TTFT / gap / jitter figures for `/status`, computed in-process from the edge's own
//! Prometheus histograms: the bucket counts of now minus those of a snapshot about a minute old,
//! per (pool, backend), with the same linear interpolation as PromQL's `histogram_quantile`.

use crate::metrics::Metrics;
use prometheus::core::Collector;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back the live figures look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Snapshots are taken at most this often.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Cumulative bucket counts of one histogram series (summed over route and model).
#[derive(Clone, Debug, Default)]
struct Buckets {
    /// Upper bounds, ascending, without `+Inf`.
    bounds: Vec<f64>,
    /// Cumulative counts per bound.
    cum: Vec<u64>,
    /// All observations (the `+Inf` bucket).
    count: u64,
}

impl Buckets {
    fn add(&mut self, h: &prometheus::proto::Histogram) {
        let b = h.get_bucket();
        if self.bounds.is_empty() {
            self.bounds = b.iter().map(|b| b.upper_bound()).collect();
            self.cum = vec![0; self.bounds.len()];
        }
        for (i, b) in b.iter().enumerate().take(self.cum.len()) {
            self.cum[i] += b.cumulative_count();
        }
        self.count += h.get_sample_count();
    }

    /// `self - older`, saturating (a series never goes down, but be safe).
    fn minus(&self, older: Option<&Buckets>) -> Buckets {
        let Some(o) = older.filter(|o| o.cum.len() == self.cum.len()) else {
            return self.clone();
        };
        Buckets {
            bounds: self.bounds.clone(),
            cum: self
                .cum
                .iter()
                .zip(&o.cum)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(o.count),
        }
    }

    /// The `q` quantile (0..1) by linear interpolation inside the bucket, as
    /// `histogram_quantile` does; `None` without observations.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut prev_bound = 0.0;
        let mut prev_cum = 0u64;
        for (bound, cum) in self.bounds.iter().zip(&self.cum) {
            if *cum as f64 >= rank {
                let in_bucket = (*cum - prev_cum) as f64;
                if in_bucket <= 0.0 {
                    return Some(*bound);
                }
                return Some(
                    prev_bound + (bound - prev_bound) * (rank - prev_cum as f64) / in_bucket,
                );
            }
            prev_bound = *bound;
            prev_cum = *cum;
        }
        // Beyond the last finite bucket: report its bound, as histogram_quantile does.
        self.bounds.last().copied()
    }
}

/// Which histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Ttft,
    Gap,
    Jitter,
}

/// (kind, pool, backend); backend `""` is the pool's total, pool and backend `""` the edge's.
type Key = (Kind, String, String);

#[derive(Debug)]
struct Snapshot {
    at: Instant,
    series: HashMap<Key, Buckets>,
}

/// The figures shown for a pool or a backend. Times in seconds; `None` when nothing was seen in
/// the window.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Live {
    /// Seconds the figures cover (about [`WINDOW`]); `None`: everything since the edge started.
    pub window_seconds: Option<f64>,
    /// Streams that produced a first token in the window.
    pub streams: u64,
    /// Streams that produced a first token since the edge started.
    pub streams_total: u64,
    /// TTFT median.
    pub ttft_p50: Option<f64>,
    /// TTFT 95th percentile.
    pub ttft_p95: Option<f64>,
    /// Inter-token gap 95th percentile.
    pub gap_p95: Option<f64>,
    /// Inter-token gap 99th percentile.
    pub gap_p99: Option<f64>,
    /// Median over streams of each stream's gap standard deviation.
    pub jitter_p50: Option<f64>,
}

/// Keeps about a minute of histogram snapshots.
#[derive(Debug, Default)]
pub struct LiveFigures {
    ring: Mutex<VecDeque<Snapshot>>,
}

impl LiveFigures {
    /// Figures for every (pool, backend), every pool (backend `""`) and the whole edge
    /// (`("", "")`), now.
    pub fn compute(&self, metrics: &Metrics) -> HashMap<(String, String), Live> {
        let now = Instant::now();
        let cur = gather(metrics);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the newest snapshot that is at least WINDOW old, and everything after it.
        while ring
            .get(1)
            .is_some_and(|s| now.duration_since(s.at) >= WINDOW)
        {
            ring.pop_front();
        }
        // The base is a snapshot about WINDOW old; until there is one, the figures cover
        // everything since the edge started.
        let base = ring
            .front()
            .filter(|s| now.duration_since(s.at) >= WINDOW)
            .map(|s| (s.at, &s.series));
        let window = base.map(|(at, _)| now.duration_since(at).as_secs_f64());
        let mut out: HashMap<(String, String), Live> = HashMap::new();
        for ((kind, pool, backend), b) in &cur {
            let d = b.minus(base.and_then(|(_, s)| s.get(&(*kind, pool.clone(), backend.clone()))));
            let l = out.entry((pool.clone(), backend.clone())).or_default();
            l.window_seconds = window;
            match kind {
                Kind::Ttft => {
                    l.streams = d.count;
                    l.streams_total = b.count;
                    l.ttft_p50 = d.quantile(0.5);
                    l.ttft_p95 = d.quantile(0.95);
                }
                Kind::Gap => {
                    l.gap_p95 = d.quantile(0.95);
                    l.gap_p99 = d.quantile(0.99);
                }
                Kind::Jitter => l.jitter_p50 = d.quantile(0.5),
            }
        }
        if ring
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= SNAPSHOT_EVERY)
        {
            ring.push_back(Snapshot {
                at: now,
                series: cur,
            });
        }
        out
    }
}

fn gather(metrics: &Metrics) -> HashMap<Key, Buckets> {
    let mut out: HashMap<Key, Buckets> = HashMap::new();
    for (kind, vec) in [
        (Kind::Ttft, &metrics.ttft),
        (Kind::Gap, &metrics.inter_token),
        (Kind::Jitter, &metrics.jitter),
    ] {
        for family in vec.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map_or("", |l| l.value())
                        .to_owned()
                };
                let (pool, backend) = (label("pool"), label("backend"));
                let h = m.get_histogram();
                out.entry((kind, pool.clone(), backend)).or_default().add(h);
                out.entry((kind, pool, String::new())).or_default().add(h);
                out.entry((kind, String::new(), String::new()))
                    .or_default()
                    .add(h);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_promql() {
        let b = Buckets {
            bounds: vec![0.1, 0.2, 0.4],
            cum: vec![0, 50, 100],
            count: 100,
        };
        // rank 50 sits at the top of the (0.1, 0.2] bucket.
        assert_eq!(b.quantile(0.5), Some(0.2));
        // rank 95: 45 of 50 into (0.2, 0.4].
        let p95 = b.quantile(0.95).unwrap_or_default();
        assert!((p95 - 0.38).abs() < 1e-9, "{p95}");
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn figures_cover_everything_until_a_snapshot_is_a_window_old() {
        let m = Metrics::new();
        let labels = ["r", "p", "b", "m"];
        m.ttft.with_label_values(&labels).observe(5.0);
        let live = LiveFigures::default();
        let first = live.compute(&m);
        let p = &first[&("p".to_owned(), "b".to_owned())];
        assert_eq!((p.streams, p.streams_total), (1, 1));
        assert!(p.ttft_p50.is_some_and(|v| v > 2.0));
        assert!(first.contains_key(&("p".to_owned(), String::new())));
    }
}
