//! The `modelcache` binary: parses flags, loads config, runs the app until
//! SIGTERM or Ctrl-C, then drains.

use std::process::ExitCode;

use clap::Parser;
use modelcache::{
    app::{self, AppOptions},
    cli::{Cli, Command},
    config,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        // NOTE: colours only on a terminal; a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::CheckConfig { config: path } => {
            match config::load(Some(&path), std::env::vars(), &config::Overrides::default()) {
                Ok(s) => {
                    println!("{}: ok", path.display());
                    for t in &s.tenants {
                        println!("  {}", describe(t));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for line in e.to_string().lines() {
                        eprintln!("{}: {line}", path.display());
                    }
                    ExitCode::from(2)
                }
            }
        }
        Command::Eval(args) => eval(args),
        Command::Import(args) => import(args),
        Command::Serve(args) => {
            // NOTE: an explicit --config must exist; the implicit ./config.toml may not.
            let default = std::path::PathBuf::from("config.toml");
            let path = match &args.config {
                Some(p) => Some(p.as_path()),
                None => default.exists().then_some(default.as_path()),
            };
            let settings = match config::load(path, std::env::vars(), &args.overrides()) {
                Ok(s) => s,
                Err(e) => {
                    let from = path.map_or("defaults".into(), |p| p.display().to_string());
                    for line in e.to_string().lines() {
                        eprintln!("config error: {from}: {line}");
                    }
                    return ExitCode::from(2);
                }
            };
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let reload_from = ReloadFrom {
                path: path.map(std::path::Path::to_path_buf),
                overrides: args.overrides(),
            };
            rt.block_on(serve(settings, reload_from))
        }
    }
}

/// The multi-threaded runtime, or `None` after saying why not.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the runtime: {e}"))
        .ok()
}

/// `modelcache eval`.
/// The settings of `--config` (or ./config.toml, or the defaults) and the
/// tenant `--tenant` names (or the catch-all, or the first); or the exit
/// code after saying what is wrong.
fn settings_and_tenant(
    config_path: Option<&std::path::Path>,
    tenant: Option<&str>,
    overrides: &config::Overrides,
) -> Result<(config::Settings, config::TenantSettings), ExitCode> {
    let default = std::path::PathBuf::from("config.toml");
    let path = match config_path {
        Some(p) => Some(p),
        None => default.exists().then_some(default.as_path()),
    };
    let settings = match config::load(path, std::env::vars(), overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("config error: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let found = match tenant {
        Some(name) => settings.tenants.iter().find(|t| t.name == name),
        None => settings
            .tenants
            .iter()
            .find(|t| t.is_catch_all())
            .or(settings.tenants.first()),
    };
    let Some(found) = found.cloned() else {
        eprintln!("no tenant {:?} in the config", tenant.unwrap_or_default());
        return Err(ExitCode::from(2));
    };
    Ok((settings, found))
}

fn import(args: modelcache::cli::ImportArgs) -> ExitCode {
    let overrides = config::Overrides {
        data_dir: args
            .data_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        ..config::Overrides::default()
    };
    let (settings, tenant) =
        match settings_and_tenant(args.config.as_deref(), args.tenant.as_deref(), &overrides) {
            Ok(v) => v,
            Err(code) => return code,
        };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let name = tenant.name.clone();
    let done = rt.block_on(modelcache::import::import(
        std::sync::Arc::new(settings),
        name.clone(),
        args.from_modelcache,
    ));
    match done {
        Ok(summary) => {
            println!("{}", summary.report(&name));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("import failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn eval(args: modelcache::cli::EvalArgs) -> ExitCode {
    let (settings, tenant) = match settings_and_tenant(
        args.config.as_deref(),
        args.tenant.as_deref(),
        &config::Overrides::default(),
    ) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let pairs = match modelcache::eval::read_pairs(&args.pairs) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        let s = settings.clone();
        let cache = tokio::task::spawn_blocking(move || modelcache::eval::open_cache(&s, None))
            .await
            .map_err(|e| e.to_string())??;
        let bar = modelcache::eval::ProgressBar::new(pairs.len(), false);
        let started = std::time::Instant::now();
        let route = match args.route.as_str() {
            "messages" => modelcache::keying::Endpoint::Messages,
            "responses" => modelcache::keying::Endpoint::Responses,
            _ => modelcache::keying::Endpoint::Chat,
        };
        let preds =
            modelcache::eval::run_on(route, &cache, &tenant.name, &tenant.policy, &pairs, |n| {
                bar.set(n)
            })
            .await?;
        cache.flush(std::time::Duration::from_secs(5)).await;
        Ok::<_, String>((preds, started.elapsed()))
    });
    let (preds, took) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("eval failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lines: String = preds
        .iter()
        .filter_map(|p| serde_json::to_string(p).ok())
        .map(|l| l + "\n")
        .collect();
    if let Err(e) = std::fs::write(&args.out, lines) {
        eprintln!("{}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let p = &tenant.policy;
    println!(
        "{} pairs from {}, tenant {} (threshold {}, long_threshold {} over {} words), {:.1} s",
        pairs.len(),
        args.pairs.display(),
        tenant.name,
        p.threshold,
        p.long_threshold,
        p.long_text_words,
        took.as_secs_f64()
    );
    println!("predictions written to {}", args.out.display());
    println!();
    print!("{}", modelcache::eval::report(&pairs, &preds));
    if let Some(k) = args.folds {
        println!();
        print!(
            "{}",
            modelcache::eval::folds_report(&pairs, &preds, k.into(), args.target_fpr)
        );
    }
    if args.sweep {
        println!();
        print!(
            "{}",
            modelcache::eval::sweep(&pairs, &preds, args.target_fpr)
        );
        let c = modelcache::eval::calibrate(&pairs, &preds, args.target_fpr);
        println!(
            "calibrated (max_wrong_rate = {}): every threshold {:+.3}, wrong answers {:.1}%, recall {:.1}%",
            args.target_fpr,
            c.offset,
            c.wrong_rate * 100.0,
            c.recall * 100.0
        );
    }
    ExitCode::SUCCESS
}

/// One line about a tenant for `check-config`; never a secret.
fn describe(t: &config::TenantSettings) -> String {
    let mut by = Vec::new();
    if !t.key_hashes.is_empty() {
        by.push(format!("{} key(s)", t.key_hashes.len()));
    }
    if let Some((n, v)) = &t.match_header {
        by.push(format!("header {n}: {v}"));
    }
    if !t.match_models.is_empty() {
        by.push(format!("models {}", t.match_models.join(", ")));
    }
    if by.is_empty() {
        by.push("every caller".to_string());
    }
    format!(
        "tenant {}: matched by {}; auth {:?}; upstream {}; cache {:?}, ttl {:?}, threshold {}/{}",
        t.name,
        by.join(" or "),
        t.auth,
        t.upstream.url,
        t.policy.mode,
        t.policy.ttl,
        t.policy.threshold,
        t.policy.long_threshold
    )
}

/// Where SIGHUP re-reads the configuration from.
struct ReloadFrom {
    path: Option<std::path::PathBuf>,
    overrides: config::Overrides,
}

async fn serve(settings: config::Settings, from: ReloadFrom) -> ExitCode {
    let upstream = settings.upstream.url.clone();
    let mut running = match app::start(settings, AppOptions::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "modelcache: proxy listening on http://{} (upstream {upstream})",
        running.proxy_addr
    );
    println!(
        "modelcache: admin listening on http://{}",
        running.admin_addr
    );
    let reloader = running.reloader();
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        while hup.recv().await.is_some() {
            // NOTE: an invalid file is rejected whole; the running config stays.
            match config::load(from.path.as_deref(), std::env::vars(), &from.overrides) {
                Ok(s) => {
                    if let Err(e) = reloader.reload(&s) {
                        tracing::error!(error = %e, "reload failed; keeping the running configuration");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected: invalid configuration; keeping the running one");
                }
            }
        }
    });
    let stop = running.take_shutdown();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
    });
    running.wait().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
