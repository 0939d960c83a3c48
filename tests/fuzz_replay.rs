//! Replays the fuzz corpora kept in `fuzz/corpus/<target>/` through the same harness functions
//! the cargo-fuzz targets call (`okome::fuzzing`), so every seed and every input the fuzzers kept
//! is a regression test in a plain `cargo test`, without nightly or libFuzzer.
//!
//! A finding's reproducer goes into its target's corpus once fixed (the four found so far are
//! there: an over-long SSE line split or not, JSON arrays read as a body or as Ollama options, a
//! float one ULP off over the wire).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::{Path, PathBuf};

/// A fuzz harness: arbitrary bytes in, a panic is a finding.
type Harness = fn(&[u8]);

/// Every target, by its `fuzz/fuzz_targets/` name.
const TARGETS: [(&str, Harness); 5] = [
    ("stream_tap", okome::fuzzing::stream_tap),
    ("tap_reformat", okome::fuzzing::tap_reformat),
    ("body_peek", okome::fuzzing::body_peek),
    ("edge_config", okome::fuzzing::edge_config),
    ("wire_types", okome::fuzzing::wire_types),
];

/// Every file of `fuzz/<dir>/<target>/`, sorted.
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&d) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "md"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `harness` on every corpus file of `target`; the corpus must not be empty.
fn replay(target: &str, harness: Harness) {
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
fn every_target_has_a_corpus_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".rs")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut known: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    known.sort();
    assert_eq!(names, known, "fuzz/fuzz_targets/ and TARGETS differ");
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
fn tap_reformat_corpus() {
    replay("tap_reformat", okome::fuzzing::tap_reformat);
}
