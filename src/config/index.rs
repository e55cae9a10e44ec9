//! `[index]`: where the vector index lives (in each replica's memory, or in
//! a Milvus collection that replicas share).
//!
//! Owns the raw section, the typed settings and their `load()`. It must never
//! connect to Milvus: it only checks what the file names.

use std::{collections::HashMap, time::Duration};

use serde::Deserialize;

use super::{duration, Errors};

/// `[index]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndex {
    /// `usearch` (in memory, snapshotted in `data_dir`) or `milvus`.
    #[serde(default = "d_index_backend")]
    pub backend: String,
    /// Milvus's address, e.g. `http://127.0.0.1:19530`.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding Milvus's address.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The Milvus collection every tenant's vectors go to.
    #[serde(default)]
    pub collection: Option<String>,
    /// The longest a lookup waits for Milvus before it is a miss.
    #[serde(default)]
    pub search_timeout: Option<String>,
    /// Index writes that may wait while Milvus is away.
    #[serde(default)]
    pub queue: Option<usize>,
}

defaults! {
    d_index_backend: String = "usearch".into();
}

default_from_serde!(RawIndex);

/// Where the vector index lives.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexBackend {
    /// usearch, one index per tenant in each replica's memory (the default).
    Usearch,
    /// One Milvus collection shared by every replica.
    Milvus {
        /// `http://host:port`.
        url: String,
        /// The collection.
        collection: String,
        /// The longest a lookup waits for a search.
        search_timeout: Duration,
        /// Index writes that may wait while Milvus is away.
        queue: usize,
    },
}

/// `[index]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSettings {
    /// Where the vector index lives.
    pub backend: IndexBackend,
}

/// How long a lookup waits for Milvus unless `search_timeout` says otherwise.
pub const MILVUS_SEARCH_TIMEOUT: Duration = Duration::from_millis(500);
/// How many index writes may wait for Milvus unless `queue` says otherwise.
pub const MILVUS_QUEUE: usize = 100_000;

/// `[index]` into [`IndexSettings`].
pub(super) fn load(
    errs: &mut Errors,
    raw: &RawIndex,
    env: &HashMap<String, String>,
) -> IndexSettings {
    let backend = match raw.backend.as_str() {
        "usearch" => {
            for (key, set) in [
                ("url", raw.url.is_some()),
                ("url_env", raw.url_env.is_some()),
                ("collection", raw.collection.is_some()),
                ("search_timeout", raw.search_timeout.is_some()),
                ("queue", raw.queue.is_some()),
            ] {
                if set {
                    errs.push(
                        &format!("index.{key}"),
                        "only used with backend = \"milvus\"",
                    );
                }
            }
            IndexBackend::Usearch
        }
        "milvus" => {
            let url = super::url_or_env(
                errs,
                env,
                "index",
                (&raw.url, &raw.url_env),
                ("backend = \"milvus\"", "url = \"http://127.0.0.1:19530\""),
            )
            .map(|u| u.trim().to_string());
            let url = url.filter(|u| {
                let ok = u.starts_with("http://") || u.starts_with("https://");
                if !ok {
                    errs.push(
                        "index.url",
                        "expected http://host:port (Milvus's RESTful API, port 19530 by default)",
                    );
                }
                ok
            });
            let collection = raw
                .collection
                .clone()
                .unwrap_or_else(|| "modelcache".to_string());
            // NOTE: Milvus allows letters, digits and underscores, starting
            // with a letter or underscore; the name also goes into a URL.
            let valid = collection
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && collection
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && collection.len() <= 255;
            if !valid {
                errs.push(
                    "index.collection",
                    "letters, digits and underscores, starting with a letter or underscore",
                );
            }
            let search_timeout = raw
                .search_timeout
                .as_deref()
                .map_or(MILVUS_SEARCH_TIMEOUT, |s| {
                    duration(errs, "index.search_timeout", s)
                });
            if search_timeout.is_zero() {
                errs.push("index.search_timeout", "must be longer than 0");
            }
            let queue = raw.queue.unwrap_or(MILVUS_QUEUE);
            if queue == 0 {
                errs.push("index.queue", "must be at least 1");
            }
            match url {
                Some(url) => IndexBackend::Milvus {
                    url,
                    collection,
                    search_timeout,
                    queue,
                },
                None => IndexBackend::Usearch,
            }
        }
        other => {
            errs.push(
                "index.backend",
                format!("`{other}`: expected usearch or milvus"),
            );
            IndexBackend::Usearch
        }
    };
    IndexSettings { backend }
}

#[cfg(test)]
mod tests {
    use super::super::{from_str, with_env};
    use super::*;

    #[test]
    fn usearch_is_the_default_and_takes_no_milvus_keys() {
        assert_eq!(from_str("").unwrap().index.backend, IndexBackend::Usearch);
        let err = from_str("[index]\ncollection = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("index.collection") && err.contains("milvus"),
            "{err}"
        );
    }

    #[test]
    fn milvus_needs_an_http_url_and_has_defaults() {
        let s =
            from_str("[index]\nbackend = \"milvus\"\nurl = \"http://127.0.0.1:19530\"\n").unwrap();
        assert_eq!(
            s.index.backend,
            IndexBackend::Milvus {
                url: "http://127.0.0.1:19530".into(),
                collection: "modelcache".into(),
                search_timeout: MILVUS_SEARCH_TIMEOUT,
                queue: MILVUS_QUEUE,
            }
        );
        let s = with_env(
            "[index]\nbackend = \"milvus\"\nurl_env = \"MV\"\ncollection = \"c_1\"\nsearch_timeout = \"2s\"\nqueue = 5\n",
            &[("MV", "http://milvus:19530 ")],
        )
        .unwrap();
        assert_eq!(
            s.index.backend,
            IndexBackend::Milvus {
                url: "http://milvus:19530".into(),
                collection: "c_1".into(),
                search_timeout: Duration::from_secs(2),
                queue: 5,
            }
        );
        for (text, needle) in [
            ("[index]\nbackend = \"milvus\"\n", "index.url"),
            (
                "[index]\nbackend = \"milvus\"\nurl = \"127.0.0.1:19530\"\n",
                "http://host:port",
            ),
            (
                "[index]\nbackend = \"milvus\"\nurl_env = \"NOPE\"\n",
                "NOPE is not set",
            ),
            (
                "[index]\nbackend = \"milvus\"\nurl = \"http://m\"\ncollection = \"a-b\"\n",
                "index.collection",
            ),
            (
                "[index]\nbackend = \"milvus\"\nurl = \"http://m\"\nsearch_timeout = \"0s\"\n",
                "index.search_timeout",
            ),
            (
                "[index]\nbackend = \"milvus\"\nurl = \"http://m\"\nqueue = 0\n",
                "index.queue",
            ),
            (
                "[index]\nbackend = \"faiss\"\n",
                "expected usearch or milvus",
            ),
        ] {
            let err = from_str(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_environment_sets_index_keys() {
        let s = with_env(
            "",
            &[
                ("MODELCACHE_INDEX_BACKEND", "milvus"),
                ("MODELCACHE_INDEX_URL", "http://m:19530"),
            ],
        )
        .unwrap();
        assert!(matches!(s.index.backend, IndexBackend::Milvus { .. }));
    }
}
