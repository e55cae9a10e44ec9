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
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let reload_from = ReloadFrom {
                path: path.map(std::path::Path::to_path_buf),
                overrides: args.overrides(),
            };
            rt.block_on(serve(settings, reload_from))
        }
    }
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
