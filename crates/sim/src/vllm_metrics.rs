//! vLLM's `/metrics` text, rendered by hand in prometheus_client's exact format
//! (names, HELP texts, label order and float style of `fixtures/vllm_metrics_0.19.1_synthetic.txt`).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::server::Shared;
use super::stats::TTFT_BUCKETS;

/// prometheus_client's `floatToGoString`: Python `repr`, with Go-style exponents for large values.
pub(crate) fn go_float(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if d.is_nan() {
        return "NaN".into();
    }
    let s = py_repr(d);
    if d > 0.0 {
        if let Some(dot) = s.find('.') {
            if dot > 6 && !s.contains('e') {
                let digits = format!("{}{}", &s[1..dot], &s[dot + 1..]);
                let mantissa = format!("{}.{}", &s[..1], digits);
                let mantissa = mantissa.trim_end_matches(['0', '.']);
                return format!("{mantissa}e+0{}", dot - 1);
            }
        }
    }
    s
}

/// Python's float `repr` for the values the simulator prints.
fn py_repr(d: f64) -> String {
    if d == d.trunc() && d.abs() < 1e16 {
        return format!("{d:.1}");
    }
    let s = format!("{d:?}");
    // Rust prints "1e-5"/"9.7e-6"; Python prints "1e-05"/"9.7e-06".
    if let Some((m, e)) = s.split_once('e') {
        let (sign, digits) = e.strip_prefix('-').map(|x| ("-", x)).unwrap_or(("+", e));
        return format!("{m}e{sign}{digits:0>2}");
    }
    s
}

/// Renders the metrics text.
pub(crate) fn render(sim: &Shared) -> String {
    let c = &sim.counters;
    let model = sim.cfg.models[0].replace('\\', "\\\\").replace('"', "\\\"");
    let lbl = format!("engine=\"0\",model_name=\"{model}\"");
    let created = sim
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (running, waiting) = sim.sched.load();
    let max = sim.sched.max().max(1);
    let (extra_waiting, kv_override) = {
        let p = sim.pressure.read();
        (p.extra_waiting, p.kv_cache_usage)
    };
    let waiting = waiting + extra_waiting as usize;
    let mut o = String::with_capacity(8192);
    let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
        let _ = write!(
            o,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{lbl}}} {}\n",
            go_float(v)
        );
    };
    gauge(
        &mut o,
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        running as f64,
    );
    gauge(
        &mut o,
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        waiting as f64,
    );
    gauge(
        &mut o,
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        kv_override.unwrap_or(running as f64 / max as f64),
    );
    let counter = |o: &mut String, base: &str, help: &str, v: u64| {
        let _ = write!(
            o,
            "# HELP {base}_total {help}\n# TYPE {base}_total counter\n{base}_total{{{lbl}}} {}\n\
             # HELP {base}_created {help}\n# TYPE {base}_created gauge\n{base}_created{{{lbl}}} {}\n",
            go_float(v as f64),
            go_float(created)
        );
    };
    counter(
        &mut o,
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        c.prefix_queries.load(Relaxed),
    );
    counter(
        &mut o,
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        c.prefix_hits.load(Relaxed),
    );
    counter(
        &mut o,
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        0,
    );
    counter(
        &mut o,
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        c.prompt_tokens.load(Relaxed),
    );
    counter(
        &mut o,
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        c.generation_tokens.load(Relaxed),
    );

    let reasons = ["stop", "length", "abort", "error", "repetition"];
    let help = "Count of successfully processed requests.";
    let _ = write!(
        o,
        "# HELP vllm:request_success_total {help}\n# TYPE vllm:request_success_total counter\n"
    );
    for (i, r) in reasons.iter().enumerate() {
        let v = c.finished.get(i).map(|a| a.load(Relaxed)).unwrap_or(0);
        let _ = writeln!(
            o,
            "vllm:request_success_total{{engine=\"0\",finished_reason=\"{r}\",model_name=\"{model}\"}} {}",
            go_float(v as f64)
        );
    }
    let _ = write!(
        o,
        "# HELP vllm:request_success_created {help}\n# TYPE vllm:request_success_created gauge\n"
    );
    for r in reasons {
        let _ = writeln!(
            o,
            "vllm:request_success_created{{engine=\"0\",finished_reason=\"{r}\",model_name=\"{model}\"}} {}",
            go_float(created)
        );
    }

    let h = c.ttft.lock().clone();
    let name = "vllm:time_to_first_token_seconds";
    let help = "Histogram of time to first token in seconds.";
    let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} histogram\n");
    let mut cum = 0u64;
    for (i, b) in TTFT_BUCKETS.iter().enumerate() {
        cum += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "{name}_bucket{{engine=\"0\",le=\"{}\",model_name=\"{model}\"}} {}",
            go_float(*b),
            go_float(cum as f64)
        );
    }
    let _ = writeln!(
        o,
        "{name}_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"{model}\"}} {}",
        go_float(h.count as f64)
    );
    let _ = writeln!(o, "{name}_count{{{lbl}}} {}", go_float(h.count as f64));
    let _ = writeln!(o, "{name}_sum{{{lbl}}} {}", go_float(h.sum));
    let _ = write!(
        o,
        "# HELP {name}_created {help}\n# TYPE {name}_created gauge\n{name}_created{{{lbl}}} {}\n",
        go_float(created)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::go_float;

    #[test]
    fn floats_like_prometheus_client() {
        assert_eq!(go_float(3.0), "3.0");
        assert_eq!(go_float(0.0421), "0.0421");
        assert_eq!(go_float(4096.0), "4096.0");
        assert_eq!(go_float(1.7956997988995302e9), "1.7956997988995302e+09");
        assert_eq!(go_float(9.75010481363281e-06), "9.75010481363281e-06");
        assert_eq!(go_float(0.001), "0.001");
        assert_eq!(go_float(2560.0), "2560.0");
    }
}
