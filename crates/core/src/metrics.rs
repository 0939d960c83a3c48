//! What every component's Prometheus registry shares: SLO-dense buckets, the process
//! collector, the text exposition.

use prometheus::{Encoder, Registry, TextEncoder};

/// Bucket boundaries dense where SLOs live and coarse outside: 24 per decade (each bound ~10 %
/// above the last, so a quantile interpolated inside a bucket is off by a few percent, ≤ 10 %)
/// from `dense_lo` to `dense_hi`, then the `tail` bounds. Rounded to three significant digits so
/// the `le` labels read well.
pub fn slo_buckets(head: &[f64], dense_lo: f64, dense_hi: f64, tail: &[f64]) -> Vec<f64> {
    const PER_DECADE: f64 = 24.0;
    let mut out: Vec<f64> = head.to_vec();
    let first = (dense_lo.log10() * PER_DECADE).round() as i32;
    let last = (dense_hi.log10() * PER_DECADE).round() as i32;
    for k in first..=last {
        let v = 10f64.powf(f64::from(k) / PER_DECADE);
        let digits = 2 - v.log10().floor() as i32;
        let scale = 10f64.powi(digits);
        out.push((v * scale).round() / scale);
    }
    out.extend_from_slice(tail);
    out.dedup_by(|a, b| (*a - *b).abs() <= f64::EPSILON * b.abs());
    out
}

/// Adds the process collector (CPU seconds, resident and virtual memory, open and max fds,
/// threads, start time) to `registry`; every okome component exports it.
pub fn register_process_metrics(registry: &Registry) {
    let pc = prometheus::process_collector::ProcessCollector::for_self();
    // Fails only if registered twice on one registry; each component registers it once.
    if let Err(e) = registry.register(Box::new(pc)) {
        log::debug!("process metrics not registered: {e}");
    }
}

/// Prometheus text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    buf
}
