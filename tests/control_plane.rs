//! The control plane over real sockets: snapshot + ETag + long-poll, key lookups, hot reload
//! (valid, invalid, revocation), add-key, shutdown. Deadlines are generous ("within 5 s");
//! nothing asserts a speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use okome::control::{
    self, add_key, hash_key, ControlError, ControlPolicy, PolicyStore, YamlStore,
};
use okome_filters::policy::{KeyInfo, Priority, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"listen: 127.0.0.1:0
edges: 2
keys_file: keys.yaml
tenants:
  - id: acme
    priority: standard
    models: ["*"]
    requests_per_minute: 600
    tokens_per_minute: 200000
    max_concurrent_streams: 20
    max_body: 4MiB
  - id: batch
    priority: sheddable
    models: ["llama*"]
routes:
  - { model: "llama*", pool: ollama, fallback: [vllm] }
  - { model: "*", pool: vllm }
"#;

const KEY_ACME: &str = "okome-test-key-acme";
const KEY_BATCH: &str = "okome-test-key-batch";

fn keys_text(entries: &[(&str, &str)]) -> String {
    let mut s = String::from("# hashes only\n");
    for (key, tenant) in entries {
        s.push_str(&format!(
            "- {{ sha256: \"{}\", tenant: {tenant} }}\n",
            hash_key(key)
        ));
    }
    s
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: PathBuf,
    keys: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.yaml");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    std::fs::write(
        &keys,
        keys_text(&[(KEY_ACME, "acme"), (KEY_BATCH, "batch")]),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        config,
        keys,
    }
}

/// Replaces a file's content the way an editor does: write a temp file, rename over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn serve(store: &YamlStore) -> control::ControlHandle {
    let s: Arc<dyn PolicyStore> = Arc::new(store.clone());
    control::start(s, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// Polls `cond` until it holds or 5 s pass.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()
        .get("etag")
        .expect("etag header")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn snapshot_etag_and_long_poll() {
    let fx = fixture();
    let store = YamlStore::load(&fx.config).unwrap();
    let ctl = serve(&store).await;
    let base = format!("http://{}", ctl.addr());
    let c = client();

    let r = c.get(format!("{base}/v1/snapshot")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(etag(&r), "\"1\"");
    let snap: Snapshot = r.json().await.unwrap();
    assert_eq!(snap.version, 1);
    assert_eq!(snap.edges, 2);
    assert_eq!(snap.routes.len(), 2);
    assert_eq!(snap.routes[0].pool, "ollama");
    assert_eq!(snap.routes[0].fallback, vec!["vllm".to_owned()]);
    assert_eq!(snap.tenants.len(), 2);
    assert_eq!(snap.tenants[0].max_body_bytes, Some(4 << 20));
    assert_eq!(snap.tenants[1].priority, Priority::Sheddable);
    // Keys are never part of the snapshot.
    let raw = c
        .get(format!("{base}/v1/snapshot"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains(&hash_key(KEY_ACME)));

    // If-None-Match with the current version, no wait: 304 at once.
    let r = c
        .get(format!("{base}/v1/snapshot"))
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(etag(&r), "\"1\"");

    // A different version known: the current one at once, even with a wait.
    let r = c
        .get(format!("{base}/v1/snapshot?since=0&wait=30s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Long-poll with no change: 304 once `wait` has passed.
    let t0 = Instant::now();
    let r = c
        .get(format!("{base}/v1/snapshot?since=1&wait=500ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(etag(&r), "\"1\"");
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "answered before wait"
    );

    // A bad wait is refused.
    let r = c
        .get(format!("{base}/v1/snapshot?since=1&wait=soon"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Long-poll wakes when the route changes in the file.
    let poll = tokio::spawn({
        let c = c.clone();
        let url = format!("{base}/v1/snapshot?since=1&wait=30s");
        async move {
            let r = c.get(url).send().await.unwrap();
            let t = Instant::now();
            (r.status(), etag(&r), r.json::<Snapshot>().await.unwrap(), t)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "long-poll answered without a change");
    let changed_at = Instant::now();
    replace(
        &fx.config,
        &CONFIG.replace(
            r#"{ model: "*", pool: vllm }"#,
            r#"{ model: "*", pool: vllm-b, fallback: [vllm] }"#,
        ),
    );
    let (status, tag, snap, answered_at) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("long-poll woke within 5 s")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(tag, "\"2\"");
    assert_eq!(snap.version, 2);
    assert_eq!(snap.routes[1].pool, "vllm-b");
    assert_eq!(snap.routes[1].fallback, vec!["vllm".to_owned()]);
    eprintln!(
        "long-poll woke {:?} after the write",
        answered_at - changed_at
    );
    assert_eq!(store.version(), 2);

    // Touching the file without changing it publishes nothing new.
    replace(
        &fx.config,
        &CONFIG.replace(
            r#"{ model: "*", pool: vllm }"#,
            r#"{ model: "*",  pool: vllm-b, fallback: [vllm] }"#,
        ),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.version(), 2);

    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("okome_control_snapshot_version 2"), "{m}");
    assert!(
        m.contains(r#"okome_control_reloads_total{result="ok"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"okome_control_requests_total{endpoint="snapshot",status="304"} 2"#),
        "{m}"
    );
    ctl.shutdown().await;
}

#[tokio::test]
async fn key_lookup_found_unknown_malformed() {
    let fx = fixture();
    let store = YamlStore::load(&fx.config).unwrap();
    let ctl = serve(&store).await;
    let base = format!("http://{}", ctl.addr());
    let c = client();

    let r = c
        .get(format!("{base}/v1/keys/{}", hash_key(KEY_ACME)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: KeyInfo = r.json().await.unwrap();
    assert_eq!(info.version, 1);
    assert_eq!(info.tenant.id, "acme");
    assert_eq!(info.tenant.requests_per_minute, Some(600));
    assert_eq!(info.tenant.tokens_per_minute, Some(200_000));
    assert_eq!(info.tenant.max_concurrent_streams, Some(20));
    assert_eq!(info.tenant.max_body_bytes, Some(4 << 20));

    let r = c
        .get(format!("{base}/v1/keys/{}", hash_key("okome-nobody")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": "unknown key"}));

    let r = c
        .get(format!("{base}/v1/keys/not-a-hash"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    assert_eq!(ctl.key_lookups(), 3);
    let h = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for status in ["200", "404", "400"] {
        let line =
            format!(r#"okome_control_requests_total{{endpoint="keys",status="{status}"}} 1"#);
        assert!(m.contains(&line), "missing {line} in\n{m}");
    }
    ctl.shutdown().await;
}

#[tokio::test]
async fn invalid_edit_keeps_last_good_version_and_names_the_line() {
    let fx = fixture();
    let store = YamlStore::load(&fx.config).unwrap();
    let ctl = serve(&store).await;
    let base = format!("http://{}", ctl.addr());
    let c = client();

    // A key bound to a tenant that does not exist: line 4 of the keys file (comment, 2 keys, this).
    let mut bad = keys_text(&[(KEY_ACME, "acme"), (KEY_BATCH, "batch")]);
    bad.push_str(&format!(
        "- {{ sha256: \"{}\", tenant: ghost }}\n",
        hash_key("okome-ghost")
    ));
    replace(&fx.keys, &bad);
    eventually("the keys-file edit to be rejected", || {
        store.last_error().is_some()
    })
    .await;
    let err = store.last_error().unwrap();
    eprintln!("rejected as expected:\n{err}");
    assert!(err.contains("keys.yaml:4: keys[2].tenant"), "{err}");
    assert!(err.contains("unknown tenant \"ghost\""), "{err}");
    assert_eq!(store.version(), 1);
    let r = c
        .get(format!("{base}/v1/keys/{}", hash_key(KEY_ACME)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the last good version keeps serving");

    // Fix the keys file, then break control.yaml: an unknown priority on line 13.
    replace(
        &fx.keys,
        &keys_text(&[(KEY_ACME, "acme"), (KEY_BATCH, "batch")]),
    );
    eventually("the fix to be accepted", || store.last_error().is_none()).await;
    assert_eq!(
        store.version(),
        1,
        "the fix restored what is served: no new version"
    );
    replace(
        &fx.config,
        &CONFIG.replace("priority: sheddable", "priority: urgent"),
    );
    eventually("the control.yaml edit to be rejected", || {
        store.last_error().is_some()
    })
    .await;
    let err = store.last_error().unwrap();
    eprintln!("rejected as expected:\n{err}");
    assert!(err.contains("control.yaml"), "{err}");
    assert!(err.contains("line 13") || err.contains(":13:"), "{err}");
    assert!(
        err.contains("priority: urgent"),
        "the snippet names the key: {err}"
    );
    let r = c.get(format!("{base}/v1/snapshot")).send().await.unwrap();
    assert_eq!(etag(&r), "\"1\"");

    // A YAML syntax error is rejected the same way.
    replace(&fx.config, &CONFIG.replace("routes:\n", "routes: [\n"));
    eventually("the syntax error to be rejected", || {
        store.last_error().is_some_and(|e| !e.contains("urgent"))
    })
    .await;
    assert_eq!(store.version(), 1);

    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"okome_control_reloads_total{result="rejected"} 3"#),
        "{m}"
    );

    // A valid edit afterwards is accepted with the next version.
    replace(&fx.config, &CONFIG.replace("edges: 2", "edges: 3"));
    eventually("the valid edit to be accepted", || store.version() == 2).await;
    assert!(store.last_error().is_none());
    let snap: Snapshot = c
        .get(format!("{base}/v1/snapshot"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap.edges, 3);
    ctl.shutdown().await;
}

#[tokio::test]
async fn revoked_key_is_unknown_after_reload() {
    let fx = fixture();
    let store = YamlStore::load(&fx.config).unwrap();
    let ctl = serve(&store).await;
    let base = format!("http://{}", ctl.addr());
    let c = client();
    let url = format!("{base}/v1/keys/{}", hash_key(KEY_BATCH));

    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    // Revoke: delete its line (in place, not by rename, as `sed -i`-less edits do).
    std::fs::write(&fx.keys, keys_text(&[(KEY_ACME, "acme")])).unwrap();
    eventually("the revocation to be published", || store.version() == 2).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The other key still works.
    let r = c
        .get(format!("{base}/v1/keys/{}", hash_key(KEY_ACME)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ctl.shutdown().await;
}

#[tokio::test]
async fn add_key_stores_only_the_hash_and_is_picked_up() {
    let fx = fixture();
    let store = YamlStore::load(&fx.config).unwrap();
    let ctl = serve(&store).await;
    let base = format!("http://{}", ctl.addr());

    let key = add_key(&fx.config, "batch").unwrap();
    assert!(key.starts_with("okome-"), "{key}");
    assert!(key.len() >= 6 + 64);
    let text = std::fs::read_to_string(&fx.keys).unwrap();
    assert!(text.contains(&hash_key(&key)), "{text}");
    assert!(!text.contains(&key), "the key itself must never be written");
    assert_ne!(
        add_key(&fx.config, "batch").unwrap(),
        key,
        "keys are random"
    );

    // The running control plane picks the new hash up.
    eventually("the new key to be published", || {
        store.current().keys.contains_key(&hash_key(&key))
    })
    .await;
    let info: KeyInfo = client()
        .get(format!("{base}/v1/keys/{}", hash_key(&key)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info.tenant.id, "batch");

    // Unknown tenant: refused, nothing written.
    let before = std::fs::read_to_string(&fx.keys).unwrap();
    match add_key(&fx.config, "ghost") {
        Err(ControlError::UnknownTenant { tenant, .. }) => assert_eq!(tenant, "ghost"),
        other => panic!("expected UnknownTenant, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&fx.keys).unwrap(), before);

    // A missing keys file is created.
    std::fs::remove_file(&fx.keys).unwrap();
    let key = add_key(&fx.config, "acme").unwrap();
    let text = std::fs::read_to_string(&fx.keys).unwrap();
    assert!(text.contains(&hash_key(&key)) && !text.contains(&key));
    assert!(ControlPolicy::load(&fx.config).is_ok());
    ctl.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_open_long_polls() {
    let fx = fixture();
    let store = YamlStore::load(&fx.config).unwrap();
    let ctl = serve(&store).await;
    let addr = ctl.addr();
    let c = client();
    let poll = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(format!("http://{addr}/v1/snapshot?since=1&wait=60s"))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(5), ctl.shutdown())
        .await
        .expect("shutdown within 5 s");
    let res = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("open long-poll ended within 5 s")
        .unwrap();
    assert!(
        res.is_err() || res.as_ref().is_ok_and(|r| r.status() == 503),
        "{res:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );

    // The control plane comes back on the same address (edges reconnect to it).
    let s: Arc<dyn PolicyStore> = Arc::new(store.clone());
    let again = control::start(s, addr).await.expect("rebind the same port");
    let r = c
        .get(format!("http://{addr}/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    again.shutdown().await;
}

#[tokio::test]
async fn in_memory_store_for_the_demo() {
    let store = YamlStore::from_str(CONFIG.replace("keys_file: keys.yaml\n", "").as_str()).unwrap();
    assert_eq!(store.version(), 1);
    let ctl = serve(&store).await;
    let url = format!("http://{}/v1/keys/{}", ctl.addr(), hash_key(KEY_ACME));
    let c = client();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(store.insert_key(&hash_key(KEY_ACME), "acme").unwrap(), 2);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert!(matches!(
        store.insert_key(&hash_key(KEY_BATCH), "ghost"),
        Err(ControlError::UnknownTenant { .. })
    ));
    assert!(matches!(
        store.insert_key(KEY_BATCH, "acme"),
        Err(ControlError::BadHash(_))
    ));
    assert_eq!(store.version(), 2);
    ctl.shutdown().await;
}

#[test]
fn validation_names_file_line_and_key() {
    let text = format!(
        r#"edges: 0
tenants:
  - id: acme
  - id: acme
routes: []
keys:
  - {{ sha256: "{h}", tenant: acme }}
  - {{ sha256: "{h}", tenant: acme }}
  - {{ sha256: "NOT-A-HASH", tenant: nobody }}
"#,
        h = hash_key("k")
    );
    let err = ControlPolicy::from_str("control.yaml", &text).unwrap_err();
    let msg = err.to_string();
    for want in [
        "control.yaml:1: edges: must be at least 1",
        "control.yaml:4: tenants[1].id: duplicate tenant id \"acme\" (first defined on line 3)",
        "control.yaml:8: keys[1].sha256: duplicate key hash",
        "control.yaml:9: keys[2].sha256: must be a SHA-256 hash",
        "control.yaml:9: keys[2].tenant: unknown tenant \"nobody\"",
    ] {
        assert!(msg.contains(want), "missing {want:?} in\n{msg}");
    }
    assert!(
        !msg.contains("NOT-A-HASH"),
        "a pasted key must not be echoed"
    );

    // The shipped reference config is valid.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = ControlPolicy::load(&root.join("conf/control.yaml")).unwrap();
    assert_eq!(p.config.listen.port(), 7070);
}

#[test]
fn hash_key_is_lowercase_hex_sha256() {
    // SHA-256("abc"), the FIPS 180-2 test vector.
    assert_eq!(
        hash_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let k = control::generate_key();
    assert_eq!(k.len(), "okome-".len() + 64);
    assert!(control::config::is_sha256_hex(&hash_key(&k)));
}

#[test]
fn cli_args_parse_and_add_key_runs() {
    use clap::Parser;

    #[derive(Parser)]
    struct Okome {
        #[command(flatten)]
        control: control::ControlArgs,
    }

    let a = Okome::try_parse_from(["okome"]).unwrap().control;
    assert_eq!(a.config, PathBuf::from("conf/control.yaml"));
    assert!(a.command.is_none());

    let fx = fixture();
    let a = Okome::try_parse_from([
        "okome",
        "-c",
        fx.config.to_str().unwrap(),
        "add-key",
        "--tenant",
        "acme",
    ])
    .unwrap()
    .control;
    assert!(matches!(
        &a.command,
        Some(control::ControlCommand::AddKey { tenant }) if tenant == "acme"
    ));
    let before = std::fs::read_to_string(&fx.keys).unwrap().lines().count();
    control::run(a).unwrap();
    let after = std::fs::read_to_string(&fx.keys).unwrap();
    assert_eq!(after.lines().count(), before + 1);
    assert!(ControlPolicy::load(&fx.config).unwrap().file_keys.len() == 3);

    let a = Okome::try_parse_from([
        "okome",
        "--config",
        fx.config.to_str().unwrap(),
        "add-key",
        "--tenant",
        "ghost",
    ])
    .unwrap()
    .control;
    assert!(control::run(a).is_err());
}
