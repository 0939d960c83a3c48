//! The Prometheus text format, as far as okome reads it: sample lines of vLLM's and TF
//! Serving's `/metrics`, summed over label sets.

/// `(name, value)` of each sample line of a Prometheus text page.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter_map(|l| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let name_end = l.find(['{', ' '])?;
        let name = &l[..name_end];
        // The value follows the label set (whose quoted values may hold spaces and braces).
        let after = if l.as_bytes()[name_end] == b'{' {
            &l[name_end + labels_end(&l[name_end..])? + 1..]
        } else {
            &l[name_end..]
        };
        let v: f64 = after.split_whitespace().next()?.parse().ok()?;
        Some((name, v))
    })
}

/// Index of the `}` closing a label set that starts at `s[0]`, skipping quoted values (with
/// their `\"` escapes).
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Sum of one metric over its label sets; `None` when the page does not have it.
pub fn sum(text: &str, metric: &str) -> Option<f64> {
    let mut total = None;
    for (name, v) in samples(text) {
        if name == metric {
            add(&mut total, v);
        }
    }
    total
}

fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.unwrap_or(0.0) + v);
}

/// The values okome reads from an engine's `/metrics` page (vLLM's, llama.cpp's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    /// Sum of `vllm:num_requests_waiting` over label sets (the queue).
    pub waiting: Option<f64>,
    /// Sum of `vllm:num_requests_running`.
    pub running: Option<f64>,
    /// Max of `vllm:kv_cache_usage_perc` (or `vllm:gpu_cache_usage_perc`, older vLLM), 0..1.
    pub kv_cache_usage: Option<f64>,
    /// Sum of `vllm:request_success_total` (finished requests; the drain rate is its delta).
    pub success_total: Option<f64>,
    /// Sum of `vllm:prefix_cache_queries_total` (tokens looked up in the prefix cache).
    pub prefix_cache_queries: Option<f64>,
    /// Sum of `vllm:prefix_cache_hits_total`.
    pub prefix_cache_hits: Option<f64>,
}

/// Reads the vLLM gauges and counters okome uses, in one pass.
pub fn vllm(text: &str) -> EngineMetrics {
    let mut m = EngineMetrics::default();
    let mut old_kv: Option<f64> = None;
    for (name, v) in samples(text) {
        match name {
            "vllm:num_requests_waiting" => add(&mut m.waiting, v),
            "vllm:num_requests_running" => add(&mut m.running, v),
            "vllm:request_success_total" => add(&mut m.success_total, v),
            "vllm:prefix_cache_queries_total" => add(&mut m.prefix_cache_queries, v),
            "vllm:prefix_cache_hits_total" => add(&mut m.prefix_cache_hits, v),
            "vllm:kv_cache_usage_perc" => {
                m.kv_cache_usage = Some(m.kv_cache_usage.unwrap_or(0.0).max(v))
            }
            "vllm:gpu_cache_usage_perc" => old_kv = Some(old_kv.unwrap_or(0.0).max(v)),
            _ => {}
        }
    }
    if m.kv_cache_usage.is_none() {
        m.kv_cache_usage = old_kv;
    }
    m
}

/// Reads llama.cpp's `llama-server --metrics` page: deferred requests (waiting for a free
/// slot) are the queue, processing ones the running, `kv_cache_usage_ratio` the KV cache use.
pub fn llamacpp(text: &str) -> EngineMetrics {
    let mut m = EngineMetrics::default();
    for (name, v) in samples(text) {
        match name {
            "llamacpp:requests_deferred" => add(&mut m.waiting, v),
            "llamacpp:requests_processing" => add(&mut m.running, v),
            "llamacpp:kv_cache_usage_ratio" => {
                m.kv_cache_usage = Some(m.kv_cache_usage.unwrap_or(0.0).max(v))
            }
            _ => {}
        }
    }
    m
}

/// Sum of `:tensorflow:serving:request_count` (finished requests, any status).
pub fn tfserving_requests(text: &str) -> Option<f64> {
    sum(text, ":tensorflow:serving:request_count")
}

/// A gauge or counter as a whole count (negative and NaN read as 0).
pub fn count(v: f64) -> u64 {
    v.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_fixture_values() {
        let text = "# HELP vllm:num_requests_running x\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1.0\n\
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 6.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.0421\n\
vllm:request_success_total{engine=\"0\",finished_reason=\"stop\",model_name=\"m\"} 7.0\n\
vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"m\"} 1.0\n\
vllm:request_success_created{engine=\"0\",finished_reason=\"stop\",model_name=\"m\"} 1.79e+09\n";
        let m = vllm(text);
        assert_eq!(m.waiting, Some(7.0));
        assert_eq!(m.running, Some(3.0));
        assert_eq!(m.kv_cache_usage, Some(0.0421));
        assert_eq!(m.success_total, Some(8.0));
        assert_eq!(m.prefix_cache_hits, None);
    }

    #[test]
    fn accepts_the_older_kv_gauge() {
        let m = vllm("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
        assert_eq!(m.kv_cache_usage, Some(0.5));
    }

    #[test]
    fn labels_with_spaces_and_prefixes_of_other_names_are_not_confused() {
        let text = "vllm:num_requests_waiting_total 9\n\
vllm:num_requests_waiting{model_name=\"a b}\"} 2\n\
vllm:num_requests_waiting{model_name=\"say \\\"hi}\\\"\"} 3\n";
        assert_eq!(sum(text, "vllm:num_requests_waiting"), Some(5.0));
    }

    #[test]
    fn parses_tfserving_request_count() {
        let text = "# TYPE :tensorflow:serving:request_count counter\n\
:tensorflow:serving:request_count{model_name=\"a\",status=\"OK\"} 5\n\
:tensorflow:serving:request_count{model_name=\"a\",status=\"INVALID_ARGUMENT\"} 2\n\
:tensorflow:core:graph_runs{} 21558640\n";
        assert_eq!(tfserving_requests(text), Some(7.0));
    }
}
