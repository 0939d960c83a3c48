//! Replays the fuzz corpora kept in `fuzz/corpus/<target>/` through the same harness functions
//! the cargo-fuzz targets call (`okome::fuzzing`), so every seed and every input the fuzzers kept
//! is a regression test in a plain `cargo test`, without nightly or libFuzzer.

use std::path::{Path, PathBuf};

/// Every file of `fuzz/<dir>/<target>/`, sorted.
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&d) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `harness` on every corpus file of `target`; the corpus must not be empty.
fn replay(target: &str, harness: fn(&[u8])) {
    let files = inputs("corpus", target);
    assert!(
        !files.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing: the seeds are part of the repo"
    );
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let run = std::panic::catch_unwind(|| harness(&data));
        assert!(run.is_ok(), "{target}: {} fails the harness", f.display());
    }
}

#[test]
fn stream_tap_corpus() {
    replay("stream_tap", okome::fuzzing::stream_tap);
}

#[test]
fn body_peek_corpus() {
    replay("body_peek", okome::fuzzing::body_peek);
}

#[test]
fn edge_config_corpus() {
    replay("edge_config", okome::fuzzing::edge_config);
}

#[test]
fn wire_types_corpus() {
    replay("wire_types", okome::fuzzing::wire_types);
}

#[test]
#[ignore]
fn tmp_seed_status() {
    use std::path::Path as P;
    for f in inputs("corpus", "edge_config") {
        let t = std::fs::read_to_string(&f).unwrap_or_default();
        let e = okome::config::parse(P::new("x.yaml"), &t).map(|_| ()).map_err(|e| e.to_string());
        let c = okome::control::ControlPolicy::from_str("c", &t).map(|_| ()).map_err(|e| e.to_string());
        let a = okome::arbiter::ArbiterConfig::from_str("a", &t).map(|c| okome::arbiter::plan::plan(&c, None).is_ok()).map_err(|e| e.to_string());
        let k = okome::control::config::parse_keys(P::new("k"), &t).map(|v| v.len()).map_err(|e| e.to_string());
        println!("{}\n  edge {:?}\n  control {:?}\n  arbiter {:?}\n  keys {:?}", f.display(), e.err().map(|s| s.chars().take(150).collect::<String>()), c.err().map(|s| s.chars().take(150).collect::<String>()), a.map_err(|s| s.chars().take(150).collect::<String>()), k.map_err(|s| s.chars().take(80).collect::<String>()));
    }
    for f in inputs("corpus", "wire_types") {
        let d = std::fs::read(&f).unwrap_or_default();
        println!("{} snap {} key {} tenant {} state {:?}", f.display(),
            serde_json::from_slice::<okome_filters::policy::Snapshot>(&d).is_ok(),
            serde_json::from_slice::<okome_filters::policy::KeyInfo>(&d).is_ok(),
            serde_json::from_slice::<okome_filters::policy::TenantPolicy>(&d).is_ok(),
            serde_json::from_slice::<okome::arbiter::ArbiterState>(&d).map(|_| ()).map_err(|e| e.to_string()).err());
    }
    for f in inputs("corpus", "body_peek") {
        let d = std::fs::read(&f).unwrap_or_default();
        let api = [okome::api::Api::OpenAi, okome::api::Api::Ollama, okome::api::Api::TfServing][d[0] as usize % 3];
        println!("{} {:?}", f.display(), okome::edge::peek::peek(api, &d[1..]));
    }
}
