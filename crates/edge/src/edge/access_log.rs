//! The access log: one JSON object per request and line, to stderr or appended to a file. Not a
//! log macro with a text prefix: a line is a record a log shipper can parse as it is.
//!
//! Each line is written with one `write` call, so lines from different worker threads never
//! interleave (appends to a file opened with `O_APPEND` are atomic with respect to position).

use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Where lines go.
#[derive(Debug)]
enum Sink {
    Off,
    Stderr,
    File(File),
}

/// The access log writer.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
}

impl AccessLog {
    /// Opens the configured sink; `None` path means stderr.
    pub fn open(enabled: bool, path: Option<&Path>) -> std::io::Result<Self> {
        let sink = match (enabled, path) {
            (false, _) => Sink::Off,
            (true, None) => Sink::Stderr,
            (true, Some(p)) => Sink::File(File::options().create(true).append(true).open(p)?),
        };
        Ok(AccessLog { sink })
    }

    /// No access log (tests, benchmarks).
    pub fn off() -> Self {
        AccessLog { sink: Sink::Off }
    }

    /// Whether lines are written; callers skip building them otherwise.
    pub fn enabled(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// Writes one record as a JSON line. A failed write is dropped: the request it describes
    /// has already been served and must not fail because of its log line.
    pub fn write(&self, record: &impl Serialize) {
        // One buffer per worker thread, reused: a record is ~500 bytes, and growing a fresh
        // Vec to that size per request cost allocations and copies.
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
        }
        LINE.with(|cell| {
            // Not re-entered: nothing below writes an access log record.
            let Ok(mut line) = cell.try_borrow_mut() else {
                return;
            };
            line.clear();
            if serde_json::to_writer(&mut *line, record).is_err() {
                return;
            }
            line.push(b'\n');
            let _ = match &self.sink {
                Sink::Off => Ok(()),
                Sink::Stderr => std::io::stderr().lock().write_all(&line),
                Sink::File(f) => (&*f).write_all(&line),
            };
            // A rare huge record (a long error) does not keep its buffer.
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(1024);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_plain_json_appended_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let log = AccessLog::open(true, Some(&path)).expect("open");
        log.write(&serde_json::json!({"a": 1}));
        log.write(&serde_json::json!({"b": "x\ny"}));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"a\":1}\n{\"b\":\"x\\ny\"}\n");
        assert!(!AccessLog::open(false, Some(&path)).expect("off").enabled());
    }
}
