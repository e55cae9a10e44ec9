//! Wiring: listeners, the cache loaded in the background, periodic tasks, and
//! the graceful drain.
//!
//! Owns the lifetime of everything. The listeners are up before the model has
//! loaded: until then cacheable requests are forwarded uncached and `/readyz`
//! says 503. It must never drop an in-flight request on shutdown before the
//! drain timeout.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    admin::Admin,
    cache::Cache,
    config::Settings,
    embed::{EmbedService, Embedder, EmbedderFactory, FastEmbedder},
    metrics::Metrics,
    proxy::handler::{Gateway, UNKNOWN_TENANT},
    store::{sqlite::SqliteStore, Store},
    tenants::TenantSet,
};

/// How often expired and surplus entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Parts a test (or an embedder of the library) may replace.
#[derive(Default)]
pub struct AppOptions {
    /// Embedder factory; default: fastembed from `embedding.model_dir`.
    pub embedder: Option<EmbedderFactory>,
    /// Store; default: SQLite under `storage.data_dir`.
    pub store: Option<Arc<dyn Store>>,
}

/// A running gateway.
pub struct RunningApp {
    /// Bound proxy address.
    pub proxy_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    cache: Arc<OnceLock<Arc<Cache>>>,
    load_error: Arc<OnceLock<String>>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<()>,
    reloader: Reloader,
}

/// Swaps in the tenants of a new configuration (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    tenants: Arc<RwLock<Arc<TenantSet>>>,
    started_with: Arc<Settings>,
    metrics: Arc<Metrics>,
    cache: Arc<OnceLock<Arc<Cache>>>,
}

/// Calibrates, in the background, the thresholds of every tenant of
/// `settings` that states a wrong-answer rate. Until its calibration is done
/// (or if it fails) such a tenant serves exact hits only: a stated rate is
/// never exceeded by thresholds nobody measured.
fn calibrate_all(settings: Arc<Settings>, cache: Arc<Cache>) {
    for t in &settings.tenants {
        match &t.policy.calibration {
            None => cache.set_calibration(&t.name, None),
            Some(c) => cache.set_calibration(
                &t.name,
                Some(crate::cache::Calibration {
                    offset: 1.0,
                    max_wrong_rate: c.max_wrong_rate,
                    wrong_rate: 0.0,
                    recall: 0.0,
                    pairs: 0,
                }),
            ),
        }
    }
    tokio::spawn(async move {
        for t in &settings.tenants {
            let Some(c) = &t.policy.calibration else {
                continue;
            };
            let started = std::time::Instant::now();
            match crate::eval::calibrate_policy(
                &settings,
                &t.policy,
                &c.pairs,
                c.max_wrong_rate,
                cache.embedder(),
            )
            .await
            {
                Ok(result) => {
                    tracing::info!(
                        tenant = %t.name,
                        pairs = result.pairs,
                        offset = result.offset,
                        wrong_rate = result.wrong_rate,
                        recall = result.recall,
                        ms = started.elapsed().as_millis() as u64,
                        "thresholds calibrated"
                    );
                    cache.set_calibration(&t.name, Some(result));
                }
                Err(e) => tracing::error!(
                    tenant = %t.name,
                    error = %e,
                    "calibration failed; the tenant serves exact hits only"
                ),
            }
        }
    });
}

/// Creates the metric series of every tenant of `settings` (and of callers
/// that match none) at zero.
fn init_metrics(metrics: &Metrics, settings: &Settings) {
    let models = settings.prices.patterns();
    for t in &settings.tenants {
        metrics.init_tenant(&t.name, &models);
    }
    metrics.init_tenant(UNKNOWN_TENANT, &models);
}

impl Reloader {
    fn limits(&self) -> crate::store::Limits {
        match self.tenants.read() {
            Ok(t) => t.limits(),
            Err(p) => p.into_inner().limits(),
        }
    }

    /// Applies the tenants, their policies and upstreams, and `[auth]` of
    /// `settings`. Requests in flight finish under the old set. Settings that
    /// need a restart (listeners, storage, embedding, queue sizes) are kept
    /// and named in the log.
    pub fn reload(&self, settings: &Settings) -> Result<(), String> {
        let set = TenantSet::build(settings)?;
        let old = &self.started_with;
        let mut restart = Vec::new();
        // NOTE: compared with what the process runs on, which only a restart
        // changes; the warning repeats until then, as it should.
        let same =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
        if !same(&settings.server, &old.server) {
            restart.push("[server]");
        }
        if !same(&settings.storage, &old.storage) {
            restart.push("[storage]");
        }
        if !same(&settings.embedding, &old.embedding) {
            restart.push("[embedding]");
        }
        let process_wide = |s: &Settings| {
            (
                s.cache.exact_capacity,
                s.cache.writeback_queue,
                s.cache.writeback_batch,
            )
        };
        if process_wide(settings) != process_wide(old) {
            restart.push("cache.exact_capacity / writeback_queue / writeback_batch");
        }
        if uses_cache(settings) && !uses_cache(old) {
            restart.push("caching (off in every tenant at start, so no model was loaded)");
        }
        if !restart.is_empty() {
            tracing::warn!(
                changed = restart.join(", "),
                "these settings take effect only after a restart"
            );
        }
        let names = set.names().join(", ");
        init_metrics(&self.metrics, settings);
        match self.tenants.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(p) => *p.into_inner() = Arc::new(set),
        }
        // NOTE: every tenant that states a wrong-answer rate is calibrated
        // again: its policy, its pairs or the pairs' file may have changed.
        if let Some(c) = self.cache.get() {
            calibrate_all(Arc::new(settings.clone()), c.clone());
        }
        tracing::info!(tenants = names, "configuration reloaded");
        Ok(())
    }
}

impl RunningApp {
    /// Waits until the cache is loaded; errors if loading failed.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.cache.get().is_some() {
                return Ok(());
            }
            if let Some(e) = self.load_error.get() {
                anyhow::bail!("cache failed to load: {e}");
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("cache not ready after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The cache, once loaded.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.get()
    }

    /// A handle that reloads tenants from new settings.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Queues a sweep now, with the current tenants' caps (one also runs
    /// every 30 s).
    pub fn sweep_now(&self) {
        if let Some(c) = self.cache.get() {
            c.sweep(self.reloader.limits());
        }
    }

    /// Stops accepting, drains in-flight requests, flushes writes, saves indexes.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.join).await;
    }

    /// Waits until the app stops by itself (it does not, short of a shutdown).
    pub async fn wait(self) {
        let _ = self.join.await;
    }

    /// A handle that triggers shutdown from elsewhere (a signal handler).
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

/// Whether any tenant caches; if none does, no model is loaded.
fn uses_cache(settings: &Settings) -> bool {
    settings
        .tenants
        .iter()
        .any(|t| t.policy.mode != crate::config::CacheMode::Off)
}

/// The configured embedder: fastembed from `embedding.model_dir`, or a
/// remote OpenAI-compatible endpoint.
pub(crate) fn default_embedder(settings: &Settings) -> EmbedderFactory {
    let e = settings.embedding.clone();
    Arc::new(move || match &e.backend {
        crate::config::EmbeddingBackend::Local => {
            FastEmbedder::load(&e.model_dir, &e.onnxruntime, e.max_length, e.intra_threads)
                .map(|m| Box::new(m) as Box<dyn Embedder>)
        }
        crate::config::EmbeddingBackend::OpenAi(r) => {
            crate::embed::openai::OpenAiEmbedder::connect(r)
                .map(|m| Box::new(m) as Box<dyn Embedder>)
        }
        crate::config::EmbeddingBackend::E5 { library, model } => {
            crate::embed::e5::E5Embedder::load(library, model)
                .map(|m| Box::new(m) as Box<dyn Embedder>)
        }
    })
}

fn load_cache(
    settings: &Settings,
    opts: AppOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Cache> {
    let data = &settings.storage.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let store: Arc<dyn Store> = match (opts.store, &settings.storage.backend) {
        (Some(s), _) => s,
        (None, crate::config::StorageBackend::Sqlite) => Arc::new(
            SqliteStore::open(&data.join("modelcache.db"), 4)
                .with_context(|| format!("opening {}", data.join("modelcache.db").display()))?,
        ),
        (
            None,
            crate::config::StorageBackend::Postgres {
                url,
                schema,
                notify,
            },
        ) => Arc::new(
            crate::store::postgres::PgStore::open(url.expose(), 4, schema.as_deref())
                .context("connecting to PostgreSQL (storage.url)")?
                .notify(*notify),
        ),
    };
    let factory = opts.embedder.unwrap_or_else(|| default_embedder(settings));
    let em = settings.embedding.clone();
    let m = metrics.clone();
    let observe: crate::embed::BatchObserver = Arc::new(move |n, secs| {
        m.embed_seconds.observe(secs);
        m.embed_batch_size.observe(n as f64);
    });
    let embedder = EmbedService::start(factory, em.threads, em.max_batch, em.queue, Some(observe))?;
    Cache::open(
        settings.cache.clone(),
        store,
        embedder,
        metrics,
        Some(data.join("index")),
        settings.storage.index_quantization,
        &settings
            .tenants
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>(),
    )
    .map_err(anyhow::Error::msg)
}

/// Binds the listeners and starts serving; the cache loads in the background.
pub async fn start(settings: Settings, opts: AppOptions) -> anyhow::Result<RunningApp> {
    let settings = Arc::new(settings);
    let proxy_listener = TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("binding the proxy listener {}", settings.server.listen))?;
    let admin_listener = TcpListener::bind(settings.server.admin_listen)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener {}",
                settings.server.admin_listen
            )
        })?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics = Arc::new(Metrics::new()?);
    let cache: Arc<OnceLock<Arc<Cache>>> = Arc::new(OnceLock::new());
    let load_error: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let tenants = Arc::new(RwLock::new(Arc::new(
        TenantSet::build(&settings).map_err(anyhow::Error::msg)?,
    )));
    let gateway = Arc::new(Gateway::new(
        settings.server.clone(),
        tenants.clone(),
        cache.clone(),
        metrics.clone(),
    ));
    let admin = Arc::new(Admin::new(
        cache.clone(),
        metrics.clone(),
        tenants.clone(),
        settings.admin.clone(),
        settings.server.max_body_bytes,
        settings.embedding.max_batch,
    ));

    if uses_cache(&settings) {
        let (s, m, c, le) = (
            settings.clone(),
            metrics.clone(),
            cache.clone(),
            load_error.clone(),
        );
        let s2 = settings.clone();
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || load_cache(&s, opts, m)).await;
            match loaded {
                Ok(Ok(cache)) => {
                    let cache = Arc::new(cache);
                    cache.start_following();
                    calibrate_all(s2, cache.clone());
                    let _ = c.set(cache);
                    tracing::info!("cache ready");
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cache failed to load; forwarding everything uncached");
                    let _ = le.set(format!("{e:#}"));
                }
                Err(e) => {
                    let _ = le.set(e.to_string());
                }
            }
        });
    }

    let (tx, rx) = oneshot::channel();
    init_metrics(&metrics, &settings);
    let reloader = Reloader {
        tenants,
        started_with: settings,
        metrics: metrics.clone(),
        cache: cache.clone(),
    };
    let join = tokio::spawn(serve(
        proxy_listener,
        admin_listener,
        gateway,
        admin,
        rx,
        cache.clone(),
        reloader.clone(),
    ));
    Ok(RunningApp {
        proxy_addr,
        admin_addr,
        metrics,
        cache,
        load_error,
        shutdown: Some(tx),
        join,
        reloader,
    })
}

async fn serve(
    proxy: TcpListener,
    admin: TcpListener,
    gateway: Arc<Gateway>,
    admin_routes: Arc<Admin>,
    mut stop: oneshot::Receiver<()>,
    cache: Arc<OnceLock<Arc<Cache>>>,
    reloader: Reloader,
) {
    let settings = reloader.started_with.clone();
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut save = tokio::time::interval(settings.storage.index_save_interval);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = proxy.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let gw = gateway.clone();
                let svc = service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(gw.handle(req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(error = %e, "proxy connection ended with an error");
                    }
                });
            }
            accepted = admin.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let a = admin_routes.clone();
                let svc = service_fn(move |req| {
                    let a = a.clone();
                    async move { Ok::<_, Infallible>(a.handle(req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
            _ = save.tick() => {
                if let Some(c) = cache.get() {
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || c.core().save_indexes());
                }
            }
            _ = sweep.tick() => {
                if let Some(c) = cache.get() {
                    c.sweep(reloader.limits());
                }
            }
        }
    }
    drop(proxy);
    drop(admin);
    tracing::info!("draining in-flight requests");
    if tokio::time::timeout(settings.server.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    if let Some(c) = cache.get() {
        // NOTE: misses that completed during the drain are still being
        // prepared; queue them, then let the writer drain.
        c.flush(Duration::from_secs(5)).await;
        let c = c.clone();
        let _ = tokio::task::spawn_blocking(move || c.close()).await;
    }
    tracing::info!("stopped");
}
