//! The floor for okome's design: a minimal proxy built from the same Pingora crates okome uses
//! (the vendored pingora-proxy included), with one `upstream_peer` and nothing else — no
//! routing, body pre-read, filters, metrics or stream tap. `benchmarks/compare.sh` runs it as the
//! `pingora` contender, so okome's own cost is what it adds over this.
//!
//!   bare-pingora --listen 127.0.0.1:19185 --upstream 127.0.0.1:19100 --threads 1

use async_trait::async_trait;
use clap::Parser;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;

/// A minimal Pingora HTTP proxy to one upstream.
#[derive(Parser, Debug)]
struct Args {
    /// Where clients connect.
    #[arg(long)]
    listen: SocketAddr,
    /// The engine every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// One upstream, nothing else.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
    );
    svc.add_tcp(&args.listen.to_string());
    server.add_service(svc);
    server.run_forever();
}
