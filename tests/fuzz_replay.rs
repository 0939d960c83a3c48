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
