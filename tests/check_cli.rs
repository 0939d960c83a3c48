//! `okome check -c FILE`: the real binary on the shipped configs and on broken ones; every
//! problem names the file and the line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `okome check` with `-c` for each file.
fn check(files: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_okome"));
    cmd.arg("check");
    for f in files {
        cmd.arg("-c").arg(f);
    }
    cmd.output().expect("run okome check")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A valid edge config; line numbers below refer to it.
const GOOD: &str = "\
listeners:
  - address: 127.0.0.1:8080
pools:
  vllm:
    kind: vllm
    backends: [\"127.0.0.1:8000\"]
    health_check: { interval: 5s, timeout: 1s }
routes:
  - name: openai
    match: { path_prefix: /v1/ }
    pool: vllm
";

/// Writes `yaml` as `name` in a fresh directory.
fn write(name: &str, yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

/// `GOOD` with one substitution, which must apply.
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the base config");
    GOOD.replacen(from, to, 1)
}

/// Runs check on `yaml`, expects exit 1 and returns (path, stderr).
fn fails(name: &str, yaml: &str) -> (PathBuf, String) {
    let (dir, path) = write(name, yaml);
    let out = check(&[&path]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a bad file: {}",
        text(&out.stdout)
    );
    // Keep the file's directory alive until here; the path is only used in messages after.
    drop(dir);
    (path, stderr)
}

#[test]
fn shipped_configs_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, summary) in [
        (
            "conf/edge.yaml",
            "edge config, 1 listener(s), 3 pool(s), 3 route(s)",
        ),
        (
            "conf/demo.yaml",
            "edge config, 1 listener(s), 3 pool(s), 4 route(s)",
        ),
        (
            "conf/ingress.yaml",
            "edge config, 1 listener(s), 1 pool(s), 1 route(s)",
        ),
    ] {
        let path = root.join(name);
        let out = check(&[&path]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("{}: ok ({summary})\n", path.display())
        );
    }
}

#[test]
fn a_valid_config_passes() {
    let (_dir, path) = write("good.yaml", GOOD);
    let out = check(&[&path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok (edge config, 1 listener(s), 1 pool(s), 1 route(s))\n",
            path.display()
        )
    );
}

#[test]
fn unknown_pool_names_file_line_and_key() {
    let (path, stderr) = fails(
        "unknown-pool.yaml",
        &broken("    pool: vllm\n", "    pool: nope\n"),
    );
    assert_eq!(
        stderr,
        format!(
            "{}:11: routes[0].pool: unknown pool \"nope\" (pools: vllm)\n",
            path.display()
        )
    );
}

#[test]
fn bad_backend_address_names_file_line_and_key() {
    let (path, stderr) = fails(
        "bad-address.yaml",
        &broken("127.0.0.1:8000", "localhost-8000"),
    );
    let want = format!(
        "{}:6: pools.vllm.backends[0]: bad address \"localhost-8000\"",
        path.display()
    );
    assert!(
        stderr.starts_with(&want),
        "want prefix {want:?}, got:\n{stderr}"
    );
    assert!(stderr.contains("IP:PORT"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bad_duration_names_file_and_line() {
    let (path, stderr) = fails(
        "bad-duration.yaml",
        &broken("interval: 5s", "interval: 5 parsecs"),
    );
    // Column 31: where the value `5 parsecs` starts.
    let want = format!(
        "{}: error: line 7 column 31: bad duration \"5 parsecs\"",
        path.display()
    );
    assert!(
        stderr.starts_with(&want),
        "want prefix {want:?}, got:\n{stderr}"
    );
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("bad duration \"5 parsecs\""), "{stderr}");
    assert!(first.contains("unknown time unit \"parsecs\""), "{stderr}");
}

#[test]
fn unknown_key_names_file_line_and_the_key() {
    let (path, stderr) = fails(
        "unknown-key.yaml",
        &broken("    kind: vllm\n", "    kind: vllm\n    weight: 3\n"),
    );
    let want = format!(
        "{}: error: line 6 column 5: unknown field `weight`",
        path.display()
    );
    assert!(
        stderr.starts_with(&want),
        "want prefix {want:?}, got:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or_default()
            .contains("health_check"),
        "lists the known keys: {stderr}"
    );
}

#[test]
fn yaml_syntax_error_names_file_and_line() {
    // An unclosed flow sequence: the parser trips on the next mapping key, line 7.
    let (path, stderr) = fails(
        "syntax.yaml",
        &broken(
            "backends: [\"127.0.0.1:8000\"]",
            "backends: [\"127.0.0.1:8000\"",
        ),
    );
    let want = format!("{}: error: line 7 column 17: ", path.display());
    assert!(
        stderr.starts_with(&want),
        "want prefix {want:?}, got:\n{stderr}"
    );
}

#[test]
fn every_problem_is_reported_and_one_bad_file_fails_the_run() {
    let two = broken("    pool: vllm\n", "    pool: nope\n    fallback: [gone]\n");
    let (_d1, bad) = write("two-problems.yaml", &two);
    let (_d2, good) = write("good.yaml", GOOD);
    let out = check(&[&good, &bad]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:11: routes[0].pool: unknown pool \"nope\"",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:12: routes[0].fallback[0]: unknown pool \"gone\"",
            bad.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok (edge config, 1 listener(s), 1 pool(s), 1 route(s))\n",
            good.display()
        )
    );
}

/// Security settings are checked: filters in an order that would answer every request 401,
/// model management opened without `auth`, bad endpoint rules, unreadable secrets; a control
/// plane (or an edge's `control:`) without a token passes with a warning.
#[test]
fn security_settings_are_checked_and_open_control_apis_warned_about() {
    let with_control = |route_extra: &str, control_extra: &str| {
        format!(
            "{GOOD}{route_extra}control:\n  address: 127.0.0.1:7070\n  state_dir: /tmp/okome-check-test\n{control_extra}"
        )
    };
    let (path, stderr) = fails(
        "order.yaml",
        &with_control("    filters: [{type: policy}, {type: auth}]\n", ""),
    );
    assert!(
        stderr.contains(&format!("{}:12: routes[0].filters[0]:", path.display()))
            && stderr.contains("put `{type: auth}` before it"),
        "{stderr}"
    );
    let (path, stderr) = fails(
        "manage.yaml",
        &with_control("    allow: [default, \"POST /api/pull\"]\n", ""),
    );
    assert!(
        stderr.contains(&format!("{}:12: routes[0].allow[1]:", path.display()))
            && stderr.contains("needs `{type: auth}`"),
        "{stderr}"
    );
    let (_, stderr) = fails("rule.yaml", &format!("{GOOD}    deny: [\"/api/pull\"]\n"));
    assert!(stderr.contains("routes[0].deny[0]"), "{stderr}");
    let (_, stderr) = fails(
        "secret.yaml",
        &with_control("", "  token: { file: /nonexistent/okome.token }\n"),
    );
    assert!(
        stderr.contains("control.token: cannot read secret file /nonexistent/okome.token"),
        "{stderr}"
    );

    let (_dir, path) = write("open.yaml", &with_control("", ""));
    let out = check(&[&path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: line 13: control.token is not set"),
        "{}",
        text(&out.stderr)
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = check(&[&root.join("conf/control.yaml")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: api_token is not set"),
        "{}",
        text(&out.stderr)
    );
}

/// Values that would make the edge fail every request are refused at their own line, not at a
/// placeholder: zero timeouts (every stream would end at once as `timeout`), a zero body limit.
#[test]
fn nonsensical_values_are_refused_where_they_are_written() {
    let (path, stderr) = fails(
        "zero.yaml",
        &format!(
            "{GOOD}timeouts: {{ idle: 0s, first_token: 0s, connect: 0s }}\nlimits:\n  max_body: 0\n"
        ),
    );
    let p = path.display();
    for want in [
        format!("{p}:12: timeouts.connect:"),
        format!("{p}:12: timeouts.first_token:"),
        format!("{p}:12: timeouts.idle:"),
        format!("{p}:14: limits.max_body: must be larger than 0"),
    ] {
        assert!(stderr.contains(&want), "{want:?} not in:\n{stderr}");
    }
}

#[test]
fn the_shared_limit_store_is_checked() {
    // `store: redis` without an address, at the `limits:` line (13).
    let (path, stderr) = fails(
        "redis-no-address.yaml",
        &format!("{GOOD}limits:\n  store: redis\n"),
    );
    assert!(
        stderr.starts_with(&format!("{}:13: limits.redis.address: ", path.display())),
        "{stderr}"
    );
    // A timeout that leaves a renewal no time within the lease.
    let (path, stderr) = fails(
        "redis-timeout.yaml",
        &format!(
            "{GOOD}limits:\n  store: redis\n  redis: {{ address: \"127.0.0.1:6379\", timeout: 2s, lease: 3s }}\n"
        ),
    );
    assert!(
        stderr.starts_with(&format!("{}:13: limits.redis.timeout: ", path.display())),
        "{stderr}"
    );
    // A valid one passes without Redis running (the edge connects lazily).
    let (_dir, path) = write(
        "redis.yaml",
        &format!(
            "{GOOD}limits:\n  store: redis\n  redis: {{ address: \"redis://127.0.0.1:1\" }}\n"
        ),
    );
    let out = check(&[&path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// The reproduction (security round three, 7): `okome check -c /dev/zero` read 1 GB in half a
/// second and was killed for memory; a FIFO hung it. Only regular files are read, and at most
/// 16 MiB of a config (1 MiB of a certificate or key, 64 KiB of a secret).
#[test]
fn devices_fifos_and_huge_files_are_refused_not_read() {
    let out = check(&[Path::new("/dev/zero")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("edge.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = check(&[&fifo]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );

    let big = dir.path().join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(17 * 1024 * 1024).unwrap();
    let out = check(&[&big]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("more than"),
        "{}",
        text(&out.stderr)
    );

    // A certificate path that names a device: refused at its line and key, not read.
    let (_d, cfg) = write(
        "tls.yaml",
        &GOOD.replace(
            "  - address: 127.0.0.1:8080\n",
            "  - address: 127.0.0.1:8443\n    tls: { certificates: [{ cert: /dev/zero, key: /dev/zero }] }\n",
        ),
    );
    let out = check(&[&cfg]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("tls.yaml:") && err.contains("not a regular file"),
        "{err}"
    );
}
