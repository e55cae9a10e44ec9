//! The memory layers: what this replica holds of the store to answer fast.
//!
//! Owns the exact layer (entries by tenant and exact hash), the id layer
//! (entries with their stored embeddings, by id), the vector index of each
//! tenant (opened, snapshotted with a seal, rebuilt), the reported-wrong
//! probes and the calibrations. Only the writer and replica following change
//! it; lookups read it. It must never hold an entry the store has removed
//! (a removal bumps a generation that a racing read checks).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use super::error::CacheError;
use crate::{
    config::Quantization,
    index::{milvus::Milvus, UsearchIndex, VectorIndex},
    metrics::{CacheStage, Metrics},
    store::{Entry, NewEntry, Removed, Store},
};

/// Where the cache's vector indexes live.
pub enum IndexPlace {
    /// One usearch index per tenant in this process's memory, snapshotted
    /// in `dir` (never, without one).
    Memory {
        /// The snapshots' folder.
        dir: Option<PathBuf>,
        /// The vectors' scalar type.
        quantization: Quantization,
    },
    /// One Milvus collection that every replica searches and writes.
    Milvus(Arc<Milvus>),
}

impl IndexPlace {
    /// Where `[index]` puts the indexes: usearch snapshotted in `dir`, or
    /// the Milvus collection it names (connected to now; Milvus away is not
    /// an error, a collection of another shape is).
    pub fn configured(
        settings: &crate::config::IndexSettings,
        dir: Option<PathBuf>,
        quantization: Quantization,
        dims: usize,
    ) -> Result<IndexPlace, CacheError> {
        Ok(match &settings.backend {
            crate::config::IndexBackend::Usearch => IndexPlace::Memory { dir, quantization },
            crate::config::IndexBackend::Milvus {
                url,
                collection,
                search_timeout,
                queue,
            } => IndexPlace::Milvus(Milvus::connect(
                crate::index::milvus::MilvusSettings {
                    url: url.clone(),
                    collection: collection.clone(),
                    search_within: *search_timeout,
                    queue: *queue,
                },
                dims,
            )?),
        })
    }
}

/// An entry read for the semantic layer, with its stored embedding: the
/// similarity that decides a semantic hit is computed from it, never taken
/// from the index.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub(super) entry: Arc<Entry>,
    pub(super) embedding: Option<Arc<[f32]>>,
}

/// State shared by lookups and the write-back thread.
pub struct Core {
    /// The embedding workers.
    pub(super) embedder: crate::embed::EmbedService,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) exact: moka::sync::Cache<String, Arc<Entry>>,
    pub(super) by_id: moka::sync::Cache<i64, Known>,
    /// The store's identity, sealed into every index snapshot.
    pub(super) store_id: String,
    pub(super) indexes: RwLock<HashMap<String, Arc<dyn VectorIndex>>>,
    /// Where the vector indexes live.
    pub(super) place: IndexPlace,
    pub(super) dims: usize,
    /// Bumped before removed entries are forgotten, so that a store read that
    /// raced a removal does not put the entry back into memory.
    pub(super) removals: std::sync::atomic::AtomicU64,
    /// Probes reported as wrongly answered, by entry (few; all in memory).
    pub(super) negatives: RwLock<HashMap<i64, Vec<Vec<f32>>>>,
    /// Calibrations by tenant: how far its thresholds are moved.
    pub(super) calibrations: RwLock<HashMap<String, Calibration>>,
    /// The newest change of a shared store this replica has applied.
    pub(super) followed: std::sync::atomic::AtomicI64,
}

/// The outcome of calibrating a tenant's thresholds on labelled pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Added to every threshold of the tenant.
    pub offset: f32,
    /// The wrong-answer rate the tenant stated.
    pub max_wrong_rate: f64,
    /// The wrong-answer rate on the pairs after the move.
    pub wrong_rate: f64,
    /// The share of should-hit pairs that hit after the move.
    pub recall: f64,
    /// Pairs measured.
    pub pairs: usize,
}

pub(super) fn exact_key(tenant: &str, exact_hash: &str) -> String {
    format!("{tenant}\u{0}{exact_hash}")
}

/// The longest a lookup waits for the store (an entry read on its way to a
/// hit); past it the lookup is a miss and the request is forwarded.
const STORE_READ_WITHIN: Duration = Duration::from_secs(1);

impl Core {
    /// Embeds a text for a write that had no lookup embedding.
    pub async fn embed(&self, text: &str) -> Option<Vec<f32>> {
        match self.embedder.embed(text).await {
            Ok(v) => Some(v),
            // NOTE: not a failure: a text this long is matched exactly only.
            Err(crate::embed::EmbedError::TooLong) => None,
            Err(e) => {
                tracing::debug!(error = %e, "embedding failed");
                self.metrics.cache_error(CacheStage::Embed);
                None
            }
        }
    }

    /// Runs a store read off the runtime; a failure is logged, counted, and
    /// reads as "not found".
    pub(super) async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<Option<T>, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.store.clone();
        // NOTE: bounded, so that a database that hangs (rather than refusing)
        // turns lookups into misses instead of stalling requests; the read
        // itself finishes, or fails, on its blocking thread.
        let read = tokio::task::spawn_blocking(move || f(store.as_ref()));
        match tokio::time::timeout(STORE_READ_WITHIN, read).await {
            Ok(Ok(Ok(found))) => found,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "store read failed");
                self.metrics.cache_error(CacheStage::StoreRead);
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::debug!(within = ?STORE_READ_WITHIN, "store read too slow; treated as a miss");
                self.metrics.cache_error(CacheStage::StoreRead);
                None
            }
        }
    }

    /// The calibration of `tenant`, if it has one.
    pub fn calibration(&self, tenant: &str) -> Option<Calibration> {
        self.calibrations.read().ok()?.get(tenant).copied()
    }

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
                self.metrics.cache_error(CacheStage::IndexOpen);
                return None;
            }
        };
        w.insert(tenant.to_string(), idx.clone());
        Some(idx)
    }

    fn index_path(&self, tenant: &str) -> Option<PathBuf> {
        // NOTE: tenant names come from the config, but are hex-encoded anyway so
        // that no name can escape the folder.
        match &self.place {
            IndexPlace::Memory { dir: Some(d), .. } => {
                Some(d.join(format!("{}.usearch", hex::encode(tenant))))
            }
            _ => None,
        }
    }

    fn open_index(&self, tenant: &str) -> Result<Arc<dyn VectorIndex>, CacheError> {
        let quantization = match &self.place {
            // NOTE: nothing to load or rebuild: Milvus holds the vectors.
            IndexPlace::Milvus(m) => return Ok(Arc::new(m.tenant(tenant))),
            IndexPlace::Memory { quantization, .. } => *quantization,
        };
        let rows = self.store.index_rows(tenant)?;
        let Some(path) = self.index_path(tenant) else {
            let idx = UsearchIndex::new(self.dims, quantization)?;
            return Ok(Arc::new(idx));
        };
        let started = Instant::now();
        let changed = self.changed_since_snapshot(tenant, &path);
        // NOTE: a snapshot belongs to one store and one tenant; the file name
        // says the tenant too, but a copied file keeps its name.
        let owner = format!("{} {}", self.store_id, hex::encode(tenant));
        let (idx, rebuilt) = UsearchIndex::open(
            &path,
            &owner,
            self.dims,
            quantization,
            &rows,
            changed.as_deref().unwrap_or(&[]),
            |ids| {
                let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
                match self.store.embeddings(&ids) {
                    Ok(found) => found.into_iter().map(|(id, v)| (id as u64, v)).collect(),
                    Err(e) => {
                        tracing::warn!(tenant, error = %e, "reading stored embeddings failed");
                        Vec::new()
                    }
                }
            },
        )?;
        tracing::info!(
            tenant,
            entries = idx.len(),
            rebuilt,
            tail = changed.as_ref().map(Vec::len),
            ms = started.elapsed().as_millis() as u64,
            "vector index open"
        );
        if rebuilt {
            self.save_index(tenant, &idx, &path);
        }
        Ok(Arc::new(idx))
    }

    /// The file beside an index snapshot that says up to which change of a
    /// shared store the snapshot is complete.
    fn mark_path(path: &std::path::Path) -> PathBuf {
        path.with_extension("usearch.change")
    }

    /// With a shared store and a snapshot that says which change it is
    /// complete up to: the ids of `tenant` the change log touched since (the
    /// tail). `None` when there is no such snapshot, or the log cannot be
    /// read: then the snapshot is checked against the table instead.
    fn changed_since_snapshot(&self, tenant: &str, path: &std::path::Path) -> Option<Vec<u64>> {
        let log = self.store.change_log()?;
        if !path.exists() {
            return None;
        }
        let mark: i64 = std::fs::read_to_string(Self::mark_path(path))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let floor = log.change_log_floor().ok()?;
        if mark < floor {
            tracing::info!(
                tenant,
                mark,
                floor,
                "the index snapshot is older than the change log; checking it against the table"
            );
            return None;
        }
        let mut after = mark;
        let mut ids = Vec::new();
        loop {
            let changes = log.changes_since(after, 10_000).ok()?;
            let Some(last) = changes.last() else { break };
            after = last.id;
            ids.extend(
                changes
                    .iter()
                    .filter(|c| c.tenant == tenant && c.kind != crate::store::ChangeKind::Negative)
                    .map(|c| c.entry_id as u64),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }

    /// Saves one index; with a shared store, also marks the change it is
    /// complete up to (read before the save: every change up to it has been
    /// applied).
    fn save_index(&self, tenant: &str, idx: &dyn VectorIndex, path: &std::path::Path) {
        let followed = self.followed.load(std::sync::atomic::Ordering::Acquire);
        match idx.save(path) {
            Ok(saved) => {
                if saved {
                    tracing::debug!(tenant, "vector index saved");
                }
                if self.store.change_log().is_some() {
                    // NOTE: written after the snapshot: a crash between the two
                    // leaves an older mark, whose longer tail is harmless.
                    if let Err(e) = std::fs::write(Self::mark_path(path), followed.to_string()) {
                        tracing::warn!(tenant, error = %e, "cannot mark the index snapshot");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(tenant, error = %e, "vector index save failed");
                self.metrics.cache_error(CacheStage::IndexSave);
            }
        }
    }

    /// Saves every dirty index.
    pub(crate) fn save_indexes(&self) {
        let Ok(map) = self.indexes.read() else { return };
        for (tenant, idx) in map.iter() {
            if let Some(path) = self.index_path(tenant) {
                self.save_index(tenant, idx.as_ref(), &path);
            }
        }
    }

    /// Waits up to `within` for index writes a shared index (Milvus) still
    /// queues; says how many were left unwritten.
    pub(crate) fn flush_shared_index(&self, within: Duration) {
        if let IndexPlace::Milvus(m) = &self.place {
            let left = m.flush(within);
            if left > 0 {
                tracing::warn!(
                    left,
                    "Milvus did not take every queued index write before shutdown; those entries hit exactly only until written again"
                );
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
                        self.metrics.cache_error(CacheStage::IndexAdd);
                    }
                }
            }
            let entry = Arc::new(e.to_entry(*id, 0));
            self.exact
                .insert(exact_key(&e.tenant, &e.exact_hash), entry.clone());
            self.by_id.insert(
                *id,
                Known {
                    entry,
                    embedding: e.embedding.as_deref().map(Arc::from),
                },
            );
        }
    }

    /// Forgets entries this replica removed, in every layer.
    pub(crate) fn forget(&self, removed: &[Removed]) {
        self.forget_in(removed, false);
    }

    /// Forgets entries the change log says were removed (a shared index
    /// already has that from the replica that removed them).
    pub(crate) fn forget_followed(&self, removed: &[Removed]) {
        self.forget_in(removed, true);
    }

    fn forget_in(&self, removed: &[Removed], followed: bool) {
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut negs) = self.negatives.write() {
            for r in removed {
                negs.remove(&r.id);
            }
        }
        for r in removed {
            self.exact.invalidate(&exact_key(&r.tenant, &r.exact_hash));
            self.by_id.invalidate(&r.id);
            if let Some(idx) = self.index(&r.tenant) {
                let removed = match followed {
                    true => idx.followed_remove(r.id as u64),
                    false => idx.remove(r.id as u64),
                };
                if let Err(e) = removed {
                    tracing::debug!(error = %e, "index remove failed");
                    self.metrics.cache_error(CacheStage::IndexAdd);
                }
            }
        }
    }

    /// Records a probe `entry` answered wrongly.
    pub(crate) fn add_negative(&self, n: &crate::store::Negative) -> Result<(), CacheError> {
        self.store.add_negative(n)?;
        if let Ok(mut negs) = self.negatives.write() {
            negs.entry(n.entry_id)
                .or_default()
                .push(n.embedding.clone());
        }
        Ok(())
    }

    /// Whether `probe` is at least as close to a probe `entry` was reported
    /// to answer wrongly as it is to the entry itself (`similarity`).
    pub(super) fn reported_wrong(&self, entry: i64, probe: &[f32], similarity: f32) -> Option<f32> {
        let negs = self.negatives.read().ok()?;
        negs.get(&entry)?
            .iter()
            .map(|n| crate::index::dot(n, probe))
            .filter(|d| *d >= similarity)
            .reduce(f32::max)
    }

    pub(super) fn generation(&self) -> u64 {
        self.removals.load(std::sync::atomic::Ordering::Acquire)
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
