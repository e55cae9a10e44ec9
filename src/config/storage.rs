//! `[storage]`: the data folder, the vector index settings and the store
//! backend (SQLite, PostgreSQL or MySQL).
//!
//! Owns the raw section, the typed settings and their `load()`. It must never
//! open a database: it only checks what the file names.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{duration, Errors, Overrides, Secret};

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Folder for SQLite and the vector indexes.
    #[serde(default = "d_data_dir")]
    pub data_dir: String,
    /// How often dirty vector indexes are saved.
    #[serde(default = "d_index_save_interval")]
    pub index_save_interval: String,
    /// `f16`, `i8` or `f32`.
    #[serde(default = "d_index_quantization")]
    pub index_quantization: String,
    /// `sqlite` (embedded, in `data_dir`), `postgres` or `mysql`.
    #[serde(default = "d_storage_backend")]
    pub backend: String,
    /// The database URL (`backend = "postgres"` or `"mysql"`); prefer `url_env`.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the database URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// A PostgreSQL schema of its own for the tables (default: the user's);
    /// with MySQL, a database of its own (created if missing) instead of
    /// the URL's.
    #[serde(default)]
    pub schema: Option<String>,
    /// How often replicas on MySQL read the change log (MySQL cannot
    /// notify), e.g. "100ms".
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// Wake replicas with LISTEN/NOTIFY (default true); false polls only,
    /// for poolers that cannot LISTEN (PgBouncer in transaction mode).
    #[serde(default)]
    pub notify: Option<bool>,
}

defaults! {
    d_data_dir: String = "./data".into();
    d_index_save_interval: String = "60s".into();
    d_index_quantization: String = "f16".into();
    d_storage_backend: String = "sqlite".into();
}

default_from_serde!(RawStorage);

/// How often replicas on MySQL read the change log, unless
/// `poll_interval` says otherwise.
pub const MYSQL_POLL: Duration = Duration::from_millis(100);

/// Scalar type used for vectors in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 32-bit floats.
    F32,
    /// Half precision: half the memory, no measurable loss for cosine.
    F16,
    /// 8-bit integers.
    I8,
}

/// Storage locations.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Data folder.
    pub data_dir: PathBuf,
    /// Index save period.
    pub index_save_interval: Duration,
    /// Index scalar type.
    pub index_quantization: Quantization,
    /// Where entries live.
    pub backend: StorageBackend,
}

/// Where entries live.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageBackend {
    /// SQLite in `data_dir` (the default; nothing to run).
    Sqlite,
    /// A PostgreSQL database shared by replicas.
    Postgres {
        /// The connection URL (it may hold a password: never printed).
        url: Secret,
        /// A schema of its own, if set.
        schema: Option<String>,
        /// Replicas wake on LISTEN/NOTIFY (otherwise they only poll).
        notify: bool,
    },
    /// A MySQL, MariaDB or OceanBase database shared by replicas.
    Mysql {
        /// The connection URL (it may hold a password: never printed).
        url: Secret,
        /// A database of its own, if set.
        database: Option<String>,
        /// How often replicas read the change log.
        poll_interval: Duration,
    },
}

/// `[storage]` into [`StorageSettings`]; `--data-dir` wins.
pub(super) fn load(
    errs: &mut Errors,
    st: &RawStorage,
    o: &Overrides,
    env: &HashMap<String, String>,
) -> StorageSettings {
    let storage = StorageSettings {
        data_dir: PathBuf::from(o.data_dir.as_deref().unwrap_or(&st.data_dir)),
        index_save_interval: duration(errs, "storage.index_save_interval", &st.index_save_interval),
        index_quantization: match st.index_quantization.as_str() {
            "f32" => Quantization::F32,
            "f16" => Quantization::F16,
            "i8" => Quantization::I8,
            other => {
                errs.push(
                    "storage.index_quantization",
                    format!("`{other}`: expected f32, f16 or i8"),
                );
                Quantization::F16
            }
        },
        backend: StorageBackend::Sqlite,
    };
    let storage = StorageSettings {
        backend: match st.backend.as_str() {
            "sqlite" => {
                for (key, set) in [
                    ("url", st.url.is_some()),
                    ("url_env", st.url_env.is_some()),
                    ("schema", st.schema.is_some()),
                    ("notify", st.notify.is_some()),
                    ("poll_interval", st.poll_interval.is_some()),
                ] {
                    if set {
                        errs.push(
                            &format!("storage.{key}"),
                            "only used with backend = \"postgres\" or \"mysql\"",
                        );
                    }
                }
                StorageBackend::Sqlite
            }
            "postgres" => {
                if st.poll_interval.is_some() {
                    errs.push(
                        "storage.poll_interval",
                        "only used with backend = \"mysql\" (PostgreSQL replicas are notified; see notify)",
                    );
                }
                let url = database_url(errs, st, env, "postgres");
                match url {
                    Some(u)
                        if u.starts_with("postgres://")
                            || u.starts_with("postgresql://")
                            || u.contains('=') =>
                    {
                        StorageBackend::Postgres {
                            url: Secret(u),
                            schema: st.schema.clone(),
                            notify: st.notify.unwrap_or(true),
                        }
                    }
                    Some(_) => {
                        errs.push(
                            "storage.url",
                            "expected postgres://user:password@host:port/database",
                        );
                        StorageBackend::Sqlite
                    }
                    None => StorageBackend::Sqlite,
                }
            }
            "mysql" => {
                if st.notify.is_some() {
                    errs.push(
                        "storage.notify",
                        "only used with backend = \"postgres\" (MySQL replicas poll; see poll_interval)",
                    );
                }
                let poll_interval = match &st.poll_interval {
                    Some(p) => duration(errs, "storage.poll_interval", p),
                    None => MYSQL_POLL,
                };
                if poll_interval.is_zero() {
                    errs.push("storage.poll_interval", "must be longer than 0");
                }
                match database_url(errs, st, env, "mysql") {
                    Some(u) if u.starts_with("mysql://") => StorageBackend::Mysql {
                        url: Secret(u),
                        database: st.schema.clone(),
                        poll_interval,
                    },
                    Some(_) => {
                        errs.push(
                            "storage.url",
                            "expected mysql://user:password@host:port/database",
                        );
                        StorageBackend::Sqlite
                    }
                    None => StorageBackend::Sqlite,
                }
            }
            other => {
                errs.push(
                    "storage.backend",
                    format!("`{other}`: expected sqlite, postgres or mysql"),
                );
                StorageBackend::Sqlite
            }
        },
        ..storage
    };
    if storage.index_save_interval.is_zero() {
        errs.push("storage.index_save_interval", "must be longer than 0");
    }
    storage
}

/// The URL of a database backend, from `url` or the variable `url_env` names.
fn database_url(
    errs: &mut Errors,
    st: &RawStorage,
    env: &HashMap<String, String>,
    backend: &str,
) -> Option<String> {
    super::url_or_env(
        errs,
        env,
        "storage",
        (&st.url, &st.url_env),
        (
            &format!("backend = \"{backend}\""),
            "url_env = \"DATABASE_URL\"",
        ),
    )
}
