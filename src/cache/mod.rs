//! The cache: the whole hit-or-miss decision, and the one writer.
//!
//! Read top to bottom, the folder is the request path: [`plan`](mod@plan) decides
//! whether a request takes part at all and under which key; [`lookup`]
//! gathers candidates (the exact layer, then the vector index) and asks
//! [`judge`] about each, which runs the [`guards`] and the [`verify`]ier;
//! [`memory`] holds this replica's layers, [`follow`] keeps them in step with
//! other replicas, and [`writeback`] is the only writer. This file is the
//! facade the proxy, the admin API and `eval` use: they hand it requests and
//! answers, never store rows. It must never fail a request: every error here
//! is logged, counted, and turned into a miss.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::{
    config::CacheSettings,
    embed::EmbedService,
    keying::CacheKey,
    metrics::{CacheStage, Metrics},
    store::{HitRecord, Limits, NewEntry, Origin, Removed, Store},
};
use tokio::sync::oneshot;

use self::{
    lookup::Gather,
    memory::Core,
    writeback::{RemoveTarget, WriteOp, Writeback},
};
use crate::clock::now_ms;

pub mod error;
pub mod follow;
pub mod guards;
pub mod judge;
pub mod lexicon;
pub mod lookup;
pub mod memory;
pub mod plan;
pub mod types;
pub mod verify;
pub mod writeback;

pub use self::{
    error::CacheError,
    lookup::{Considered, Explanation, Scope},
    memory::{Calibration, IndexPlace},
    plan::{plan, Plan, SkipReason},
    types::{Hit, HitKind, Lookup, LookupOptions, Thresholds},
    writeback::row,
};

/// What the store keeps of a caller's key hash: hashed again, with a label
/// of its own, so that the stored value matches no hash in a config file.
fn stored_key_hash(caller: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"modelcache verified key\0");
    h.update(caller);
    h.finalize().into()
}

fn store_last_change(store: &Arc<dyn Store>) -> Result<i64, CacheError> {
    match store.change_log() {
        Some(log) => Ok(log.last_change()?),
        None => Ok(0),
    }
}

/// The cache: lookups on the request path, writes through the write-back queue.
pub struct Cache {
    core: Arc<Core>,
    writeback: Writeback,
    finishing: std::sync::atomic::AtomicUsize,
}

impl Cache {
    /// Opens the cache. Blocking (opens indexes): call off the runtime.
    pub fn open(
        settings: CacheSettings,
        store: Arc<dyn Store>,
        embedder: EmbedService,
        metrics: Arc<Metrics>,
        place: IndexPlace,
        tenants: &[String],
    ) -> Result<Cache, CacheError> {
        if let IndexPlace::Memory { dir: Some(d), .. } = &place {
            std::fs::create_dir_all(d).map_err(|source| CacheError::Io {
                path: d.clone(),
                source,
            })?;
        }
        if let IndexPlace::Milvus(m) = &place {
            m.observe(metrics.index_pending.clone());
        }
        let followed = store_last_change(&store)?;
        let store_id = store.store_id()?;
        let core = Arc::new(Core {
            store,
            metrics,
            exact: moka::sync::Cache::new(settings.exact_capacity),
            by_id: moka::sync::Cache::new(settings.exact_capacity),
            store_id,
            indexes: RwLock::new(HashMap::new()),
            place,
            dims: embedder.dims(),
            embedder,
            removals: std::sync::atomic::AtomicU64::new(0),
            negatives: RwLock::new(HashMap::new()),
            calibrations: RwLock::new(HashMap::new()),
            // NOTE: read before the indexes are built from the table: a
            // change made meanwhile is applied twice, which is harmless,
            // rather than never.
            followed: std::sync::atomic::AtomicI64::new(followed),
        });
        {
            let negs = core.store.negatives()?;
            if let Ok(mut map) = core.negatives.write() {
                for n in negs {
                    map.entry(n.entry_id).or_default().push(n.embedding);
                }
            }
        }
        let mut all: Vec<String> = tenants.to_vec();
        all.extend(core.store.tenants()?);
        all.sort();
        all.dedup();
        for t in &all {
            if core.index(t).is_none() {
                return Err(CacheError::IndexUnavailable(t.clone()));
            }
        }
        for t in &all {
            core.metrics.entries.with_label_values(&[t]).set(0);
        }
        core.refresh_counts();
        let writeback = Writeback::start(
            core.clone(),
            settings.writeback_queue,
            settings.writeback_batch,
        );
        Ok(Cache {
            core,
            writeback,
            finishing: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// With a shared store (PostgreSQL), starts a thread that applies other
    /// replicas' changes as soon as the store notifies one (LISTEN/NOTIFY),
    /// and at least every 250 ms, until the cache is dropped. A read that
    /// fails (the database is away) is counted and retried.
    pub fn start_following(&self) {
        self.core.start_following();
    }

    /// The embedding workers, shared (calibration runs on them).
    pub fn embedder(&self) -> EmbedService {
        self.core.embedder.clone()
    }

    /// The memory layers (this module's tests look inside them).
    #[cfg(test)]
    fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Saves every vector index that changed since its last snapshot.
    /// Blocking: call it off the runtime.
    pub fn save_indexes(&self) {
        self.core.save_indexes();
    }

    /// Records that `model` of `tenant` is in use (the ModelCache API's
    /// `register`) and opens the tenant's vector index now rather than at
    /// its first lookup; true if the model was not recorded before.
    pub async fn register_model(&self, tenant: &str, model: &str) -> Result<bool, CacheError> {
        let (t, m) = (tenant.to_string(), model.to_string());
        let core = self.core.clone();
        let created = tokio::task::spawn_blocking(move || {
            let created = core.store.register_model(&t, &m, now_ms())?;
            let _ = core.index(&t);
            Ok::<_, CacheError>(created)
        })
        .await??;
        Ok(created)
    }

    /// Looks `key` up for `tenant`.
    pub async fn lookup(&self, tenant: &str, key: &CacheKey, opts: &LookupOptions) -> Lookup {
        self.lookup_with(tenant, key, opts, Scope::default()).await
    }
    /// Looks `key` up for `tenant`, reusing an embedding and limiting what
    /// may be served as `scope` says.
    pub async fn lookup_with(
        &self,
        tenant: &str,
        key: &CacheKey,
        opts: &LookupOptions,
        scope: Scope,
    ) -> Lookup {
        let started = Instant::now();
        let found = self
            .core
            .find(tenant, key, opts, scope, Gather::FirstServed)
            .await;
        self.core
            .metrics
            .lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        Lookup {
            hit: found.hit,
            embedding: found.embedding,
        }
    }
    /// A dry run of [`Cache::lookup`]: the same steps and checks, every
    /// candidate with the outcome of each check, and nothing recorded (no hit
    /// counted, no similarity observed). Candidates from other partitions of
    /// the tenant are shown too, failing the partition check.
    pub async fn explain(
        &self,
        tenant: &str,
        key: &CacheKey,
        opts: &LookupOptions,
        scope: Scope,
    ) -> Explanation {
        self.core.find(tenant, key, opts, scope, Gather::All).await
    }

    /// Embeds `text`; None when it cannot be (too long, the embedder failed:
    /// counted), and the request is then matched exactly only.
    pub async fn embed(&self, text: &str) -> Option<Vec<f32>> {
        self.core.embed(text).await
    }

    /// The calibration of `tenant`, if set.
    pub fn calibration(&self, tenant: &str) -> Option<Calibration> {
        self.core.calibration(tenant)
    }

    /// Removes entries of `tenant` from the store, the exact layer and the
    /// vector index, through the writer (so that no write in flight brings
    /// them back). Waits for it; never dropped, even when the queue is full.
    pub async fn remove(
        &self,
        tenant: &str,
        target: RemoveTarget,
    ) -> Result<Vec<Removed>, CacheError> {
        let (reply, rx) = oneshot::channel();
        let op = WriteOp::Remove {
            tenant: tenant.to_string(),
            target,
            reply,
        };
        if !self.writeback.send_waiting(op).await {
            return Err(CacheError::Stopped);
        }
        rx.await.map_err(|_| CacheError::Stopped)?
    }

    /// Stores entries now, through the writer, and waits until they can hit.
    /// Never dropped, even when the queue is full.
    pub async fn insert_now(&self, entries: Vec<NewEntry>) -> Result<Vec<i64>, CacheError> {
        let (reply, rx) = oneshot::channel();
        if !self
            .writeback
            .send_waiting(WriteOp::InsertNow { entries, reply })
            .await
        {
            return Err(CacheError::Stopped);
        }
        rx.await.map_err(|_| CacheError::Stopped)?
    }

    /// Runs a store call off the runtime (reads, or writes that need no
    /// ordering with the write-back queue).
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, CacheError> {
        let store = self.core.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(store.as_ref())).await??)
    }

    /// When the upstream last accepted `caller` (a key hash) for `tenant`,
    /// as the store remembers it: across a restart, and from every replica
    /// of a shared store. None if never, or if the store cannot tell in time.
    pub async fn verified_key_at(&self, tenant: &str, caller: &[u8; 32]) -> Option<i64> {
        let (t, k) = (tenant.to_string(), stored_key_hash(caller));
        self.core.read_store(move |s| s.verified_key(&t, &k)).await
    }

    /// Records, in the background, that the upstream accepted `caller` for
    /// `tenant` at `at_ms`. A failure is logged and counted; the key is then
    /// known to this process only.
    pub fn record_verified_key(&self, tenant: &str, caller: &[u8; 32], at_ms: i64) {
        let (t, k) = (tenant.to_string(), stored_key_hash(caller));
        self.store_in_background(CacheStage::VerifiedKey, move |s| {
            s.record_verified_key(&t, &k, at_ms)
        });
    }

    /// Forgets, in the background, that the upstream accepted `caller`.
    pub fn revoke_verified_key(&self, tenant: &str, caller: &[u8; 32]) {
        let (t, k) = (tenant.to_string(), stored_key_hash(caller));
        self.store_in_background(CacheStage::VerifiedKey, move |s| {
            s.revoke_verified_key(&t, &k)
        });
    }

    fn store_in_background(
        &self,
        stage: CacheStage,
        f: impl FnOnce(&dyn Store) -> Result<(), crate::store::StoreError> + Send + 'static,
    ) {
        let store = self.core.store.clone();
        let metrics = self.core.metrics.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = f(store.as_ref()) {
                tracing::warn!(error = %e, stage = stage.as_str(), "store write failed");
                metrics.cache_error(stage);
            }
        });
    }

    /// Embeds many texts for a bulk insert, `batch` at a time so that the
    /// embedder batches them and lookups still find room in its queue.
    pub async fn embed_many(
        &self,
        texts: &[String],
        batch: usize,
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch.max(1)) {
            let done = self.core.embedder.embed_all_waiting(chunk).await;
            for r in done {
                out.push(r.inspect_err(|_| self.core.metrics.cache_error(CacheStage::Embed))?);
            }
        }
        Ok(out)
    }

    /// Sets (or with `None` clears) the calibration of `tenant`.
    pub fn set_calibration(&self, tenant: &str, c: Option<Calibration>) {
        if let Ok(mut map) = self.core.calibrations.write() {
            match c {
                Some(c) => map.insert(tenant.to_string(), c),
                None => map.remove(tenant),
            };
        }
    }

    /// Notes a served hit (counts and hit log), dropped if the queue is full.
    /// `request_id` is what the client was told (`x-modelcache-request-id`).
    pub fn record_hit(&self, tenant: &str, hit: &Hit, probe: &str, request_id: &str) {
        self.writeback.send(WriteOp::Hit(HitRecord {
            entry_id: hit.entry.id,
            tenant: tenant.to_string(),
            probe: probe.to_string(),
            similarity: hit.similarity,
            at: now_ms(),
            request_id: request_id.to_string(),
        }));
    }

    /// Feedback that entry `entry_id` of `tenant` answered `probe` (a key
    /// text) wrongly. A probe equal to the entry's own question means its
    /// answer is wrong: the entry is removed. Otherwise the probe becomes a
    /// negative: the entry stops answering questions closer to it than to
    /// its own question. Returns what was done.
    pub async fn report_wrong(
        &self,
        tenant: &str,
        entry_id: i64,
        probe: &str,
    ) -> Result<&'static str, CacheError> {
        let entry = self
            .with_store(move |s| s.get(entry_id))
            .await?
            .filter(|e| e.tenant == tenant)
            .ok_or_else(|| CacheError::NoEntry {
                entry: entry_id,
                tenant: tenant.to_string(),
            })?;
        if entry.text == probe {
            self.remove(tenant, RemoveTarget::Ids(vec![entry_id]))
                .await?;
            return Ok("removed");
        }
        let embedding = self
            .embed_many(&[crate::cache::verify::user_text(probe)], 1)
            .await?
            .remove(0);
        let (reply, rx) = oneshot::channel();
        let n = crate::store::Negative {
            entry_id,
            tenant: tenant.to_string(),
            probe: probe.to_string(),
            embedding,
            at: now_ms(),
        };
        if !self
            .writeback
            .send_waiting(WriteOp::AddNegative { negative: n, reply })
            .await
        {
            return Err(CacheError::Stopped);
        }
        rx.await.map_err(|_| CacheError::Stopped)??;
        Ok("negative")
    }

    /// Queues an entry for storage; returns false if the queue was full.
    pub fn write(&self, entry: NewEntry) -> bool {
        self.writeback.send(WriteOp::Insert(entry))
    }

    /// Stores the upstream's `answer` to a proxied miss of `tenant`, keyed
    /// `key`, through the write-back queue: embeds the key's text first when
    /// it is matched by meaning and `embedding` (the lookup's) is missing.
    /// Returns false if the queue was full.
    pub async fn store_answer(
        &self,
        tenant: &str,
        key: &CacheKey,
        answer: String,
        embedding: Option<Vec<f32>>,
        ttl: Duration,
    ) -> bool {
        let embedding = match (key.semantic, embedding) {
            (true, None) => self.embed(&key.embed_text).await,
            (true, e) => e,
            (false, _) => None,
        };
        self.write(row(
            tenant,
            key,
            answer,
            embedding,
            now_ms(),
            ttl,
            Origin::Proxy,
        ))
    }

    /// Counts an upstream answer the cache refused to store (cut short, an
    /// error in the stream, a finish reason not cached, too large).
    pub fn count_refused(&self) {
        self.core
            .metrics
            .writeback
            .with_label_values(&["rejected"])
            .inc();
    }

    /// Deletes expired entries, and each tenant's least recently hit past its
    /// cap, from every layer.
    pub fn sweep(&self, limits: Limits) {
        self.writeback.send(WriteOp::Sweep {
            now_ms: now_ms(),
            limits,
        });
    }

    /// Marks an answer as being prepared for a write (parsed, maybe embedded).
    pub fn begin_write(&self) {
        self.finishing
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Marks a prepared answer as queued or abandoned.
    pub fn end_write(&self) {
        self.finishing
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Waits (up to `within`) for answers still being prepared, then until
    /// everything queued so far is stored.
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.finishing.load(std::sync::atomic::Ordering::Acquire) > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.writeback.flush().await;
    }

    /// Waits until the hits served so far are counted in the store (they are
    /// written in batches, at most a second late): for reads that show hit
    /// counts or the hit log.
    pub async fn settle_hits(&self) {
        self.writeback.flush().await;
    }

    /// Stops the write-back thread after it drains, then saves the indexes.
    /// Blocking; call [`Cache::flush`] first so that prepared answers are queued.
    pub fn close(&self) {
        self.writeback.close();
        self.core.save_indexes();
        self.core.flush_shared_index(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Embedder, EmbedderFactory, HashEmbedder};
    use serde_json::json;

    fn open() -> (Cache, crate::config::Settings) {
        let settings =
            crate::config::load(None, Vec::new(), &crate::config::Overrides::default()).unwrap();
        let factory: EmbedderFactory =
            Arc::new(|| Ok(Box::new(HashEmbedder::new(64)) as Box<dyn Embedder>));
        let embedder =
            EmbedService::start(factory, crate::embed::EmbedLimits::new(1, 8, 64), None).unwrap();
        let cache = Cache::open(
            settings.cache.clone(),
            Arc::new(crate::store::memory::MemoryStore::default()),
            embedder,
            Arc::new(Metrics::new().unwrap()),
            IndexPlace::Memory {
                dir: None,
                quantization: crate::config::Quantization::F16,
            },
            &[],
        )
        .unwrap();
        (cache, settings)
    }

    fn key(q: &str) -> CacheKey {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": q}]});
        crate::keying::key_for(crate::keying::Endpoint::Chat, &body).unwrap()
    }

    fn entry(k: &CacheKey, embedding: Vec<f32>) -> NewEntry {
        NewEntry {
            tenant: "t".into(),
            partition: k.partition.clone(),
            exact_hash: k.exact_hash.clone(),
            endpoint: "chat".into(),
            model: "m".into(),
            text: k.text.clone(),
            params: k.params.clone(),
            answer: "{}".into(),
            embedding: Some(embedding),
            created_at: now_ms(),
            expires_at: now_ms() + 3_600_000,
            origin: Origin::Proxy,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_candidate_the_index_proposes_on_a_stale_vector_is_judged_on_its_stored_embedding() {
        let (cache, settings) = open();
        let opts = LookupOptions::for_policy(&settings.cache.policy);
        let stored = key("Name three prime numbers");
        let probe = key("What is the capital of France?");
        let e = cache.embed(&stored.embed_text).await.unwrap();
        let p = cache.embed(&probe.embed_text).await.unwrap();
        let ids = cache
            .insert_now(vec![entry(&stored, e.clone())])
            .await
            .unwrap();
        // The index's vector of the entry goes stale: it is now the probe's.
        let idx = cache.core().index("t").unwrap();
        idx.add(ids[0] as u64, stored.partition_tag(), &p).unwrap();
        let proposed = idx.search(&p, Some(stored.partition_tag()), 1).unwrap();
        assert_eq!(proposed[0].0, ids[0] as u64);
        assert!(
            proposed[0].1 > 0.99,
            "the index calls it a twin: {proposed:?}"
        );
        for from_store in [false, true] {
            if from_store {
                // Not in memory: read with its embedding from the store.
                cache.core.by_id.invalidate_all();
            }
            assert!(
                cache.lookup("t", &probe, &opts).await.hit.is_none(),
                "the stored embedding refuses it (from the store: {from_store})"
            );
            let ex = cache.explain("t", &probe, &opts, Scope::default()).await;
            let c = ex.candidates.iter().find(|c| c.entry.id == ids[0]).unwrap();
            assert!((c.similarity - crate::index::dot(&e, &p)).abs() < 1e-5);
            assert!(c.similarity < 0.5 && !c.verdict.served);
        }
        // The stored question's own words in another order hit on the
        // stored embedding, although the index's vector is another's.
        let reordered = key("three prime numbers name");
        let hit = cache.lookup("t", &reordered, &opts).await.hit.unwrap();
        assert_eq!((hit.entry.id, hit.kind), (ids[0], HitKind::Semantic));
        assert!(hit.similarity > 0.999, "{}", hit.similarity);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_candidate_without_a_stored_embedding_is_not_served_semantically() {
        let (cache, settings) = open();
        let opts = LookupOptions::for_policy(&settings.cache.policy);
        let stored = key("Name three prime numbers");
        let e = cache.embed(&stored.embed_text).await.unwrap();
        let mut new = entry(&stored, e.clone());
        new.embedding = None;
        let ids = cache.insert_now(vec![new]).await.unwrap();
        // Only the index has a vector for it.
        let idx = cache.core().index("t").unwrap();
        idx.add(ids[0] as u64, stored.partition_tag(), &e).unwrap();
        let reordered = key("three prime numbers name");
        assert!(cache.lookup("t", &reordered, &opts).await.hit.is_none());
        cache.core.by_id.invalidate_all();
        assert!(cache.lookup("t", &reordered, &opts).await.hit.is_none());
        // Its exact text still hits exactly.
        let hit = cache.lookup("t", &stored, &opts).await.hit.unwrap();
        assert_eq!(hit.kind, HitKind::Exact);
    }
}
