//! The Prometheus endpoint of a mount (`--metrics-addr HOST:PORT`): `GET /metrics` answers
//! the process's metrics (`crate::metrics`) and gauges read at each scrape (cache use and
//! bound, packages by state, mirror health and index age, uptime), in the OpenMetrics text
//! format, every series labelled with the mount point. A scrape reads the catalog and the
//! store's records; it changes nothing.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::status::Status;
use crate::catalog::live::LiveCatalog;
use crate::fs::FsCore;
use crate::metrics::MirrorLabels;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    read_mode: String,
}

/// The gauges set from the mount's state before each scrape.
#[derive(Default)]
struct Gauges {
    cache_used: Gauge,
    cache_bound: Gauge,
    cache_prefixes: Gauge,
    packages: Family<StateLabels, Gauge>,
    mirror_healthy: Family<MirrorLabels, Gauge>,
    mirror_active: Family<MirrorLabels, Gauge>,
    index_age: Family<MirrorLabels, FloatGauge>,
    index_packages: Family<MirrorLabels, Gauge>,
    uptime: FloatGauge,
    info: Family<InfoLabels, Gauge>,
}

impl Gauges {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "spackfs_cache_used",
            "Bytes of the ready prefixes in the cache",
            Unit::Bytes,
            self.cache_used.clone(),
        );
        r.register_with_unit(
            "spackfs_cache_bound",
            "The cache's bound (0: unbounded)",
            Unit::Bytes,
            self.cache_bound.clone(),
        );
        r.register(
            "spackfs_cache_prefixes",
            "Ready prefixes in the cache",
            self.cache_prefixes.clone(),
        );
        r.register(
            "spackfs_packages",
            "Listed packages by state (remote, fetching, ready, failed)",
            self.packages.clone(),
        );
        r.register(
            "spackfs_mirror_healthy",
            "1 when the mirror is not in a back-off period after failures",
            self.mirror_healthy.clone(),
        );
        r.register(
            "spackfs_mirror_active",
            "1 for the mirror the next fetch goes to first",
            self.mirror_active.clone(),
        );
        r.register_with_unit(
            "spackfs_mirror_index_age",
            "Time since the mirror's index was last read or confirmed unchanged",
            Unit::Seconds,
            self.index_age.clone(),
        );
        r.register(
            "spackfs_mirror_index_packages",
            "Packages the mirror's index lists",
            self.index_packages.clone(),
        );
        r.register_with_unit(
            "spackfs_uptime",
            "Time since the mount was made",
            Unit::Seconds,
            self.uptime.clone(),
        );
        r.register(
            "spackfs_info",
            "Version and read mode of the daemon",
            self.info.clone(),
        );
    }

    fn update(&self, s: &Status) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.cache_used.set(g(s.cache.used_bytes));
        self.cache_bound.set(g(s.cache.bound_bytes.unwrap_or(0)));
        self.cache_prefixes.set(s.cache.prefixes as i64);
        for (state, n) in [
            ("remote", s.packages.remote),
            ("fetching", s.packages.fetching),
            ("ready", s.packages.ready),
            ("failed", s.packages.failed),
        ] {
            self.packages
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
        for m in &s.mirrors {
            let l = MirrorLabels {
                mirror: m.url.clone(),
            };
            self.mirror_healthy.get_or_create(&l).set(m.healthy.into());
            self.mirror_active.get_or_create(&l).set(m.active.into());
            self.index_packages
                .get_or_create(&l)
                .set(m.index.packages as i64);
            if let Some(age) = m.index.age_seconds {
                self.index_age.get_or_create(&l).set(age);
            }
        }
        self.uptime.set(s.uptime_seconds);
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                read_mode: s.read_mode.clone(),
            })
            .set(1);
    }
}

/// What a scrape reads.
struct Exporter {
    mount: String,
    live: Arc<LiveCatalog>,
    fs: Arc<FsCore>,
    registry: Registry,
    gauges: Gauges,
}

impl Exporter {
    fn scrape(&self) -> Result<String, std::fmt::Error> {
        let status = Status::collect(&self.mount, &self.live, &self.fs, crate::metrics::global());
        self.gauges.update(&status);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Serve the mount's metrics on `addr` (`HOST:PORT`; port 0 picks one). Returns the
/// address bound.
pub async fn serve(
    addr: &str,
    mount: &std::path::Path,
    live: Arc<LiveCatalog>,
    fs: Arc<FsCore>,
) -> Result<SocketAddr, MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let mount = mount.to_string_lossy().into_owned();
    let mut registry = Registry::with_labels(std::iter::once((
        Cow::Borrowed("mount"),
        Cow::Owned(mount.clone()),
    )));
    crate::metrics::global().register(&mut registry);
    let gauges = Gauges::default();
    gauges.register(&mut registry);
    let exporter = Arc::new(Exporter {
        mount,
        live,
        fs,
        registry,
        gauges,
    });
    tracing::info!("metrics at http://{local}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let exporter = exporter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let exporter = exporter.clone();
                    async move { Ok::<_, Infallible>(respond(&exporter, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // A client that holds a connection open does not hold a task forever.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
            });
        }
    });
    Ok(local)
}

fn respond<B>(exporter: &Exporter, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(code)
            .header(hyper::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => match exporter.scrape() {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding failed\n".into(),
            ),
        },
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            format!("spackfs metrics of {}: see /metrics\n", exporter.mount),
        ),
        (&Method::GET, _) => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    }
}
