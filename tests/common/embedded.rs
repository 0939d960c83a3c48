//! The edge embedded in the test process: the same proxy, compile and background work as
//! `okome edge`, on port 0 (no port picked and released, so no race with parallel tests), stopped
//! when dropped. Configs come from [`EdgeBuilder`] (typed) or a YAML body; both go through the
//! edge's own compile. Tests about the command line, signals, the process's log or the demo
//! start the real binary instead (`super::start_edge`).

use okome::edge::embedded::Embedded;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;

/// A running embedded edge.
pub struct TestEdge {
    _edge: Embedded,
    /// Client listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Folder of its config and access log.
    pub dir: tempfile::TempDir,
    access_log: Option<std::path::PathBuf>,
    /// What the harness puts before the body (listeners, admin, server, access log).
    framing: String,
}

impl TestEdge {
    /// `http://IP:PORT` of the client listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://IP:PORT` of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The access log so far (the process log of an embedded edge is the test's own; set
    /// `RUST_LOG` and `--nocapture` to see it).
    pub fn log_text(&self) -> String {
        self.access_log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Applies a new YAML body as a reload would (same framing as at start); the new version.
    pub async fn reload(&self, yaml_body: &str) -> Result<u64, okome::edge::reload::ReloadError> {
        let text = format!("{}{yaml_body}", self.framing);
        let cfg = okome::config::parse(&self.dir.path().join("edge.yaml"), &text)?;
        self._edge.reloader.apply(cfg).await
    }

    /// Starts draining, as SIGTERM would: `/readyz` answers 503 from now on (an embedded edge
    /// keeps serving what reaches it).
    pub fn drain(&self) {
        self._edge.drain.start();
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        super::scrape_metric(self.admin, name, labels).await
    }
}

/// Starts an embedded edge from a YAML body (pools, routes, …): listeners and admin on port 0,
/// two worker threads, a one-second grace period, and the access log in its folder unless the
/// body configures one.
pub async fn edge(yaml_body: &str) -> TestEdge {
    edge_with_listener("  - address: 127.0.0.1:0\n", yaml_body).await
}

/// [`edge`] with another `listeners:` entry (e.g. with `max_connections`); its address must
/// be on port 0.
pub async fn edge_with_listener(listener: &str, yaml_body: &str) -> TestEdge {
    edge_at(listener, "127.0.0.1:0", yaml_body).await
}

/// [`edge_with_listener`] with the admin listener on `admin` (e.g. another loopback address,
/// `127.0.0.2:0`, or a port shared with an edge on another address).
pub async fn edge_at(listener: &str, admin: &str, yaml_body: &str) -> TestEdge {
    let dir = tempfile::tempdir().expect("tempdir");
    let access_log = (!yaml_body.contains("access_log:")).then(|| dir.path().join("access.log"));
    let log_section = access_log
        .as_ref()
        .map(|p| format!("access_log:\n  path: {}\n", p.display()))
        .unwrap_or_default();
    let framing = format!(
        "listeners:\n{listener}admin:\n  address: {admin}\nserver:\n  threads: 2\n  grace_period: 1s\n{log_section}"
    );
    let yaml = format!("{framing}{yaml_body}");
    let path = dir.path().join("edge.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let cfg = okome::config::parse(&path, &yaml).unwrap_or_else(|e| panic!("config: {e}"));
    let e = Embedded::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("embedded edge: {e}"));
    TestEdge {
        addr: e.addr,
        admin: e.admin,
        _edge: e,
        dir,
        access_log,
        framing,
    }
}

/// A typed edge config for tests: pools, routes and sections, written out as YAML (JSON is
/// YAML's flow style) and compiled by the edge like any file.
#[derive(Default)]
pub struct EdgeBuilder {
    pools: Map<String, Value>,
    routes: Vec<Value>,
    sections: Map<String, Value>,
}

impl EdgeBuilder {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool of `kind` (`vllm`, `ollama`, `tfserving`, `openai`) with fast health checks.
    pub fn pool(self, name: &str, kind: &str, backends: &[SocketAddr]) -> Self {
        self.pool_with(name, kind, backends, json!({}))
    }

    /// A pool with more settings (`models`, `api_key`, `ejection`, …) merged in.
    pub fn pool_with(
        mut self,
        name: &str,
        kind: &str,
        backends: &[SocketAddr],
        more: Value,
    ) -> Self {
        let mut p = json!({
            "kind": kind,
            "backends": backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "health_check": {"interval": "200ms", "timeout": "150ms"},
        });
        merge(&mut p, more);
        self.pools.insert(name.to_owned(), p);
        self
    }

    /// A route.
    pub fn route(mut self, r: Route) -> Self {
        self.routes.push(Value::Object(r.0));
        self
    }

    /// A top-level section (`control`, `arbiter`, `retry`, `timeouts`, `limits`, …).
    pub fn section(mut self, key: &str, value: Value) -> Self {
        self.sections.insert(key.to_owned(), value);
        self
    }

    /// The config body as YAML.
    pub fn yaml(&self) -> String {
        let mut top = self.sections.clone();
        top.insert("pools".into(), Value::Object(self.pools.clone()));
        top.insert("routes".into(), Value::Array(self.routes.clone()));
        // One key per line, values in flow style: a YAML body the harness can extend.
        top.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }

    /// Starts it embedded.
    pub async fn start(self) -> TestEdge {
        edge(&self.yaml()).await
    }
}

/// One route of an [`EdgeBuilder`].
pub struct Route(Map<String, Value>);

impl Route {
    /// A route named `name` to pool `pool`.
    pub fn to_pool(name: &str, pool: &str) -> Self {
        Route::new(name).set("pool", json!(pool))
    }

    /// A route named `name` that picks among all pools by model.
    pub fn new(name: &str) -> Self {
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        Route(m)
    }

    /// Only requests whose path starts with `prefix`.
    pub fn path_prefix(self, prefix: &str) -> Self {
        self.set("match", json!({ "path_prefix": prefix }))
    }

    /// Its filters, e.g. `json!([{"type": "auth"}])`.
    pub fn filters(self, filters: Value) -> Self {
        self.set("filters", filters)
    }

    /// Any other key (`fallback`, `allow`, `deny`, `websocket`, `default_model`, …).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.to_owned(), value);
        self
    }
}

fn merge(into: &mut Value, more: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, more) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}
