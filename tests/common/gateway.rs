//! Building and starting a gateway: its settings, the in-process gateway
//! ([`Gateway`]), and the `modelcache` binary as a child process
//! ([`Binary`], [`Running`]).
//!
//! ```ignore
//! let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
//! let app = Gateway::new(s).store(faulty.clone()).start().await;
//! let app = Gateway::new(s).real_model().start().await;
//! let (up, dir, app) = Gateway::with_mock_llm().await;
//! let gw = Binary::serve(&config, dir.path()).envs(&env).start().await;
//! ```

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc},
    time::{Duration, Instant, SystemTime},
};

use modelcache::{
    app::{self, AppOptions, RunningApp},
    config::{self, Overrides, Settings},
    embed::{Embedder, EmbedderFactory, HashEmbedder},
    store::Store,
};

use super::{client, llm, mock, with_admin_token, Call, Mock};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default embedding model (all-MiniLM-L6-v2) in the repository's `models/`.
pub fn minilm_dir() -> PathBuf {
    repo_root().join("models/all-minilm-l6-v2-int8")
}

/// The pair model trained by `scripts/train-verifier` (off by default).
pub fn pair_model() -> PathBuf {
    repo_root().join("assets/verifier/model.onnx")
}

/// ONNX Runtime in the repository's `models/`.
pub fn onnxruntime() -> PathBuf {
    repo_root().join("models/onnxruntime/libonnxruntime.so")
}

/// The multilingual model (multilingual-e5-small) in the repository's `models/`.
pub fn e5_dir() -> PathBuf {
    repo_root().join("models/multilingual-e5-small")
}

/// A gateway's two listeners: an in-process gateway's, a gateway process's,
/// or a bare address, which stands for both (the one being called).
pub trait Addrs {
    /// The proxy listener.
    fn proxy_addr(&self) -> SocketAddr;
    /// The admin listener.
    fn admin_addr(&self) -> SocketAddr;
}

impl Addrs for RunningApp {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }
    fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
}

impl Addrs for Running {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }
    fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
}

impl Addrs for SocketAddr {
    fn proxy_addr(&self) -> SocketAddr {
        *self
    }
    fn admin_addr(&self) -> SocketAddr {
        *self
    }
}

impl<T: Addrs + ?Sized> Addrs for &T {
    fn proxy_addr(&self) -> SocketAddr {
        (**self).proxy_addr()
    }
    fn admin_addr(&self) -> SocketAddr {
        (**self).admin_addr()
    }
}

// ------------------------------------------------------------------ settings

/// Settings for a test gateway on ephemeral ports, with the test admin token.
pub fn settings(upstream: &str, data_dir: &Path) -> Settings {
    let mut s = config::load(
        None,
        Vec::new(),
        &Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream.into()),
            data_dir: Some(data_dir.display().to_string()),
        },
    )
    .unwrap();
    // NOTE: Anthropic's family goes to the same mock.
    upstreams(&mut s, |u| u.anthropic_url = u.url.clone());
    for_tests(&mut s);
    s
}

/// Settings from a config file's text (written into `dir`), with `env` as
/// the environment, on ephemeral ports, with data under `dir/data`.
pub fn settings_from(text: &str, dir: &Path, env: &[(&str, &str)]) -> Settings {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut s = config::load(
        Some(&path),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        &Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: None,
            data_dir: Some(dir.join("data").display().to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    for_tests(&mut s);
    s
}

/// The model from the repository's `models/`, a short drain, the test admin token.
fn for_tests(s: &mut Settings) {
    s.embedding.model_dir = minilm_dir();
    s.embedding.onnxruntime = onnxruntime();
    if s.embedding.reader.is_some() {
        s.embedding.reader = Some(modelcache::config::E5Files::in_dir(
            &e5_dir().display().to_string(),
        ));
    }
    s.server.drain_timeout = Duration::from_secs(5);
    with_admin_token(s);
}

/// Changes the cache policy of every tenant (and the `[cache]` default).
pub fn policy(s: &mut Settings, f: impl Fn(&mut modelcache::config::Policy)) {
    f(&mut s.cache.policy);
    for t in &mut s.tenants {
        f(&mut t.policy);
    }
}

/// Changes the upstream settings of every tenant (and `[upstream]`).
pub fn upstreams(s: &mut Settings, f: impl Fn(&mut modelcache::config::UpstreamSettings)) {
    f(&mut s.upstream);
    for t in &mut s.tenants {
        f(&mut t.upstream);
    }
}

// ------------------------------------------------------------------ in process

pub fn hash_embedder() -> EmbedderFactory {
    Arc::new(|| Ok(Box::new(HashEmbedder::new(1024)) as Box<dyn Embedder>))
}

/// A gateway to start in this process: by default with the hashing
/// embedder (logic tests) and the store its settings name.
pub struct Gateway {
    settings: Settings,
    options: AppOptions,
}

impl Gateway {
    pub fn new(settings: Settings) -> Gateway {
        Gateway {
            settings,
            options: AppOptions {
                embedder: Some(hash_embedder()),
                store: None,
            },
        }
    }

    /// On `store` (a store test double) instead.
    pub fn store(mut self, store: Arc<dyn Store>) -> Gateway {
        self.options.store = Some(store);
        self
    }

    /// With `embedder` instead of the hashing one.
    pub fn embedder(mut self, embedder: EmbedderFactory) -> Gateway {
        self.options.embedder = Some(embedder);
        self
    }

    /// With the model its settings name (the real one from `models/`).
    pub fn real_model(mut self) -> Gateway {
        self.options.embedder = None;
        self
    }

    /// Starts it and waits until it is ready.
    pub async fn start(self) -> RunningApp {
        let app = app::start(self.settings, self.options).await.unwrap();
        app.wait_ready(Duration::from_secs(60)).await.unwrap();
        app
    }

    /// The `llm()` mock, a fresh data folder, and a gateway with the real
    /// model from `models/`.
    pub async fn with_mock_llm_real_model() -> (Mock, tempfile::TempDir, RunningApp) {
        let up = mock(llm()).await;
        let dir = tempfile::tempdir().unwrap();
        let app = Gateway::new(settings(&up.url(), dir.path()))
            .real_model()
            .start()
            .await;
        (up, dir, app)
    }

    /// The usual setup: the `llm()` mock, a fresh data folder, a gateway with
    /// the hashing embedder. Keep the folder alive as long as the gateway.
    pub async fn with_mock_llm() -> (Mock, tempfile::TempDir, RunningApp) {
        let up = mock(llm()).await;
        let dir = tempfile::tempdir().unwrap();
        let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
        (up, dir, app)
    }
}

// ------------------------------------------------------------------ the binary

/// The binary cargo built beside this test or bench.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelcache")
}

/// The binary a bench measures: `$MODELCACHE_BIN`, else
/// `$CARGO_TARGET_DIR/release/modelcache`, else the `modelcache` next to
/// this bench's own target folder, else `target/release/modelcache`. Warns
/// when a source file is newer (a stale build).
pub fn release_bin() -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("MODELCACHE_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!(
            "MODELCACHE_BIN={} does not exist; build it with `cargo build --release`",
            p.display()
        ));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        tried.push(PathBuf::from(dir).join("release/modelcache"));
    }
    // A bench runs from <target>/release/deps/<name>-<hash>.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(release) = exe.parent().and_then(Path::parent) {
            tried.push(release.join("modelcache"));
        }
    }
    tried.push(repo_root().join("target/release/modelcache"));
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        warn_if_stale(p);
        return Ok(p.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "the release binary is missing (looked for {}); run `cargo build --release` first \
         or set MODELCACHE_BIN",
        list.join(", ")
    ))
}

/// Warns when a source file is newer than the binary (a stale build).
fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![repo_root().join("src")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(t);
            }
        }
    }
    if newest > built {
        eprintln!(
            "warning: {} is older than src/; run `cargo build --release` to measure the current code",
            bin.display()
        );
    }
}

/// Runs `modelcache check-config --config path` with extra environment.
pub fn check_config(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(bin())
        .args(["check-config", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

type Configure = Box<dyn FnOnce(&mut Command)>;

/// `modelcache serve --config config` to start as a child process: on
/// ephemeral ports, with data under `dir/data`, its logs in `dir/log` at
/// `RUST_LOG=debug`, from the repository root (where `models/` is).
pub struct Binary {
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rust_log: String,
    only_defaults: bool,
    ready_within: Duration,
    configure: Vec<Configure>,
}

impl Binary {
    pub fn serve(config: &Path, dir: &Path) -> Binary {
        Binary {
            bin: PathBuf::from(bin()),
            config: config.to_path_buf(),
            dir: dir.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            rust_log: "debug".into(),
            only_defaults: false,
            ready_within: Duration::from_secs(60),
            configure: Vec::new(),
        }
    }

    /// Runs `bin` instead of the binary cargo built for the tests.
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Binary {
        self.bin = bin.into();
        self
    }

    /// Adds command-line arguments (after the harness's own).
    pub fn args(mut self, args: &[&str]) -> Binary {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Binary {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds environment variables.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Binary {
        for (k, v) in env {
            self = self.env(k, v);
        }
        self
    }

    /// `RUST_LOG` of the child (`debug` unless set).
    pub fn rust_log(mut self, filter: &str) -> Binary {
        self.rust_log = filter.to_string();
        self
    }

    /// Drops every `MODELCACHE_*` variable this process inherited, so that
    /// only the config and [`Binary::env`] speak.
    pub fn only_defaults(mut self) -> Binary {
        self.only_defaults = true;
        self
    }

    /// How long it may take to be ready (60 s unless set).
    pub fn ready_within(mut self, within: Duration) -> Binary {
        self.ready_within = within;
        self
    }

    /// Changes the command before it is spawned (limits, `pre_exec`...).
    pub fn configure(mut self, f: impl FnOnce(&mut Command) + 'static) -> Binary {
        self.configure.push(Box::new(f));
        self
    }

    /// Spawns it and waits until its admin listener says ready; panics
    /// with its log if it exits or is not ready in time.
    pub async fn start(self) -> Running {
        let log = self.dir.join("log");
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(repo_root())
            .args(["serve", "--config"])
            .arg(&self.config)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.dir.join("data"))
            .args(&self.args);
        if self.only_defaults {
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("MODELCACHE_") {
                    cmd.env_remove(k);
                }
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for f in self.configure {
            f(&mut cmd);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        let addrs = wait_listening(&mut child, self.ready_within).await;
        let mut running = Running {
            child,
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
        };
        match addrs {
            Ok((proxy, admin)) => {
                running.proxy = proxy;
                running.admin = admin;
                running
            }
            Err(e) => panic!("{e}; the gateway's log ends:\n{}", running.log_tail(40)),
        }
    }
}

/// A `modelcache serve` child process; killed if dropped still running.
pub struct Running {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// How long [`Running::terminate`] waits after SIGTERM before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(60);

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// SIGTERM, then its exit status (SIGKILL if it has not stopped within
    /// a minute).
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("warning: the gateway ignored SIGTERM for {STOP_WITHIN:?}; killing it");
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// SIGTERM; it must exit cleanly. Its log.
    pub async fn stop(mut self) -> String {
        let status = self.terminate().await;
        assert!(status.success(), "exit status {status}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The addresses a `modelcache serve` child prints on stdout (proxy, admin),
/// once its admin listener says ready. Its stdout is read to the end from
/// then on, so that it never fills.
pub async fn listening(child: &mut Child) -> (SocketAddr, SocketAddr) {
    wait_listening(child, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_listening(
    child: &mut Child,
    within: Duration,
) -> Result<(SocketAddr, SocketAddr), String> {
    let deadline = Instant::now() + within;
    let stdout = child.stdout.take().ok_or("stdout is not piped")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let exited = |child: &mut Child| -> Result<(), String> {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("the gateway exited ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("the gateway was not ready within {within:?}"));
        }
        Ok(())
    };
    let prefixes = [
        "modelcache: proxy listening on http://",
        "modelcache: admin listening on http://",
    ];
    let mut addrs = Vec::new();
    while addrs.len() < prefixes.len() {
        match lines.try_recv() {
            Ok(line) => {
                let rest = line
                    .strip_prefix(prefixes[addrs.len()])
                    .ok_or_else(|| format!("unexpected line {line}"))?;
                let addr: SocketAddr = rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("no address in {line}"))?;
                addrs.push(addr);
            }
            // Nothing yet, or stdout closed (then it is exiting).
            Err(_) => {
                exited(child)?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let (proxy, admin) = (addrs[0], addrs[1]);
    let client = client();
    loop {
        if let Ok(got) = Call::get("/readyz").try_send_on(&client, admin).await {
            if got.status == 200 {
                return Ok((proxy, admin));
            }
        }
        exited(child)?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ a process's resources

/// A field of /proc/<pid>/status as a number: kB for VmRSS and VmHWM, a
/// count for Threads.
pub fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of the process `pid`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat")))
}

/// User + system CPU time from a `stat` file of /proc (a process's or a
/// thread's).
pub fn stat_cpu(path: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}
