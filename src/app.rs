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
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    admin::Admin,
    cache::Cache,
    config::Settings,
    embed::{EmbedService, EmbedderFactory},
    metrics::Metrics,
    proxy::handler::{Gateway, UNKNOWN_TENANT},
    store::Store,
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
    let reasons = crate::cache::SkipReason::ALL.map(|r| r.as_str());
    for name in settings
        .tenants
        .iter()
        .map(|t| t.name.as_str())
        .chain([UNKNOWN_TENANT])
    {
        metrics.init_tenant(name, &models);
        metrics.init_bypass(name, &reasons);
    }
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
                s.cache.single_flight_wait,
            )
        };
        if process_wide(settings) != process_wide(old) {
            restart.push(
                "cache.exact_capacity / writeback_queue / writeback_batch / single_flight_wait",
            );
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

fn load_cache(
    settings: &Settings,
    opts: AppOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Cache> {
    let data = &settings.storage.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let store: Arc<dyn Store> = match opts.store {
        Some(s) => s,
        None => crate::store::open(&settings.storage)?,
    };
    // NOTE: the pair model goes with the configured embedder (its tokenizer
    // is the model's); an embedder given in code runs without it.
    let (pair, reader) = match opts.embedder {
        Some(_) => (None, None),
        None => (
            crate::embed::configured_pair(&settings.embedding)?,
            crate::embed::configured_reader(&settings.embedding)?,
        ),
    };
    let factory = opts
        .embedder
        .unwrap_or_else(|| crate::embed::configured(&settings.embedding));
    let em = settings.embedding.clone();
    let m = metrics.clone();
    let observe: crate::embed::BatchObserver = Arc::new(move |n, secs| {
        m.embed_seconds.observe(secs);
        m.embed_batch_size.observe(n as f64);
    });
    let embedder = EmbedService::start(factory, crate::embed::EmbedLimits::of(&em), Some(observe))?
        .with_pair(pair)
        .with_reader(reader);
    let place = crate::cache::IndexPlace::configured(
        &settings.index,
        Some(data.join("index")),
        settings.storage.index_quantization,
        embedder.dims(),
    )
    .map_err(anyhow::Error::msg)?;
    Cache::open(
        settings.cache.clone(),
        store,
        embedder,
        metrics,
        place,
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
        settings.cache.single_flight_wait,
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

/// Most connections the admin listener holds at once (health checks,
/// metrics scrapes, the console): its own budget, so that a flood of proxy
/// connections never locks out `/healthz`.
const ADMIN_CONNECTIONS: usize = 256;

/// File descriptors kept out of the connection budgets: the store, index
/// files, the model, logs.
const RESERVED_FDS: usize = 64;

/// Raises the soft limit on open files to the hard limit and returns the
/// limit in force.
fn raise_fd_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).ok()
}

/// The connection budgets of the proxy and the admin listener: the proxy's
/// is `max_connections` within what the open-files limit leaves once the
/// admin listener's share and [`RESERVED_FDS`] are set aside. A proxied
/// request holds two descriptors (the client's and the upstream's).
fn connection_budgets(max_connections: usize) -> (usize, usize) {
    let Some(fds) = raise_fd_limit() else {
        return (max_connections, ADMIN_CONNECTIONS);
    };
    budgets_within(max_connections, fds)
}

fn budgets_within(max_connections: usize, fds: usize) -> (usize, usize) {
    let admin = ADMIN_CONNECTIONS.min(fds / 8).max(4);
    let fits = (fds.saturating_sub(RESERVED_FDS + admin) / 2).max(1);
    if fits < max_connections {
        tracing::info!(
            max_connections,
            open_files_limit = fds,
            using = fits,
            "the open-files limit allows fewer proxy connections than server.max_connections"
        );
    }
    (max_connections.min(fits), admin)
}

/// Waits until a new connection has sent enough to tell HTTP/1 from HTTP/2,
/// for at most `within`. False if it sent nothing in time, or closed.
///
/// NOTE: hyper's header read timeout starts once the protocol is known; the
/// protocol detection before it has no timer, so a connection that sends
/// nothing (or part of the HTTP/2 preface) would be held forever.
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        if n >= PREFACE.len() || buf[..n] != PREFACE[..n] {
            return true;
        }
        // Part of the HTTP/2 preface: a peek returns at once with what is
        // there, so wait a little for the rest.
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether an accept error concerns only the connection being accepted (try
/// the next one at once) rather than the process (back off: out of file
/// descriptors or memory).
fn connection_only(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// What every accept loop shares: the connection builder (with its
/// timers), the drain, the header timeout, and the stop signal.
#[derive(Clone)]
struct Serving {
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    header_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// One listener's accept loop, in its own task: each connection gets a
/// permit of `budget` (new ones wait in the listen backlog when none is
/// left), a timer for its request headers, and a watcher for the drain.
async fn accept_loop<S, F>(
    name: &'static str,
    listener: TcpListener,
    budget: Arc<tokio::sync::Semaphore>,
    serving: Serving,
    service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<crate::http::body::ProxyBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Serving {
        builder,
        graceful,
        header_timeout,
        mut stop,
    } = serving;
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = budget.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if connection_only(&e) => continue,
            Err(e) => {
                // NOTE: out of descriptors (EMFILE) or memory: accepting again
                // at once would fail again at once, a busy loop. Pause, and
                // say so at most once a minute.
                if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(listener = name, error = %e, "accept failed; pausing");
                    last_warned = Some(tokio::time::Instant::now());
                }
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = service(peer);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut draining = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let ready = tokio::select! {
                ready = first_bytes(&stream, header_timeout) => ready,
                _ = draining.changed() => false,
            };
            if !ready {
                tracing::debug!(listener = name, %peer, "connection sent no request in time; closed");
                return;
            }
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        });
    }
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
    let graceful = Arc::new(GracefulShutdown::new());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.server.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = Serving {
        builder: Arc::new(builder),
        graceful: graceful.clone(),
        header_timeout: settings.server.header_read_timeout,
        stop: stop_rx,
    };
    let (proxy_budget, admin_budget) = connection_budgets(settings.server.max_connections);
    let proxy_loop = tokio::spawn(accept_loop(
        "proxy",
        proxy,
        Arc::new(tokio::sync::Semaphore::new(proxy_budget)),
        serving.clone(),
        move |_peer| {
            let gw = gateway.clone();
            service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req).await) }
            })
        },
    ));
    let admin_loop = tokio::spawn(accept_loop(
        "admin",
        admin,
        Arc::new(tokio::sync::Semaphore::new(admin_budget)),
        serving,
        move |peer| {
            let a = admin_routes.clone();
            service_fn(move |req| {
                let a = a.clone();
                async move { Ok::<_, Infallible>(a.handle(req, peer).await) }
            })
        },
    ));
    let mut save = tokio::time::interval(settings.storage.index_save_interval);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = save.tick() => {
                if let Some(c) = cache.get() {
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || c.save_indexes());
                }
            }
            _ = sweep.tick() => {
                if let Some(c) = cache.get() {
                    c.sweep(reloader.limits());
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    // NOTE: the loops own the listeners; once they return, nothing new is
    // accepted.
    let _ = tokio::join!(proxy_loop, admin_loop);
    // NOTE: every clone lived in the loops, which have returned; the
    // connections hold watchers, not the Arc.
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            tracing::info!("draining in-flight requests");
            if tokio::time::timeout(settings.server.drain_timeout, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("drain timeout reached; closing remaining connections");
            }
        }
        Err(_) => tracing::error!("the accept loops still run; in-flight requests not drained"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_budgets_leave_descriptors_for_the_admin_listener() {
        // A roomy limit: the configured cap.
        assert_eq!(budgets_within(10_000, 1_000_000), (10_000, 256));
        // A tight one: two descriptors per proxied request, the admin share
        // and the reserve set aside.
        let (proxy, admin) = budgets_within(10_000, 256);
        assert_eq!(admin, 32);
        assert_eq!(proxy, (256 - 64 - 32) / 2);
        assert!(2 * proxy + admin + RESERVED_FDS <= 256);
        // Never zero.
        assert_eq!(budgets_within(10_000, 10).0, 1);
    }
}
