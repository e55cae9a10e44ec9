//! The durable store of cache entries: the source of truth.
//!
//! Owns the [`Store`] seam (the entry table, with the [`HitLog`] and the
//! reported [`Negatives`] fenced apart, and the [`ChangeLog`] a shared store
//! must provide), the entry types, and the shared suite every backend passes
//! (`store_suite!`). The implementations are SQLite
//! ([`sqlite::SqliteStore`], embedded, the default), PostgreSQL
//! ([`postgres::PgStore`], shared by replicas, with a change log), MySQL
//! ([`mysql::MySqlStore`], the same for MySQL, MariaDB and OceanBase, whose
//! change log is polled) and a
//! map ([`memory::MemoryStore`], for tests and `eval`). Every query is scoped
//! by tenant with an equality filter. A store must never judge a candidate or
//! touch the vector index, and must never run on a runtime thread: callers
//! use the write-back thread or `spawn_blocking`.

pub mod memory;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

/// Opens the store `[storage]` names: SQLite in the data folder (created if
/// missing), or a shared PostgreSQL or MySQL database (its migrations
/// applied). Blocking.
pub fn open(storage: &crate::config::StorageSettings) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    use crate::config::StorageBackend;
    use anyhow::Context;
    Ok(match &storage.backend {
        StorageBackend::Sqlite => {
            let data = &storage.data_dir;
            std::fs::create_dir_all(data)
                .with_context(|| format!("creating {}", data.display()))?;
            let path = data.join("modelcache.db");
            std::sync::Arc::new(
                sqlite::SqliteStore::open(&path, 4)
                    .with_context(|| format!("opening {}", path.display()))?,
            )
        }
        StorageBackend::Postgres {
            url,
            schema,
            notify,
        } => std::sync::Arc::new(
            postgres::PgStore::open(url.expose(), 4, schema.as_deref())
                .context("connecting to PostgreSQL (storage.url)")?
                .notify(*notify),
        ),
        StorageBackend::Mysql {
            url,
            database,
            poll_interval,
        } => std::sync::Arc::new(
            mysql::MySqlStore::open(url.expose(), 8, database.as_deref())
                .context("connecting to MySQL (storage.url)")?
                .poll_every(*poll_interval),
        ),
    })
}

/// Store failures. None of them fails a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Filesystem trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL reported an error (or is unreachable).
    #[error("postgres: {0}")]
    Postgres(String),
    /// MySQL (or MariaDB, OceanBase) reported an error, is unreachable or
    /// did not answer in time.
    #[error("mysql: {0}")]
    Mysql(String),
    /// The store is up but refused this data (a value it cannot hold, a
    /// broken constraint): trying again cannot help.
    #[error("rejected: {0}")]
    Rejected(String),
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
    /// Unix milliseconds of the last hit.
    pub last_hit_at: Option<i64>,
    /// How the entry was written.
    pub origin: Origin,
}

/// How an entry came into the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// An upstream answer to proxied traffic.
    #[default]
    Proxy,
    /// Inserted through the ModelCache API (`POST /modelcache`).
    Api,
}

impl Origin {
    /// Stable name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Proxy => "proxy",
            Origin::Api => "api",
        }
    }

    /// Parses the stored name; anything unknown is `Proxy`.
    pub fn parse(s: &str) -> Origin {
        if s == "api" {
            Origin::Api
        } else {
            Origin::Proxy
        }
    }
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
    /// How it was written.
    pub origin: Origin,
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
            last_hit_at: None,
            origin: self.origin,
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
    /// The id sent to the client in `x-modelcache-request-id` ("" if none).
    pub request_id: String,
}

/// One entry's share of a batch of hits: the count and the latest time,
/// so that a store bumps each entry's row once per batch, not once per hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitTotal<'a> {
    /// Entry served.
    pub entry_id: i64,
    /// Its tenant.
    pub tenant: &'a str,
    /// Hits in the batch.
    pub count: i64,
    /// The latest of them, Unix milliseconds.
    pub last_at: i64,
}

/// Folds a batch of hits into one total per entry, in first-hit order.
pub fn hit_totals(hits: &[HitRecord]) -> Vec<HitTotal<'_>> {
    let mut at: std::collections::HashMap<(i64, &str), usize> = std::collections::HashMap::new();
    let mut totals: Vec<HitTotal<'_>> = Vec::new();
    for h in hits {
        match at.get(&(h.entry_id, h.tenant.as_str())) {
            Some(&i) => {
                totals[i].count += 1;
                totals[i].last_at = totals[i].last_at.max(h.at);
            }
            None => {
                at.insert((h.entry_id, h.tenant.as_str()), totals.len());
                totals.push(HitTotal {
                    entry_id: h.entry_id,
                    tenant: &h.tenant,
                    count: 1,
                    last_at: h.at,
                });
            }
        }
    }
    totals
}

/// A probe reported as wrongly answered by an entry (`/admin/feedback`):
/// the entry must not answer questions closer to it than to its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Negative {
    /// The entry.
    pub entry_id: i64,
    /// Its tenant.
    pub tenant: String,
    /// The probe's key text.
    pub probe: String,
    /// The probe's unit embedding.
    pub embedding: Vec<f32>,
    /// Unix milliseconds.
    pub at: i64,
}

/// One change of a shared store, for replicas to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Increasing id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// The entry.
    pub entry_id: i64,
    /// Its exact hash.
    pub exact_hash: String,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What a change of the change log did to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Inserted, or replaced by an upsert.
    Insert,
    /// Deleted, truncated, expired or evicted.
    Remove,
    /// A probe it answered wrongly was reported (`/admin/feedback`).
    Negative,
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

/// One row of the hit log: a probe and the entry that answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct HitLogRow {
    /// Row id, newest highest.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Tenant.
    pub tenant: String,
    /// Entry served.
    pub entry_id: i64,
    /// The probe's key text.
    pub probe: String,
    /// The entry's key text, if the entry still exists.
    pub matched: Option<String>,
    /// The entry's model, if the entry still exists.
    pub model: Option<String>,
    /// Similarity (1 for exact).
    pub similarity: f32,
    /// The id sent to the client in `x-modelcache-request-id`.
    pub request_id: String,
}

/// A page request over entries, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Only this model's entries.
    pub model: Option<String>,
    /// Only entries whose key text contains this (case-insensitive for ASCII).
    pub text: Option<String>,
    /// Only entries with an id below this (the previous page's last id).
    pub before_id: Option<i64>,
    /// Most rows returned.
    pub limit: usize,
}

/// Stored figures of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantStats {
    /// Tenant.
    pub tenant: String,
    /// Entries stored.
    pub entries: u64,
    /// Hits counted on the stored entries.
    pub hits: u64,
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

/// An entry and its stored embedding (`None` when it has none).
pub type WithEmbedding = (Entry, Option<Vec<f32>>);

/// Durable entry storage: the entry table, with the hit log and the reported
/// probes fenced apart in traits of their own, and the change log a
/// capability a shared store must provide.
///
/// Adding a backend is: implement [`Store`], [`HitLog`] and [`Negatives`],
/// say in [`Store::change_log`] whether other processes write it, and add one
/// line to its test module (`crate::store::store_suite!(...)`).
pub trait Store: HitLog + Negatives + Send + Sync {
    /// Inserts or replaces entries in one transaction; returns their ids.
    fn insert_batch(&self, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError>;
    /// One entry by id.
    fn get(&self, id: i64) -> Result<Option<Entry>, StoreError>;
    /// One entry by tenant and exact hash.
    fn get_exact(&self, tenant: &str, exact_hash: &str) -> Result<Option<Entry>, StoreError>;
    /// (id, partition tag) of every entry of `tenant` that has an embedding.
    fn index_rows(&self, tenant: &str) -> Result<Vec<(u64, u64)>, StoreError>;
    /// The stored embedding of an entry.
    fn embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError>;
    /// One entry by id with its stored embedding (`None` when it has none):
    /// what a semantic candidate needs, in one read where the store can.
    fn get_with_embedding(&self, id: i64) -> Result<Option<WithEmbedding>, StoreError> {
        let Some(e) = self.get(id)? else {
            return Ok(None);
        };
        Ok(Some((e, self.embedding(id)?)))
    }
    /// This store's identity: a random id made once, when the store was
    /// created, and kept in it. An index snapshot names the store it was
    /// built from, so that a snapshot of another store is never loaded.
    fn store_id(&self) -> Result<String, StoreError>;
    /// The stored embeddings of `ids` (those that have one), in one read
    /// where the store can.
    fn embeddings(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<f32>)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(v) = self.embedding(id)? {
                out.push((id, v));
            }
        }
        Ok(out)
    }
    /// Deletes expired entries, then in each tenant the least recently used
    /// past its cap.
    fn sweep(&self, now_ms: i64, limits: &Limits) -> Result<Vec<Removed>, StoreError>;
    /// Deletes entries of `tenant` by id (ids of other tenants are left
    /// alone); returns what was removed.
    fn delete(&self, tenant: &str, ids: &[i64]) -> Result<Vec<Removed>, StoreError>;
    /// Deletes every entry of `tenant`, or only those of `model`.
    fn truncate(&self, tenant: &str, model: Option<&str>) -> Result<Vec<Removed>, StoreError>;
    /// A page of entries, newest first.
    fn list(&self, q: &ListQuery) -> Result<Vec<Entry>, StoreError>;
    /// Records that `model` of `tenant` is in use (the ModelCache API's
    /// `register`); true if it was not recorded before.
    fn register_model(&self, tenant: &str, model: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Entries and hits per tenant.
    fn stats(&self) -> Result<Vec<TenantStats>, StoreError>;
    /// Records that the upstream accepted the caller key with (hashed)
    /// `key_hash` for `tenant` at `at_ms`, replacing an older record, so that
    /// a restarted gateway and every replica honour it.
    fn record_verified_key(
        &self,
        tenant: &str,
        key_hash: &[u8; 32],
        at_ms: i64,
    ) -> Result<(), StoreError>;
    /// When the upstream last accepted `key_hash` for `tenant`, if it has.
    fn verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<Option<i64>, StoreError>;
    /// Forgets `key_hash` for `tenant` (the upstream refused it).
    fn revoke_verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<(), StoreError>;
    /// The change log replicas follow, for a store other processes write
    /// too; `None` for one only this process writes. Required, with no
    /// default: a shared backend cannot forget it and still compile, and the
    /// cache asks for it by type, not by a flag.
    fn change_log(&self) -> Option<&dyn ChangeLog>;
    /// Entries per tenant.
    fn counts(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Tenants that have entries.
    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.counts()?.into_iter().map(|(t, _)| t).collect())
    }
}

/// The hit log: which entry answered which request, kept for feedback and
/// the console. Fenced apart from the entry table: it grows with traffic,
/// not with entries.
pub trait HitLog: Send + Sync {
    /// Bumps hit counts and appends to the hit log.
    fn record_hits(&self, hits: &[HitRecord]) -> Result<(), StoreError>;
    /// The most recent hits, newest first, of one tenant or of all.
    fn hit_log(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<HitLogRow>, StoreError>;
    /// The hit with this request id, if the hit log still has it.
    fn hit_by_request(&self, request_id: &str) -> Result<Option<HitLogRow>, StoreError>;
}

/// Probes reported as answered wrongly, by entry (feedback). Fenced apart
/// from the entry table: few, read whole at start, removed with their entry.
pub trait Negatives: Send + Sync {
    /// Records a probe an entry answered wrongly.
    fn add_negative(&self, n: &Negative) -> Result<(), StoreError>;
    /// Every negative of entries that still exist.
    fn negatives(&self) -> Result<Vec<Negative>, StoreError>;
    /// The negatives of one entry.
    fn negatives_of(&self, entry_id: i64) -> Result<Vec<Negative>, StoreError> {
        let mut all = self.negatives()?;
        all.retain(|n| n.entry_id == entry_id);
        Ok(all)
    }
}

/// A shared store's change log: what a replica reads to apply the other
/// replicas' writes to its memory layers. Every method is required.
pub trait ChangeLog: Send + Sync {
    /// The id of the newest change in a shared store's change log.
    fn last_change(&self) -> Result<i64, StoreError>;
    /// The newest change trimmed from a shared store's change log: a tail
    /// read after an older id misses changes (0 when nothing was trimmed).
    fn change_log_floor(&self) -> Result<i64, StoreError>;
    /// Changes after `after`, oldest first.
    fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// Blocks until the shared store's change log may have grown (another
    /// process wrote) or `timeout` passed; true when woken by a change. The
    /// caller reads the log either way: a wake-up is a hint, not a promise.
    /// A store that cannot notify waits its own polling interval instead.
    fn wait_for_change(&self, timeout: std::time::Duration) -> bool;
}

/// A fresh random store id (128 bits, hex).
pub fn new_store_id() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
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

/// Instantiates the shared store suite: one `#[test]` per behaviour, in a
/// module `store_suite`, each on a fresh store made by calling `$make` (a
/// function or closure returning a [`Store`], or a `(store, guard)` pair
/// whose guard, such as a temporary directory, must outlive the store).
///
/// Adding a backend is: implement [`Store`], then add one line to its test
/// module, e.g. `crate::store::store_suite!(MemoryStore::default);`.
#[cfg(test)]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store::store_suite!(@tests $make;
            insert_and_get,
            upsert_by_exact_hash,
            embeddings_are_read_back,
            store_id_is_kept,
            record_hits_counts_a_batch,
            sweep_expires_and_evicts_lru,
            caps_are_per_tenant,
            ids_are_never_reused,
            origin_is_kept,
            hit_log_and_stats,
            negatives,
            list_pages_newest_first,
            delete_is_scoped_to_the_tenant,
            truncate_by_model,
            register_model_once,
            verified_keys,
            a_change_log_records_every_write,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        mod store_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let fixture = ($make)();
                    $crate::store::suite::$name($crate::store::suite::Fixture::store(&fixture));
                }
            )*
        }
    };
}
#[cfg(test)]
pub(crate) use store_suite;

#[cfg(test)]
pub(crate) mod suite {
    //! One behavioural suite, run against every implementation: one function
    //! per behaviour, each on a fresh store, instantiated per backend by
    //! [`store_suite!`](crate::store::store_suite).
    use super::*;

    /// What a backend's test hands the suite: a store, or a store and a guard
    /// kept alive beside it (dropped after the store).
    pub trait Fixture {
        /// The store under test.
        fn store(&self) -> &dyn Store;
    }

    impl<S: Store> Fixture for S {
        fn store(&self) -> &dyn Store {
            self
        }
    }

    // NOTE: the store comes first so that it is dropped before its guard
    // (tuple fields drop in order), e.g. before its temporary directory goes.
    impl<S: Store, G> Fixture for (S, G) {
        fn store(&self) -> &dyn Store {
            &self.0
        }
    }

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
            origin: Origin::Proxy,
        }
    }

    fn cap(n: u64) -> Limits {
        Limits {
            per_tenant: Default::default(),
            default: n,
        }
    }

    /// `h1` in tenants `a` and `b`, both created at 1000 for 100.
    fn two_tenants(s: &dyn Store) -> Vec<i64> {
        s.insert_batch(&[entry("a", "h1", 1000, 100), entry("b", "h1", 1000, 100)])
            .unwrap()
    }

    /// [`two_tenants`], then `a`'s `h1` upserted: re-created at 2000, with a
    /// new answer.
    fn two_tenants_upserted(s: &dyn Store) -> Vec<i64> {
        let ids = two_tenants(s);
        let mut again = entry("a", "h1", 2000, 100);
        again.answer = "{\"a\":\"new\"}".into();
        let id2 = s.insert_batch(&[again]).unwrap();
        assert_eq!(id2[0], ids[0]);
        ids
    }

    /// Two tenants' entries are two entries, each found by its own tenant.
    pub fn insert_and_get(s: &dyn Store) {
        let ids = two_tenants(s);
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1], "same hash in two tenants is two entries");
        let a = s.get_exact("a", "h1").unwrap().unwrap();
        assert_eq!(a.tenant, "a");
        assert!(s.get_exact("c", "h1").unwrap().is_none());
    }

    /// Upsert by exact hash keeps the id and replaces the answer.
    pub fn upsert_by_exact_hash(s: &dyn Store) {
        let ids = two_tenants(s);
        let mut again = entry("a", "h1", 2000, 100);
        again.answer = "{\"a\":\"new\"}".into();
        let id2 = s.insert_batch(&[again]).unwrap();
        assert_eq!(id2[0], ids[0]);
        assert_eq!(s.get(ids[0]).unwrap().unwrap().answer, "{\"a\":\"new\"}");
        assert_eq!(s.index_rows("a").unwrap().len(), 1);
    }

    /// Vectors are read back alone, together and with their entry.
    pub fn embeddings_are_read_back(s: &dyn Store) {
        let ids = two_tenants_upserted(s);
        assert_eq!(s.embedding(ids[0]).unwrap().unwrap(), vec![0.5, 0.5]);
        assert_eq!(
            s.embeddings(&[ids[0], 999_999]).unwrap(),
            vec![(ids[0], vec![0.5, 0.5])],
            "vectors read together; an unknown id is left out"
        );
        assert_eq!(s.index_rows("a").unwrap().len(), 1);
        let (e, v) = s.get_with_embedding(ids[0]).unwrap().unwrap();
        assert_eq!((e.id, v), (ids[0], Some(vec![0.5, 0.5])));
        assert!(s.get_with_embedding(999_999).unwrap().is_none());
    }

    /// A store has an id, and keeps it.
    pub fn store_id_is_kept(s: &dyn Store) {
        two_tenants(s);
        let id = s.store_id().unwrap();
        assert!(id.len() >= 16, "a store id: {id:?}");
        assert_eq!(s.store_id().unwrap(), id, "the id is kept");
    }

    /// Hits are counted; a batch with several hits of one entry (and one of
    /// another tenant's id, ignored) is counted by its number, the latest
    /// time kept, every hit logged.
    pub fn record_hits_counts_a_batch(s: &dyn Store) {
        let ids = two_tenants_upserted(s);
        s.record_hits(&[HitRecord {
            entry_id: ids[0],
            tenant: "a".into(),
            probe: "x".into(),
            similarity: 0.95,
            at: 2500,
            request_id: String::new(),
        }])
        .unwrap();
        assert_eq!(s.get(ids[0]).unwrap().unwrap().hits, 1);
        let hit = |at: i64, tenant: &str| HitRecord {
            entry_id: ids[0],
            tenant: tenant.into(),
            probe: format!("p{at}"),
            similarity: 0.9,
            at,
            request_id: format!("r{at}"),
        };
        s.record_hits(&[
            hit(2700, "a"),
            hit(2600, "a"),
            hit(2650, "b"),
            hit(2550, "a"),
        ])
        .unwrap();
        let got = s.get(ids[0]).unwrap().unwrap();
        assert_eq!((got.hits, got.last_hit_at), (4, Some(2700)));
        assert_eq!(s.hit_by_request("r2600").unwrap().unwrap().entry_id, ids[0]);
        assert_eq!(s.hit_log(Some("a"), 10).unwrap().len(), 4);
    }

    /// A sweep removes expired entries, then evicts the least recently used
    /// past a cap: the entry hit most recently survives a cap of one.
    pub fn sweep_expires_and_evicts_lru(s: &dyn Store) {
        let ids = two_tenants_upserted(s);
        s.record_hits(&[HitRecord {
            entry_id: ids[0],
            tenant: "a".into(),
            probe: "x".into(),
            similarity: 0.9,
            at: 2700,
            request_id: String::new(),
        }])
        .unwrap();
        // b expires at 1100; a (re-created at 2000) at 2100.
        let removed = s.sweep(1500, &cap(100)).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].tenant, "b");
        assert!(s.get(ids[1]).unwrap().is_none());
        let more = two_in_a_first_hit(s);
        let removed = s.sweep(2050, &cap(1)).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(s.get(more[0]).unwrap().is_some());
        assert_eq!(s.counts().unwrap(), vec![("a".to_string(), 1)]);
    }

    /// Tenant `a`: `h2`, then `h3`, and a hit on `h2` at 3000 (so `h3` is
    /// the least recently used); their ids.
    fn two_in_a_first_hit(s: &dyn Store) -> Vec<i64> {
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
            request_id: String::new(),
        }])
        .unwrap();
        more
    }

    /// Caps are per tenant: a full tenant never evicts another's entries.
    pub fn caps_are_per_tenant(s: &dyn Store) {
        s.insert_batch(&[
            entry("a", "h2", 2000, 10_000),
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
    }

    /// Ids are never reused, even once the newest entry has been evicted.
    pub fn ids_are_never_reused(s: &dyn Store) {
        let more = two_in_a_first_hit(s);
        let removed = s.sweep(2050, &cap(1)).unwrap();
        assert_eq!(removed.iter().map(|r| r.id).collect::<Vec<_>>(), [more[1]]);
        let later = s.insert_batch(&[entry("a", "h9", 4000, 100)]).unwrap();
        assert!(later[0] > more[1]);
    }

    /// Tenant `t`: `x1` (model m1, from the API), `x2` (m2), `x3` (m1);
    /// tenant `u`: `x1`.
    fn admin_entries(s: &dyn Store) -> Vec<i64> {
        let mut api = entry("t", "x1", 10_000, 1_000_000);
        api.model = "m1".into();
        api.text = "user###How do I sort a list?".into();
        api.origin = Origin::Api;
        let mut other = entry("t", "x2", 10_001, 1_000_000);
        other.model = "m2".into();
        other.text = "user###What is Rust?".into();
        let mut third = entry("t", "x3", 10_002, 1_000_000);
        third.model = "m1".into();
        third.text = "user###SORT descending".into();
        s.insert_batch(&[api, other, third, entry("u", "x1", 10_003, 1_000_000)])
            .unwrap()
    }

    /// An entry keeps its origin, and has no last hit until it is hit.
    pub fn origin_is_kept(s: &dyn Store) {
        let ids = admin_entries(s);
        let got = s.get(ids[0]).unwrap().unwrap();
        assert_eq!(got.origin, Origin::Api);
        assert_eq!(got.last_hit_at, None);
    }

    /// A store with a change log (one other processes write) logs every
    /// insert and removal after the newest change it had, oldest first; a
    /// store without one is written by this process alone, and says so.
    pub fn a_change_log_records_every_write(s: &dyn Store) {
        let Some(log) = s.change_log() else {
            // NOTE: nothing to follow; what matters is that the backend said
            // so explicitly (`change_log` has no default).
            return;
        };
        let before = log.last_change().unwrap();
        let ids = s.insert_batch(&[entry("t", "h1", 1, 1000)]).unwrap();
        s.delete("t", &ids).unwrap();
        let changes = log.changes_since(before, 10).unwrap();
        let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChangeKind::Insert, ChangeKind::Remove]);
        assert!(changes
            .iter()
            .all(|c| c.entry_id == ids[0] && c.tenant == "t"));
        assert_eq!(log.last_change().unwrap(), changes[1].id);
        assert!(log.changes_since(changes[1].id, 10).unwrap().is_empty());
    }

    /// A hit is logged with its probe, the matched text, the model, the
    /// similarity and the request id, per tenant, and counted in the stats.
    pub fn hit_log_and_stats(s: &dyn Store) {
        let ids = admin_entries(s);
        s.record_hits(&[HitRecord {
            entry_id: ids[0],
            tenant: "t".into(),
            probe: "user###how to sort a list".into(),
            similarity: 0.93,
            at: 20_000,
            request_id: "req-1".into(),
        }])
        .unwrap();
        assert_eq!(s.get(ids[0]).unwrap().unwrap().last_hit_at, Some(20_000));
        let log = s.hit_log(Some("t"), 10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].probe, "user###how to sort a list");
        assert_eq!(
            log[0].matched.as_deref(),
            Some("user###How do I sort a list?")
        );
        assert_eq!(log[0].model.as_deref(), Some("m1"));
        assert!((log[0].similarity - 0.93).abs() < 1e-6);
        assert_eq!(log[0].request_id, "req-1");
        let by_req = s.hit_by_request("req-1").unwrap().unwrap();
        assert_eq!((by_req.entry_id, by_req.tenant.as_str()), (ids[0], "t"));
        assert!(s.hit_by_request("req-2").unwrap().is_none());
        assert!(s.hit_log(Some("u"), 10).unwrap().is_empty());
        let stats = s.stats().unwrap();
        let t = stats.iter().find(|x| x.tenant == "t").unwrap();
        assert_eq!((t.entries, t.hits), (3, 1));
    }

    /// Negatives are kept for entries that exist, and go with their entry.
    pub fn negatives(s: &dyn Store) {
        let ids = admin_entries(s);
        s.add_negative(&Negative {
            entry_id: ids[1],
            tenant: "t".into(),
            probe: "user###wrong".into(),
            embedding: vec![1.0, 0.0],
            at: 1,
        })
        .unwrap();
        let negs = s.negatives().unwrap();
        assert_eq!(negs.len(), 1);
        assert_eq!(
            (negs[0].entry_id, negs[0].embedding.clone()),
            (ids[1], vec![1.0, 0.0])
        );
        s.truncate("t", None).unwrap();
        assert!(s.negatives().unwrap().is_empty(), "gone with its entry");
    }

    /// Listing: newest first, by tenant, model and text, in pages; without a
    /// tenant, every tenant's entries are searched.
    pub fn list_pages_newest_first(s: &dyn Store) {
        let ids = admin_entries(s);
        let q = |tenant: Option<&str>,
                 model: Option<&str>,
                 text: Option<&str>,
                 before: Option<i64>,
                 limit| ListQuery {
            tenant: tenant.map(str::to_string),
            model: model.map(str::to_string),
            text: text.map(str::to_string),
            before_id: before,
            limit,
        };
        let ids_of = |v: Vec<Entry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(
            ids_of(s.list(&q(Some("t"), None, None, None, 10)).unwrap()),
            vec![ids[2], ids[1], ids[0]]
        );
        assert_eq!(
            ids_of(s.list(&q(Some("t"), Some("m1"), None, None, 10)).unwrap()),
            vec![ids[2], ids[0]]
        );
        assert_eq!(
            ids_of(s.list(&q(Some("t"), None, Some("sort"), None, 10)).unwrap()),
            vec![ids[2], ids[0]]
        );
        assert_eq!(
            ids_of(s.list(&q(Some("t"), None, Some("%"), None, 10)).unwrap()),
            Vec::<i64>::new()
        );
        assert_eq!(
            ids_of(s.list(&q(Some("t"), None, None, None, 2)).unwrap()),
            vec![ids[2], ids[1]]
        );
        assert_eq!(
            ids_of(s.list(&q(Some("t"), None, None, Some(ids[1]), 2)).unwrap()),
            vec![ids[0]]
        );
        assert_eq!(
            ids_of(s.list(&q(None, None, Some("###X1"), None, 10)).unwrap()),
            vec![ids[3]]
        );
    }

    /// Deletes are scoped by tenant.
    pub fn delete_is_scoped_to_the_tenant(s: &dyn Store) {
        let ids = admin_entries(s);
        assert!(s.delete("u", &[ids[0]]).unwrap().is_empty());
        let removed = s.delete("t", &[ids[0]]).unwrap();
        assert_eq!(
            removed,
            vec![Removed {
                tenant: "t".into(),
                id: ids[0],
                exact_hash: "x1".into()
            }]
        );
        assert!(s.get(ids[0]).unwrap().is_none());
        assert!(s.get_exact("t", "x1").unwrap().is_none());
        assert!(s.get_exact("u", "x1").unwrap().is_some());
    }

    /// Truncating one model leaves the others; a tenant truncate leaves other
    /// tenants.
    pub fn truncate_by_model(s: &dyn Store) {
        let ids = admin_entries(s);
        s.delete("t", &[ids[0]]).unwrap();
        let removed = s.truncate("t", Some("m1")).unwrap();
        assert_eq!(
            removed.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![ids[2]]
        );
        assert!(s.get(ids[1]).unwrap().is_some());
        let removed = s.truncate("t", None).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(s.index_rows("t").unwrap().is_empty());
        assert!(s.get(ids[3]).unwrap().is_some());
    }

    /// A shared store logs an insert, a removal (with the entry's id and
    /// hash) and a reported wrong answer, in order, and trims nothing yet;
    /// returns the newest change id before them (four changes follow it).
    pub fn a_change_log_logs_each_kind_in_order(s: &dyn Store) -> i64 {
        let Some(log) = s.change_log() else {
            panic!("only a store with a change log logs changes");
        };
        let before = log.last_change().unwrap();
        let ids = s.insert_batch(&[entry("a", "h", 1, 1000)]).unwrap();
        s.delete("a", &ids).unwrap();
        assert_eq!(log.last_change().unwrap(), before + 2);
        let changes = log.changes_since(before, 10).unwrap();
        assert_eq!(
            changes.iter().map(|c| c.kind).collect::<Vec<_>>(),
            vec![ChangeKind::Insert, ChangeKind::Remove]
        );
        assert_eq!(
            (changes[1].entry_id, changes[1].exact_hash.as_str()),
            (ids[0], "h")
        );
        // A reported wrong answer is a change other replicas follow.
        let kept = s.insert_batch(&[entry("a", "h2", 1, 1000)]).unwrap();
        s.add_negative(&Negative {
            entry_id: kept[0],
            tenant: "a".into(),
            probe: "p".into(),
            embedding: vec![1.0, 0.0],
            at: 5,
        })
        .unwrap();
        let tail = log.changes_since(before + 2, 10).unwrap();
        assert_eq!(
            tail.iter().map(|c| c.kind).collect::<Vec<_>>(),
            vec![ChangeKind::Insert, ChangeKind::Negative]
        );
        assert_eq!(s.negatives_of(kept[0]).unwrap().len(), 1);
        assert_eq!(log.change_log_floor().unwrap(), 0);
        before
    }

    /// A shared store that keeps two changes: a sweep trims its change log
    /// to the newest two and records up to where it trimmed (`s` is made
    /// with `keep_changes(2)`).
    pub fn a_trimmed_change_log_records_its_floor(s: &dyn Store) {
        let Some(log) = s.change_log() else {
            panic!("only a store with a change log trims one");
        };
        let entries: Vec<NewEntry> = (0..5)
            .map(|i| entry("a", &format!("h{i}"), 1000, 1000))
            .collect();
        s.insert_batch(&entries).unwrap();
        let last = log.last_change().unwrap();
        s.sweep(1500, &cap(100)).unwrap();
        assert_eq!(log.change_log_floor().unwrap(), last - 2);
        let kept = log.changes_since(0, 10).unwrap();
        assert_eq!(
            kept.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![last - 1, last]
        );
        assert_eq!(s.counts().unwrap(), vec![("a".to_string(), 5)]);
    }

    /// Registration is idempotent and per tenant.
    pub fn register_model_once(s: &dyn Store) {
        assert!(s.register_model("t", "m1", 1).unwrap());
        assert!(!s.register_model("t", "m1", 2).unwrap());
        assert!(s.register_model("u", "m1", 3).unwrap());
    }

    /// Verified caller keys: recorded by hash per tenant, newest time kept,
    /// revoked.
    pub fn verified_keys(s: &dyn Store) {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        assert_eq!(s.verified_key("a", &k1).unwrap(), None);
        s.record_verified_key("a", &k1, 1_000).unwrap();
        s.record_verified_key("a", &k1, 3_000).unwrap();
        // An older record arriving late does not move the time back.
        s.record_verified_key("a", &k1, 2_000).unwrap();
        assert_eq!(s.verified_key("a", &k1).unwrap(), Some(3_000));
        // Per tenant and per key.
        assert_eq!(s.verified_key("b", &k1).unwrap(), None);
        assert_eq!(s.verified_key("a", &k2).unwrap(), None);
        s.revoke_verified_key("a", &k1).unwrap();
        assert_eq!(s.verified_key("a", &k1).unwrap(), None);
        s.revoke_verified_key("a", &k2).unwrap();
    }
}
