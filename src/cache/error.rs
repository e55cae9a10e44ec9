//! The cache's failures: one enum, with a short kind for logs and metrics.
//!
//! Owns what can fail below the facade: the store, an index, the embedder,
//! the writer thread, the file system. It must never be shown to a client:
//! a lookup turns every failure into a miss.

use std::path::PathBuf;

/// A failure of the cache facade: the store, an index, the embedder or the
/// writer thread. Callers log it and count it; a lookup never returns one.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A vector index failed.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    /// The vector index of a tenant could not be opened.
    #[error("cannot open the vector index of tenant {0}")]
    IndexUnavailable(String),
    /// The embedder failed.
    #[error(transparent)]
    Embedding(#[from] crate::embed::EmbedError),
    /// The write-back thread has stopped (the cache is closing).
    #[error("the write-back thread has stopped")]
    Stopped,
    /// No such entry in that tenant.
    #[error("no entry {entry} in tenant {tenant}")]
    NoEntry {
        /// The entry asked for.
        entry: i64,
        /// The tenant it was asked in.
        tenant: String,
    },
    /// A file or folder of the cache could not be made.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl CacheError {
    /// A low-cardinality name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::Store(_) => "store",
            CacheError::Index(_) | CacheError::IndexUnavailable(_) => "index",
            CacheError::Embedding(_) => "embedding",
            CacheError::Stopped => "stopped",
            CacheError::NoEntry { .. } => "not_found",
            CacheError::Io { .. } => "io",
            CacheError::Task(_) => "task",
        }
    }
}
