//! The command line: `modelcache serve`, `modelcache eval`,
//! `modelcache import` and `modelcache check-config`.
//!
//! Owns flag parsing and turning flags into config overrides. It must never
//! hold logic of its own beyond that: `app` runs, `eval` measures, `import`
//! moves ModelCache's answers in, `config` validates.

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
    /// Measure the cache's lookups on labelled pairs (precision, recall,
    /// false-positive rate per category; --sweep recommends thresholds).
    Eval(EvalArgs),
    /// Copy the answers of a ModelCache MySQL database into a tenant, keyed
    /// and embedded as the gateway keys and embeds them.
    Import(ImportArgs),
    /// Validate a config file and print every error with its key path.
    CheckConfig {
        /// The file to check.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
}

/// Flags of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Labelled pairs, one JSON object per line (see shared/eval/README.md).
    pub pairs: PathBuf,
    /// Config file whose tenant policy and embedding model are measured
    /// [default: ./config.toml if present, else built-in defaults].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The tenant whose policy is measured [default: the catch-all tenant, else the first].
    #[arg(long)]
    pub tenant: Option<String>,
    /// Where to write one prediction per pair ({"id", "hit", "score", "failed"}).
    #[arg(long, default_value = "eval-predictions.jsonl")]
    pub out: PathBuf,
    /// Print a threshold table and recommend a threshold for --target-fpr.
    #[arg(long)]
    pub sweep: bool,
    /// The largest false-positive rate a recommended threshold may have.
    #[arg(long, default_value_t = 0.02)]
    pub target_fpr: f64,
    /// Also print held-out figures: each of K folds scored with every
    /// threshold moved to --target-fpr on the other K-1 folds.
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..))]
    pub folds: Option<u16>,
    /// Send each pair as a request of this API, keyed as the proxy keys it:
    /// chat, messages (Anthropic) or responses (OpenAI).
    #[arg(long, default_value = "chat", value_parser = ["chat", "messages", "responses"])]
    pub route: String,
}

/// Flags of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The ModelCache database: mysql://user:password@host:3306/db (its
    /// table modelcache_llm_answer).
    #[arg(long, value_name = "URL")]
    pub from_modelcache: String,
    /// Config file whose store and embedding model receive the answers
    /// [default: ./config.toml if present, else built-in defaults].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The tenant that receives them [default: the catch-all tenant, else the first].
    #[arg(long)]
    pub tenant: Option<String>,
    /// The data folder (SQLite and the vector indexes), overriding the config's.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
    /// Upstream origin, e.g. `https://api.openai.com` or `http://127.0.0.1:9000`.
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
