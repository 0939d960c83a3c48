//! The metric series every request updates (`okome_requests_total`, `okome_request_duration_seconds`,
//! `okome_response_bytes_total`), resolved once per label combination and config generation:
//! `with_label_values` hashes every label and looks the series up under a lock on each call,
//! which was a measurable share of a small request's cost (`benchmarks/instructions.sh`).
//!
//! A series is still created on its first use, as before, so `/metrics` shows the same series.

use crate::metrics::Metrics;
use prometheus::{Histogram, IntCounter};
use std::sync::OnceLock;

/// Values of the `status` label of `okome_requests_total`: the statuses the edge itself answers
/// with, and classes for the rest.
const STATUS: [&str; 17] = [
    "0", "200", "400", "401", "403", "404", "411", "413", "429", "500", "502", "503", "504", "2xx",
    "3xx", "4xx", "5xx",
];

/// Values of the `status` label of `okome_request_duration_seconds`.
const CLASS: [&str; 6] = ["0", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS`] of a status.
fn status_slot(s: u16) -> usize {
    match s {
        0 => 0,
        200 => 1,
        400 => 2,
        401 => 3,
        403 => 4,
        404 => 5,
        411 => 6,
        413 => 7,
        429 => 8,
        500 => 9,
        502 => 10,
        503 => 11,
        504 => 12,
        s if s < 300 => 13,
        s if s < 400 => 14,
        s if s < 500 => 15,
        _ => 16,
    }
}

/// Index into [`CLASS`] of a status; `0` when no status was written (the client left first).
fn class_slot(s: u16) -> usize {
    match s {
        100..=199 => 1,
        200..=299 => 2,
        300..=399 => 3,
        400..=499 => 4,
        500..=599 => 5,
        _ => 0,
    }
}

/// One config generation's per-request series, by (route, pool, status) slot; the last route
/// slot is "no route", the last pool slot "no pool".
pub struct RequestSeries {
    routes: usize,
    pools: usize,
    requests: Box<[OnceLock<IntCounter>]>,
    duration: Box<[OnceLock<Histogram>]>,
    response_bytes: Box<[OnceLock<IntCounter>]>,
}

impl std::fmt::Debug for RequestSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSeries")
            .field("routes", &self.routes)
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

fn slots<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// A request's place in the series: its route and pool (`None`: none), by index and name.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// Route index and name.
    pub route: (Option<usize>, &'a str),
    /// Pool index and name.
    pub pool: (Option<usize>, &'a str),
}

impl RequestSeries {
    /// Empty slots for `routes` routes and `pools` pools.
    pub fn new(routes: usize, pools: usize) -> Self {
        let (r, p) = (routes + 1, pools + 1);
        RequestSeries {
            routes,
            pools,
            requests: slots(r * STATUS.len()),
            duration: slots(r * p * CLASS.len()),
            response_bytes: slots(r * p),
        }
    }

    fn route_slot(&self, l: &Labels<'_>) -> usize {
        l.route
            .0
            .filter(|&r| r < self.routes)
            .unwrap_or(self.routes)
    }

    fn pool_slot(&self, l: &Labels<'_>) -> usize {
        l.pool.0.filter(|&p| p < self.pools).unwrap_or(self.pools)
    }

    /// `okome_requests_total{route, status}`.
    pub fn requests(&self, m: &Metrics, l: &Labels<'_>, status: u16) -> &IntCounter {
        let s = status_slot(status);
        self.requests[self.route_slot(l) * STATUS.len() + s]
            .get_or_init(|| m.requests.with_label_values(&[l.route.1, STATUS[s]]))
    }

    /// `okome_request_duration_seconds{route, pool, status}` (status class).
    pub fn duration(&self, m: &Metrics, l: &Labels<'_>, status: u16) -> &Histogram {
        let c = class_slot(status);
        let rp = self.route_slot(l) * (self.pools + 1) + self.pool_slot(l);
        self.duration[rp * CLASS.len() + c].get_or_init(|| {
            m.request_duration
                .with_label_values(&[l.route.1, l.pool.1, CLASS[c]])
        })
    }

    /// `okome_response_bytes_total{route, pool}`.
    pub fn response_bytes(&self, m: &Metrics, l: &Labels<'_>) -> &IntCounter {
        let rp = self.route_slot(l) * (self.pools + 1) + self.pool_slot(l);
        self.response_bytes[rp]
            .get_or_init(|| m.response_bytes.with_label_values(&[l.route.1, l.pool.1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_slots_agree() {
        let label = |s: u16| STATUS[status_slot(s)];
        let class = |s: u16| CLASS[class_slot(s)];
        for s in [
            200u16, 400, 401, 403, 404, 411, 413, 429, 500, 502, 503, 504,
        ] {
            assert_eq!(label(s), s.to_string());
        }
        assert_eq!(
            [label(0), label(204), label(301), label(418), label(599)],
            ["0", "2xx", "3xx", "4xx", "5xx"]
        );
        assert_eq!(
            [
                class(0),
                class(101),
                class(204),
                class(301),
                class(418),
                class(503),
                class(600)
            ],
            ["0", "1xx", "2xx", "3xx", "4xx", "5xx", "0"]
        );
    }

    #[test]
    fn a_cached_series_is_the_registered_one() {
        let m = Metrics::new();
        let series = RequestSeries::new(2, 1);
        let l = Labels {
            route: (Some(1), "chat"),
            pool: (Some(0), "vllm"),
        };
        series.requests(&m, &l, 200).inc();
        series.requests(&m, &l, 200).inc();
        series.response_bytes(&m, &l).inc_by(7);
        series.duration(&m, &l, 200).observe(0.5);
        let none = Labels {
            route: (None, "none"),
            pool: (None, ""),
        };
        series.requests(&m, &none, 404).inc();
        assert_eq!(m.requests.with_label_values(&["chat", "200"]).get(), 2);
        assert_eq!(m.requests.with_label_values(&["none", "404"]).get(), 1);
        assert_eq!(
            m.response_bytes.with_label_values(&["chat", "vllm"]).get(),
            7
        );
        let h = m
            .request_duration
            .with_label_values(&["chat", "vllm", "2xx"]);
        assert_eq!(h.get_sample_count(), 1);
    }
}
