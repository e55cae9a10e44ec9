//! The command line: `modelcache serve` and `modelcache check-config`.
//!
//! Owns flag parsing and turning flags into config overrides. It must never
//! hold logic of its own beyond that: `app` runs, `config` validates.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;

/// A semantic-cache gateway for OpenAI-compatible LLM APIs.
#[derive(Debug, Parser)]
#[command(name = "modelcache", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate a config file and print every error with its key path.
    CheckConfig {
        /// The file to check.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
}

/// Flags of `serve`; each overrides the config file and the environment.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file [default: ./config.toml if present, else built-in defaults].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Proxy listen address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin listen address, e.g. 127.0.0.1:5000.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Upstream origin, e.g. https://api.openai.com or http://127.0.0.1:9000.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Data folder for SQLite and the vector indexes.
    #[arg(long)]
    pub data_dir: Option<String>,
}

impl ServeArgs {
    /// The overrides these flags carry.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            upstream: self.upstream.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}
