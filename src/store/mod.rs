//! The durable store of cache entries: the source of truth.
//!
//! Owns the [`Store`] seam and the entry types. The embedded implementation is
//! SQLite ([`sqlite::SqliteStore`]); a map-backed one serves tests. Every query
//! is scoped by tenant with an equality filter. Implementations are blocking:
//! callers run them on the write-back thread or under `spawn_blocking`, never
//! on a runtime thread.

pub mod memory;
pub mod sqlite;

/// Store failures. None of them fails a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Filesystem trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A lock was poisoned by a panic elsewhere.
    #[error("store lock poisoned")]
    Poisoned,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Stable id; never reused.
    pub id: i64,
    /// Owning tenant.
    pub tenant: String,
    /// Partition hash (see `keying`).
    pub partition: String,
    /// Exact-match hash of partition and text.
    pub exact_hash: String,
    /// `chat` or `completions`.
    pub endpoint: String,
    /// Requested model.
    pub model: String,
    /// Key text, ModelCache style.
    pub text: String,
    /// Canonical answer-shaping parameters.
    pub params: String,
    /// The complete upstream answer (`chat.completion` or `text_completion` JSON).
    pub answer: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Times served.
    pub hits: i64,
}

/// An entry to insert. Inserting the same (tenant, exact hash) again replaces
/// the answer and keeps the id.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Owning tenant.
    pub tenant: String,
    /// Partition hash.
    pub partition: String,
    /// Exact-match hash.
    pub exact_hash: String,
    /// `chat` or `completions`.
    pub endpoint: String,
    /// Requested model.
    pub model: String,
    /// Key text.
    pub text: String,
    /// Canonical parameters.
    pub params: String,
    /// Answer JSON.
    pub answer: String,
    /// Unit embedding, if the entry takes part in semantic matching.
    pub embedding: Option<Vec<f32>>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
}

impl NewEntry {
    /// The stored form of this entry under `id`.
    pub fn to_entry(&self, id: i64, hits: i64) -> Entry {
        Entry {
            id,
            tenant: self.tenant.clone(),
            partition: self.partition.clone(),
            exact_hash: self.exact_hash.clone(),
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            text: self.text.clone(),
            params: self.params.clone(),
            answer: self.answer.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            hits,
        }
    }
}

/// One served hit, for counts and the hit log.
#[derive(Debug, Clone)]
pub struct HitRecord {
    /// Entry served.
    pub entry_id: i64,
    /// Tenant.
    pub tenant: String,
    /// The probe's key text.
    pub probe: String,
    /// Similarity (1 for exact).
    pub similarity: f32,
    /// Unix milliseconds.
    pub at: i64,
}

/// An entry removed by a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Tenant.
    pub tenant: String,
    /// Entry id.
    pub id: i64,
    /// Exact hash (to drop it from the exact layer).
    pub exact_hash: String,
}

/// Entry caps for a sweep: per tenant, and for tenants not listed (no longer
/// in the config).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Cap per tenant.
    pub per_tenant: std::collections::HashMap<String, u64>,
    /// Cap of any other tenant.
    pub default: u64,
}

impl Limits {
    /// The cap of `tenant`.
    pub fn of(&self, tenant: &str) -> u64 {
        self.per_tenant.get(tenant).copied().unwrap_or(self.default)
    }
}

/// Durable entry storage.
pub trait Store: Send + Sync {
    /// Inserts or replaces entries in one transaction; returns their ids.
    fn insert_batch(&self, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError>;
    /// One entry by id.
    fn get(&self, id: i64) -> Result<Option<Entry>, StoreError>;
    /// One entry by tenant and exact hash.
    fn get_exact(&self, tenant: &str, exact_hash: &str) -> Result<Option<Entry>, StoreError>;
    /// Bumps hit counts and appends to the hit log.
    fn record_hits(&self, hits: &[HitRecord]) -> Result<(), StoreError>;
    /// (id, partition tag) of every entry of `tenant` that has an embedding.
    fn index_rows(&self, tenant: &str) -> Result<Vec<(u64, u64)>, StoreError>;
    /// The stored embedding of an entry.
    fn embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError>;
    /// Deletes expired entries, then in each tenant the least recently used
    /// past its cap.
    fn sweep(&self, now_ms: i64, limits: &Limits) -> Result<Vec<Removed>, StoreError>;
    /// Entries per tenant.
    fn counts(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Tenants that have entries.
    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.counts()?.into_iter().map(|(t, _)| t).collect())
    }
}

/// f32 vector to little-endian bytes.
pub fn vec_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes to an f32 vector.
pub fn blob_to_vec(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
pub(crate) mod suite {
    //! One behavioural suite, run against every implementation.
    use super::*;

    pub fn entry(tenant: &str, hash: &str, created: i64, ttl: i64) -> NewEntry {
        NewEntry {
            tenant: tenant.into(),
            partition: "p".repeat(64),
            exact_hash: hash.into(),
            endpoint: "chat".into(),
            model: "m".into(),
            text: format!("user###{hash}"),
            params: "{}".into(),
            answer: format!("{{\"a\":\"{hash}\"}}"),
            embedding: Some(vec![0.5, 0.5]),
            created_at: created,
            expires_at: created + ttl,
        }
    }

    pub fn run(s: &dyn Store) {
        let ids = s
            .insert_batch(&[entry("a", "h1", 1000, 100), entry("b", "h1", 1000, 100)])
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1], "same hash in two tenants is two entries");
        let a = s.get_exact("a", "h1").unwrap().unwrap();
        assert_eq!(a.tenant, "a");
        assert!(s.get_exact("c", "h1").unwrap().is_none());
        // Upsert keeps the id and replaces the answer.
        let mut again = entry("a", "h1", 2000, 100);
        again.answer = "{\"a\":\"new\"}".into();
        let id2 = s.insert_batch(&[again]).unwrap();
        assert_eq!(id2[0], ids[0]);
        assert_eq!(s.get(ids[0]).unwrap().unwrap().answer, "{\"a\":\"new\"}");
        assert_eq!(s.embedding(ids[0]).unwrap().unwrap(), vec![0.5, 0.5]);
        assert_eq!(s.index_rows("a").unwrap().len(), 1);
        s.record_hits(&[HitRecord {
            entry_id: ids[0],
            tenant: "a".into(),
            probe: "x".into(),
            similarity: 0.95,
            at: 2500,
        }])
        .unwrap();
        assert_eq!(s.get(ids[0]).unwrap().unwrap().hits, 1);
        let cap = |n: u64| Limits {
            per_tenant: Default::default(),
            default: n,
        };
        // b expires at 1100; a (re-created at 2000) at 2100.
        let removed = s.sweep(1500, &cap(100)).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].tenant, "b");
        assert!(s.get(ids[1]).unwrap().is_none());
        // LRU: the entry hit most recently survives a cap of one.
        let more = s
            .insert_batch(&[
                entry("a", "h2", 2000, 10_000),
                entry("a", "h3", 2001, 10_000),
            ])
            .unwrap();
        s.record_hits(&[HitRecord {
            entry_id: more[0],
            tenant: "a".into(),
            probe: "x".into(),
            similarity: 1.0,
            at: 3000,
        }])
        .unwrap();
        let removed = s.sweep(2050, &cap(1)).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(s.get(more[0]).unwrap().is_some());
        assert_eq!(s.counts().unwrap(), vec![("a".to_string(), 1)]);
        // Caps are per tenant: a full tenant never evicts another's entries.
        s.insert_batch(&[
            entry("b", "b1", 2100, 10_000),
            entry("b", "b2", 2101, 10_000),
            entry("c", "c1", 2102, 10_000),
        ])
        .unwrap();
        let limits = Limits {
            per_tenant: [("b".to_string(), 1), ("c".to_string(), 1)].into(),
            default: 5,
        };
        let removed = s.sweep(2200, &limits).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].tenant, "b");
        assert_eq!(removed[0].exact_hash, "b1");
        assert_eq!(
            s.counts().unwrap(),
            vec![
                ("a".to_string(), 1),
                ("b".to_string(), 1),
                ("c".to_string(), 1)
            ]
        );
        // Ids are never reused.
        let later = s.insert_batch(&[entry("a", "h9", 4000, 100)]).unwrap();
        assert!(later[0] > more[1]);
    }
}
