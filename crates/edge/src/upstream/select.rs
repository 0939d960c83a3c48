//! Backend selection: power of two choices over eligible backends, by in-flight + queue depth.
//!
//! Two random candidates, keep the less loaded: nearly as good as scanning for the least loaded,
//! and it avoids every edge herding onto the same "least loaded" backend at once.

use super::Backend;
use rand::Rng;
use std::sync::Arc;

/// Whether any backend is eligible and not excluded: a deterministic check, no pick.
pub fn any(backends: &[Arc<Backend>], excluded: impl Fn(usize) -> bool) -> bool {
    (0..backends.len()).any(|i| backends[i].eligible() && !excluded(i))
}

/// Picks a backend index from `backends`, skipping ineligible ones and those `tried`.
/// Allocation-free: candidates are found by counting, not collected.
pub fn pick(backends: &[Arc<Backend>], tried: impl Fn(usize) -> bool) -> Option<usize> {
    let ok = |i: usize| backends[i].eligible() && !tried(i);
    let n = (0..backends.len()).filter(|&i| ok(i)).count();
    let nth = |k: usize| (0..backends.len()).filter(|&i| ok(i)).nth(k);
    match n {
        0 => None,
        1 => nth(0),
        _ => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if backends[b].load() < backends[a].load() {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Arc<Backend>> {
        crate::upstream::healthy_backends(n, 1000)
    }

    #[test]
    fn skips_unhealthy_and_tried() {
        let p = pool(3);
        p[0].probe_result(false, 1, 1, "down");
        for _ in 0..50 {
            assert_eq!(pick(&p, |i| i == 1), Some(2));
        }
        assert_eq!(pick(&p, |i| i != 0), None);
    }

    #[test]
    fn prefers_the_less_loaded() {
        let p = pool(2);
        let _held: Vec<_> = (0..5).map(|_| p[0].acquire()).collect();
        for _ in 0..50 {
            assert_eq!(pick(&p, |_| false), Some(1));
        }
        p[1].set_queue_depth(10);
        for _ in 0..50 {
            assert_eq!(pick(&p, |_| false), Some(0));
        }
    }

    #[test]
    fn spreads_over_equal_backends() {
        let p = pool(4);
        let mut seen = [0u32; 4];
        for _ in 0..400 {
            if let Some(i) = pick(&p, |_| false) {
                seen[i] += 1;
            }
        }
        assert!(
            seen.iter().all(|&c| c > 0),
            "every backend gets traffic: {seen:?}"
        );
    }
}
