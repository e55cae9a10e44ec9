//! The lookup facade: exact layer, semantic layer, verification.
//!
//! Owns the order of a lookup (moka, then SQLite by exact hash, then embed,
//! search and verify) and the in-memory layers. A candidate is served only if
//! its tenant and partition are equal to the request's and it is fresh; the
//! vector index only proposes. It must never fail a request: every error here
//! is logged, counted, and turned into a miss.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{CacheSettings, Policy, Quantization},
    embed::EmbedService,
    index::{UsearchIndex, VectorIndex},
    keying::CacheKey,
    metrics::Metrics,
    store::{Entry, HitRecord, Limits, NewEntry, Removed, Store},
    writeback::{WriteOp, Writeback},
};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    /// Same partition, same text.
    Exact,
    /// Same partition, similar text.
    Semantic,
}

/// A hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The entry served.
    pub entry: Arc<Entry>,
    /// Cosine similarity (1 for exact hits).
    pub similarity: f32,
    /// Exact or semantic.
    pub kind: HitKind,
}

/// The result of a lookup.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The hit, if any.
    pub hit: Option<Hit>,
    /// The request's embedding, reused by the write-back of a miss.
    pub embedding: Option<Vec<f32>>,
}

/// The similarity a semantic hit needs, from the tenant's policy.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// For texts of up to `long_text_words` words.
    pub short: f32,
    /// For longer texts.
    pub long: f32,
    /// Words above which a text is long.
    pub long_text_words: usize,
}

impl From<&Policy> for Thresholds {
    fn from(p: &Policy) -> Thresholds {
        Thresholds {
            short: p.threshold,
            long: p.long_threshold,
            long_text_words: p.long_text_words,
        }
    }
}

/// Per-request lookup options.
#[derive(Debug, Clone, Copy)]
pub struct LookupOptions {
    /// The tenant's thresholds.
    pub thresholds: Thresholds,
    /// Reject entries older than this (`Cache-Control: max-age`).
    pub max_age: Option<Duration>,
    /// A stricter threshold than the configured one.
    pub min_similarity: Option<f32>,
}

/// State shared by lookups and the write-back thread.
pub struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    exact: moka::sync::Cache<String, Arc<Entry>>,
    by_id: moka::sync::Cache<i64, Arc<Entry>>,
    indexes: RwLock<HashMap<String, Arc<dyn VectorIndex>>>,
    index_dir: Option<PathBuf>,
    dims: usize,
    quantization: Quantization,
}

fn exact_key(tenant: &str, exact_hash: &str) -> String {
    format!("{tenant}\u{0}{exact_hash}")
}

impl Core {
    /// Opens the index of `tenant` (loading or rebuilding it) if not open yet.
    pub(crate) fn index(&self, tenant: &str) -> Option<Arc<dyn VectorIndex>> {
        if let Some(i) = self.indexes.read().ok()?.get(tenant) {
            return Some(i.clone());
        }
        let mut w = self.indexes.write().ok()?;
        if let Some(i) = w.get(tenant) {
            return Some(i.clone());
        }
        let idx = match self.open_index(tenant) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(tenant, error = %e, "cannot open the vector index");
                self.metrics
                    .cache_errors
                    .with_label_values(&["index_open"])
                    .inc();
                return None;
            }
        };
        w.insert(tenant.to_string(), idx.clone());
        Some(idx)
    }

    fn index_path(&self, tenant: &str) -> Option<PathBuf> {
        // NOTE: tenant names come from the config, but are hex-encoded anyway so
        // that no name can escape the folder.
        self.index_dir
            .as_ref()
            .map(|d| d.join(format!("{}.usearch", hex::encode(tenant))))
    }

    fn open_index(&self, tenant: &str) -> Result<Arc<dyn VectorIndex>, String> {
        let rows = self.store.index_rows(tenant).map_err(|e| e.to_string())?;
        let Some(path) = self.index_path(tenant) else {
            let idx = UsearchIndex::new(self.dims, self.quantization).map_err(|e| e.to_string())?;
            return Ok(Arc::new(idx));
        };
        let started = Instant::now();
        let (idx, rebuilt) = UsearchIndex::open(&path, self.dims, self.quantization, &rows, |id| {
            self.store.embedding(id as i64).ok().flatten()
        })
        .map_err(|e| e.to_string())?;
        tracing::info!(
            tenant,
            entries = idx.len(),
            rebuilt,
            ms = started.elapsed().as_millis() as u64,
            "vector index open"
        );
        if rebuilt {
            let _ = idx.save(&path);
        }
        Ok(Arc::new(idx))
    }

    /// Saves every dirty index.
    pub(crate) fn save_indexes(&self) {
        let Ok(map) = self.indexes.read() else { return };
        for (tenant, idx) in map.iter() {
            if let Some(path) = self.index_path(tenant) {
                match idx.save(&path) {
                    Ok(true) => tracing::debug!(tenant, "vector index saved"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(tenant, error = %e, "vector index save failed");
                        self.metrics
                            .cache_errors
                            .with_label_values(&["index_save"])
                            .inc();
                    }
                }
            }
        }
    }

    /// Makes freshly stored entries visible to lookups.
    pub(crate) fn publish(&self, entries: &[NewEntry], ids: &[i64]) {
        for (e, id) in entries.iter().zip(ids) {
            if let Some(v) = &e.embedding {
                if let Some(idx) = self.index(&e.tenant) {
                    if let Err(err) =
                        idx.add(*id as u64, crate::keying::partition_tag(&e.partition), v)
                    {
                        tracing::warn!(error = %err, "index add failed");
                        self.metrics
                            .cache_errors
                            .with_label_values(&["index_add"])
                            .inc();
                    }
                }
            }
            let entry = Arc::new(e.to_entry(*id, 0));
            self.exact
                .insert(exact_key(&e.tenant, &e.exact_hash), entry.clone());
            self.by_id.insert(*id, entry);
        }
    }

    /// Forgets removed entries in every layer.
    pub(crate) fn forget(&self, removed: &[Removed]) {
        for r in removed {
            self.exact.invalidate(&exact_key(&r.tenant, &r.exact_hash));
            self.by_id.invalidate(&r.id);
            if let Some(idx) = self.index(&r.tenant) {
                let _ = idx.remove(r.id as u64);
            }
        }
    }

    /// Refreshes the entries and index-size gauges.
    pub(crate) fn refresh_counts(&self) {
        let Ok(counts) = self.store.counts() else {
            return;
        };
        let counts: HashMap<String, u64> = counts.into_iter().collect();
        for (t, n) in &counts {
            self.metrics.entries.with_label_values(&[t]).set(*n as i64);
        }
        if let Ok(map) = self.indexes.read() {
            for (t, idx) in map.iter() {
                // A tenant whose last entry went is at zero, not at its old count.
                if !counts.contains_key(t) {
                    self.metrics.entries.with_label_values(&[t]).set(0);
                }
                self.metrics
                    .index_bytes
                    .with_label_values(&[t])
                    .set(idx.memory_bytes() as i64);
            }
        }
    }
}

/// The cache: lookups on the request path, writes through the write-back queue.
pub struct Cache {
    core: Arc<Core>,
    embedder: EmbedService,
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
        index_dir: Option<PathBuf>,
        quantization: Quantization,
        tenants: &[String],
    ) -> Result<Cache, String> {
        if let Some(d) = &index_dir {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let core = Arc::new(Core {
            store,
            metrics,
            exact: moka::sync::Cache::new(settings.exact_capacity),
            by_id: moka::sync::Cache::new(settings.exact_capacity),
            indexes: RwLock::new(HashMap::new()),
            index_dir,
            dims: embedder.dims(),
            quantization,
        });
        let mut all: Vec<String> = tenants.to_vec();
        all.extend(core.store.tenants().map_err(|e| e.to_string())?);
        all.sort();
        all.dedup();
        for t in &all {
            if core.index(t).is_none() {
                return Err(format!("cannot open the vector index of tenant {t}"));
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
            embedder,
            writeback,
            finishing: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Shared state, for the periodic tasks.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Embeds a text for a write that had no lookup embedding.
    pub async fn embed(&self, text: &str) -> Option<Vec<f32>> {
        match self.embedder.embed(text).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "embedding failed");
                self.core
                    .metrics
                    .cache_errors
                    .with_label_values(&["embed"])
                    .inc();
                None
            }
        }
    }

    fn usable(e: &Entry, now: i64, opts: &LookupOptions) -> bool {
        e.expires_at > now
            && opts
                .max_age
                .is_none_or(|m| now - e.created_at <= m.as_millis() as i64)
    }

    /// Runs a store read off the runtime; a failure is logged, counted, and
    /// reads as "not found".
    async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<Option<T>, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.core.store.clone();
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "store read failed");
                self.core
                    .metrics
                    .cache_errors
                    .with_label_values(&["store_read"])
                    .inc();
                None
            }
            Err(_) => None,
        }
    }

    async fn entry_by_id(&self, id: i64) -> Option<Arc<Entry>> {
        if let Some(e) = self.core.by_id.get(&id) {
            return Some(e);
        }
        let e = Arc::new(self.read_store(move |s| s.get(id)).await?);
        self.core.by_id.insert(id, e.clone());
        Some(e)
    }

    async fn exact(&self, tenant: &str, key: &CacheKey) -> Option<Arc<Entry>> {
        let hash = key.exact_hash.clone();
        let k = exact_key(tenant, &hash);
        if let Some(e) = self.core.exact.get(&k) {
            return Some(e);
        }
        let t = tenant.to_string();
        let e = Arc::new(self.read_store(move |s| s.get_exact(&t, &hash)).await?);
        self.core.exact.insert(k, e.clone());
        Some(e)
    }

    /// The similarity a semantic hit needs for this key.
    pub fn threshold_for(key: &CacheKey, opts: &LookupOptions) -> f32 {
        let t = &opts.thresholds;
        let words = key.embed_text.split_whitespace().count();
        let base = if words > t.long_text_words {
            t.long
        } else {
            t.short
        };
        opts.min_similarity.map_or(base, |m| m.max(base))
    }

    /// Looks `key` up for `tenant`.
    pub async fn lookup(&self, tenant: &str, key: &CacheKey, opts: &LookupOptions) -> Lookup {
        let started = Instant::now();
        let now = now_ms();
        let mut out = Lookup::default();
        if let Some(e) = self.exact(tenant, key).await {
            if e.tenant == tenant && e.partition == key.partition && Self::usable(&e, now, opts) {
                self.core
                    .metrics
                    .lookup_seconds
                    .observe(started.elapsed().as_secs_f64());
                out.hit = Some(Hit {
                    entry: e,
                    similarity: 1.0,
                    kind: HitKind::Exact,
                });
                return out;
            }
        }
        if key.semantic {
            out.embedding = self.embed(&key.embed_text).await;
            if let (Some(v), Some(idx)) = (&out.embedding, self.core.index(tenant)) {
                let t0 = Instant::now();
                let found = idx.search(v, key.partition_tag(), 8);
                self.core
                    .metrics
                    .ann_seconds
                    .observe(t0.elapsed().as_secs_f64());
                match found {
                    Ok(cands) => {
                        let best = cands.first().map(|(_, sim)| *sim);
                        let threshold = Self::threshold_for(key, opts);
                        for (id, sim) in cands {
                            if sim < threshold {
                                break;
                            }
                            let Some(e) = self.entry_by_id(id as i64).await else {
                                continue;
                            };
                            // NOTE: the index only proposes; equality decides.
                            if e.tenant == tenant
                                && e.partition == key.partition
                                && Self::usable(&e, now, opts)
                            {
                                out.hit = Some(Hit {
                                    entry: e,
                                    similarity: sim.min(1.0),
                                    kind: HitKind::Semantic,
                                });
                                break;
                            }
                        }
                        if let Some(best) = best {
                            let result = if out.hit.is_some() { "hit" } else { "miss" };
                            self.core
                                .metrics
                                .similarity
                                .with_label_values(&[tenant, result])
                                .observe(best.clamp(0.0, 1.0) as f64);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "vector search failed");
                        self.core
                            .metrics
                            .cache_errors
                            .with_label_values(&["ann"])
                            .inc();
                    }
                }
            }
        }
        self.core
            .metrics
            .lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// Notes a served hit (counts and hit log), dropped if the queue is full.
    pub fn record_hit(&self, tenant: &str, hit: &Hit, probe: &str) {
        self.writeback.send(WriteOp::Hit(HitRecord {
            entry_id: hit.entry.id,
            tenant: tenant.to_string(),
            probe: probe.to_string(),
            similarity: hit.similarity,
            at: now_ms(),
        }));
    }

    /// Queues an entry for storage; returns false if the queue was full.
    pub fn write(&self, entry: NewEntry) -> bool {
        self.writeback.send(WriteOp::Insert(entry))
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

    /// Stops the write-back thread after it drains, then saves the indexes.
    /// Blocking; call [`Cache::flush`] first so that prepared answers are queued.
    pub fn close(&self) {
        self.writeback.close();
        self.core.save_indexes();
    }
}
