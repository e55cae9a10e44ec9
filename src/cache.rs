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
    metrics::{CacheStage, Metrics},
    store::{Entry, HitRecord, Limits, NewEntry, Origin, Removed, Store},
    writeback::{RemoveTarget, WriteOp, Writeback},
};
use tokio::sync::oneshot;

/// A fresh id for a served hit, sent as `x-modelcache-request-id` and kept in
/// the hit log, so that feedback can name the hit.
pub fn new_request_id() -> String {
    use rand::Rng;
    format!("mc-{:016x}", rand::rng().random::<u64>())
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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

/// The long-text guard's verdict on one candidate.
#[derive(Debug, Clone)]
pub(crate) struct LongCheck {
    passed: bool,
    detail: String,
}

/// What the store keeps of a caller's key hash: hashed again, with a label
/// of its own, so that the stored value matches no hash in a config file.
fn stored_key_hash(caller: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"modelcache verified key\0");
    h.update(caller);
    h.finalize().into()
}

/// At most 120 characters of a sentence, for the dry run.
fn clip(s: &str) -> String {
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
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
    /// The structural guards to run on semantic candidates.
    pub guards: crate::guards::GuardSet,
    /// The verifier, which chooses each semantic candidate's threshold.
    pub verifier: crate::verify::Verifier,
}

impl LookupOptions {
    /// Every threshold moved by `delta` (a calibration), each at most 1.
    pub fn shifted(&self, delta: f32) -> LookupOptions {
        let up = |t: f32| (t + delta).clamp(0.0, 1.0);
        let mut o = *self;
        o.thresholds.short = up(o.thresholds.short);
        o.thresholds.long = up(o.thresholds.long);
        o.verifier.same_words_threshold = up(o.verifier.same_words_threshold);
        o.verifier.small_edit_threshold = up(o.verifier.small_edit_threshold);
        o
    }

    /// The options of a tenant's policy, with no per-request tightening.
    pub fn for_policy(p: &Policy) -> LookupOptions {
        LookupOptions {
            thresholds: p.into(),
            max_age: None,
            min_similarity: None,
            guards: p.guards,
            verifier: p.verifier,
        }
    }
}

/// What a lookup may use and serve beyond the request's own key.
#[derive(Debug, Default, Clone)]
pub struct Probe {
    /// The text's embedding, if already computed.
    pub embedding: Option<Vec<f32>>,
    /// Serve only entries written this way.
    pub origin: Option<Origin>,
}

/// One check of a candidate in a dry run.
#[derive(Debug, Clone)]
pub struct Check {
    /// `partition`, `fresh`, `max_age`, a guard's name, `origin` or `similarity`.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// Why, for people.
    pub detail: String,
}

/// A candidate entry of a dry run.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Cosine similarity (1 for the exact layer).
    pub similarity: f32,
    /// Found by exact hash or by the vector index.
    pub kind: HitKind,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// The similarity this candidate needed (the verifier's choice).
    pub needed: f32,
    /// Whether the real lookup would serve this one.
    pub served: bool,
}

/// The result of a dry run ([`Cache::explain`]).
#[derive(Debug, Default)]
pub struct Explanation {
    /// The similarity a semantic hit needs for this request.
    pub threshold: f32,
    /// Whether the request takes part in semantic matching at all.
    pub semantic: bool,
    /// What the real lookup would serve.
    pub hit: Option<Hit>,
    /// Every candidate seen, exact first, then by similarity.
    pub candidates: Vec<Candidate>,
    /// The request's embedding.
    pub embedding: Option<Vec<f32>>,
}

/// An entry read for the semantic layer, with its stored embedding: the
/// similarity that decides a semantic hit is computed from it, never taken
/// from the index.
#[derive(Debug, Clone)]
struct Known {
    entry: Arc<Entry>,
    embedding: Option<Arc<[f32]>>,
}

/// How far below the lowest threshold the index's similarity of a candidate
/// may be and the candidate still be judged (on its recomputed similarity):
/// room for the index's quantization (f16, i8).
const INDEX_SLACK: f32 = 0.02;

/// State shared by lookups and the write-back thread.
pub struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    exact: moka::sync::Cache<String, Arc<Entry>>,
    by_id: moka::sync::Cache<i64, Known>,
    /// The store's identity, sealed into every index snapshot.
    store_id: String,
    indexes: RwLock<HashMap<String, Arc<dyn VectorIndex>>>,
    index_dir: Option<PathBuf>,
    dims: usize,
    quantization: Quantization,
    /// Bumped before removed entries are forgotten, so that a store read that
    /// raced a removal does not put the entry back into memory.
    removals: std::sync::atomic::AtomicU64,
    /// Probes reported as wrongly answered, by entry (few; all in memory).
    negatives: RwLock<HashMap<i64, Vec<Vec<f32>>>>,
    /// Calibrations by tenant: how far its thresholds are moved.
    calibrations: RwLock<HashMap<String, Calibration>>,
    /// The newest change of a shared store this replica has applied.
    followed: std::sync::atomic::AtomicI64,
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
        self.index_dir
            .as_ref()
            .map(|d| d.join(format!("{}.usearch", hex::encode(tenant))))
    }

    fn open_index(&self, tenant: &str) -> Result<Arc<dyn VectorIndex>, CacheError> {
        let rows = self.store.index_rows(tenant)?;
        let Some(path) = self.index_path(tenant) else {
            let idx = UsearchIndex::new(self.dims, self.quantization)?;
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
            self.quantization,
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
        if !self.store.shared() || !path.exists() {
            return None;
        }
        let mark: i64 = std::fs::read_to_string(Self::mark_path(path))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let floor = self.store.change_log_floor().ok()?;
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
            let changes = self.store.changes_since(after, 10_000).ok()?;
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
                if self.store.shared() {
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

    /// Applies other replicas' changes of a shared store to this replica's
    /// memory: a new or replaced entry goes into the vector index (and is
    /// refreshed in the exact layer if held there; the id layer reloads it
    /// from the store); a removed one is forgotten everywhere.
    pub(crate) fn follow(&self, changes: &[crate::store::Change]) {
        use crate::store::ChangeKind;
        let mut removed = Vec::new();
        for c in changes {
            match c.kind {
                ChangeKind::Remove => {
                    removed.push(Removed {
                        tenant: c.tenant.clone(),
                        id: c.entry_id,
                        exact_hash: c.exact_hash.clone(),
                    });
                    continue;
                }
                ChangeKind::Negative => {
                    // NOTE: the entry's whole list is read again, so that
                    // this replica's own reports are not counted twice.
                    if let Ok(negs) = self.store.negatives_of(c.entry_id) {
                        if let Ok(mut map) = self.negatives.write() {
                            let mine: Vec<Vec<f32>> = negs
                                .into_iter()
                                .filter(|n| n.tenant == c.tenant)
                                .map(|n| n.embedding)
                                .collect();
                            if mine.is_empty() {
                                map.remove(&c.entry_id);
                            } else {
                                map.insert(c.entry_id, mine);
                            }
                        }
                    }
                    continue;
                }
                ChangeKind::Insert => {}
            }
            let generation = self.generation();
            let Ok(Some(e)) = self.store.get(c.entry_id) else {
                continue; // removed since: a later change says so
            };
            if e.tenant != c.tenant {
                continue;
            }
            // NOTE: an entry this replica holds in its exact layer is
            // replaced by what the store has now (another replica may have
            // replaced its answer), not dropped: this replica's own writes
            // come back through the log too, and dropping them would leave
            // nothing to answer from while the store is down. A removal
            // between the read and here wins.
            let k = exact_key(&e.tenant, &e.exact_hash);
            if self.exact.contains_key(&k) && self.generation() == generation {
                self.exact.insert(k, Arc::new(e.clone()));
            } else {
                self.exact.invalidate(&k);
            }
            self.by_id.invalidate(&e.id);
            if let (Ok(Some(v)), Some(idx)) = (self.store.embedding(e.id), self.index(&e.tenant)) {
                if v.len() == self.dims {
                    if let Err(err) =
                        idx.add(e.id as u64, crate::keying::partition_tag(&e.partition), &v)
                    {
                        tracing::warn!(error = %err, "index add of a followed entry failed");
                    }
                }
            }
        }
        if !removed.is_empty() {
            self.forget(&removed);
        }
    }

    /// Forgets removed entries in every layer.
    pub(crate) fn forget(&self, removed: &[Removed]) {
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
                let _ = idx.remove(r.id as u64);
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
    fn reported_wrong(&self, entry: i64, probe: &[f32], similarity: f32) -> Option<f32> {
        let negs = self.negatives.read().ok()?;
        negs.get(&entry)?
            .iter()
            .map(|n| crate::index::dot(n, probe))
            .filter(|d| *d >= similarity)
            .reduce(f32::max)
    }

    fn generation(&self) -> u64 {
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

fn store_last_change(store: &Arc<dyn Store>) -> Result<i64, CacheError> {
    if store.shared() {
        Ok(store.last_change()?)
    } else {
        Ok(0)
    }
}

/// The longest a lookup waits for the store (an entry read on its way to a
/// hit); past it the lookup is a miss and the request is forwarded.
const STORE_READ_WITHIN: Duration = Duration::from_secs(1);

/// How often a replica reads a shared store's change log when no
/// notification woke it first (the safety net under LISTEN/NOTIFY).
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

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
    ) -> Result<Cache, CacheError> {
        if let Some(d) = &index_dir {
            std::fs::create_dir_all(d).map_err(|source| CacheError::Io {
                path: d.clone(),
                source,
            })?;
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
            index_dir,
            dims: embedder.dims(),
            quantization,
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
            embedder,
            writeback,
            finishing: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// With a shared store (PostgreSQL), starts a thread that applies other
    /// replicas' changes as soon as the store notifies one (LISTEN/NOTIFY),
    /// and at least every 250 ms, until the cache is dropped. A read that
    /// fails (the database is away) is counted and retried.
    pub fn start_following(self: &Arc<Self>) {
        if !self.core.store.shared() {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || {
                let mut failing = false;
                let store = match weak.upgrade() {
                    Some(cache) => cache.core.store.clone(),
                    None => return,
                };
                loop {
                    // NOTE: the store, not the cache, is held while waiting,
                    // so that a dropped cache stops this thread within one
                    // wait.
                    store.wait_for_change(FOLLOW_EVERY);
                    let Some(cache) = weak.upgrade() else { break };
                    let core = &cache.core;
                    let after = core.followed.load(std::sync::atomic::Ordering::Acquire);
                    match core.store.changes_since(after, 1000) {
                        Ok(changes) => {
                            if failing {
                                tracing::info!("the change log is readable again");
                                failing = false;
                            }
                            if let Some(last) = changes.last() {
                                core.follow(&changes);
                                core.followed
                                    .store(last.id, std::sync::atomic::Ordering::Release);
                            }
                        }
                        Err(e) => {
                            // NOTE: said once per outage, counted every time.
                            if !failing {
                                tracing::warn!(error = %e, "reading the change log failed; retrying");
                                failing = true;
                            }
                            core.metrics
                                .cache_error(CacheStage::StoreRead);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start following the shared store");
        }
    }

    /// The embedding workers, shared (calibration runs on them).
    pub fn embedder(&self) -> EmbedService {
        self.embedder.clone()
    }

    /// Shared state, for the periodic tasks.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Embeds a text for a write that had no lookup embedding.
    pub async fn embed(&self, text: &str) -> Option<Vec<f32>> {
        match self.embedder.embed(text).await {
            Ok(v) => Some(v),
            // NOTE: not a failure: a text this long is matched exactly only.
            Err(crate::embed::EmbedError::TooLong) => None,
            Err(e) => {
                tracing::debug!(error = %e, "embedding failed");
                self.core.metrics.cache_error(CacheStage::Embed);
                None
            }
        }
    }

    /// Runs a store read off the runtime; a failure is logged, counted, and
    /// reads as "not found".
    async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<Option<T>, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.core.store.clone();
        // NOTE: bounded, so that a database that hangs (rather than refusing)
        // turns lookups into misses instead of stalling requests; the read
        // itself finishes, or fails, on its blocking thread.
        let read = tokio::task::spawn_blocking(move || f(store.as_ref()));
        match tokio::time::timeout(STORE_READ_WITHIN, read).await {
            Ok(Ok(Ok(found))) => found,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "store read failed");
                self.core.metrics.cache_error(CacheStage::StoreRead);
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::debug!(within = ?STORE_READ_WITHIN, "store read too slow; treated as a miss");
                self.core.metrics.cache_error(CacheStage::StoreRead);
                None
            }
        }
    }

    /// A semantic candidate with its stored embedding, from memory or in
    /// one store read.
    async fn entry_by_id(&self, id: i64) -> Option<Known> {
        if let Some(k) = self.core.by_id.get(&id) {
            return Some(k);
        }
        let generation = self.core.generation();
        let (e, v) = self.read_store(move |s| s.get_with_embedding(id)).await?;
        let k = Known {
            entry: Arc::new(e),
            embedding: v.map(Arc::from),
        };
        if self.core.generation() == generation {
            self.core.by_id.insert(id, k.clone());
        }
        Some(k)
    }

    async fn exact(&self, tenant: &str, key: &CacheKey) -> Option<Arc<Entry>> {
        let hash = key.exact_hash.clone();
        let k = exact_key(tenant, &hash);
        if let Some(e) = self.core.exact.get(&k) {
            return Some(e);
        }
        let t = tenant.to_string();
        let generation = self.core.generation();
        let e = Arc::new(self.read_store(move |s| s.get_exact(&t, &hash)).await?);
        // NOTE: a removal between the read and here must win.
        if self.core.generation() == generation {
            self.core.exact.insert(k, e.clone());
        }
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
        self.lookup_with(tenant, key, opts, Probe::default()).await
    }

    /// Looks `key` up for `tenant`, reusing an embedding and limiting what
    /// may be served as `probe` says.
    pub async fn lookup_with(
        &self,
        tenant: &str,
        key: &CacheKey,
        opts: &LookupOptions,
        probe: Probe,
    ) -> Lookup {
        let started = Instant::now();
        let found = self.find(tenant, key, opts, probe, false).await;
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
        probe: Probe,
    ) -> Explanation {
        self.find(tenant, key, opts, probe, true).await
    }

    /// Judges one candidate: whether it may be served, and (when `detail`)
    /// each check with its reason.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        e: &Entry,
        tenant: &str,
        key: &CacheKey,
        similarity: f32,
        threshold: f32,
        now: i64,
        opts: &LookupOptions,
        origin: Option<Origin>,
        exact: bool,
        detail: bool,
        wrong_near: Option<f32>,
        long: Option<&LongCheck>,
    ) -> (bool, Vec<Check>, f32) {
        let same_partition = e.tenant == tenant && e.partition == key.partition;
        // NOTE: an exact hit has the same text; guards compare texts that differ.
        // The long-text guard needs embeddings: `long`, from `find`.
        let guards = if exact || !same_partition {
            (true, Vec::new())
        } else {
            let set = crate::guards::GuardSet {
                long_text: false,
                ..opts.guards
            };
            crate::guards::check(&e.text, &key.text, &set, detail)
        };
        let long_ok = long.is_none_or(|l| l.passed);
        let fresh = e.expires_at > now;
        // NOTE: saturating: a max-age past i64 milliseconds (about 9.2e15 s)
        // must not wrap to a negative age limit.
        let young = opts.max_age.is_none_or(|m| {
            now.saturating_sub(e.created_at) <= i64::try_from(m.as_millis()).unwrap_or(i64::MAX)
        });
        let origin_ok = origin.is_none_or(|o| e.origin == o);
        // NOTE: the verifier chooses the threshold of a semantic candidate by
        // how many content words differ; a request's stricter threshold
        // still wins.
        let diff = (!exact && same_partition && opts.verifier.enabled)
            .then(|| crate::verify::diff(&e.text, &key.text));
        let (threshold, why) = match &diff {
            None => (threshold, "threshold"),
            Some(d) => {
                let (t, why) = opts.verifier.threshold(threshold, d);
                (opts.min_similarity.map_or(t, |m| t.max(m)), why)
            }
        };
        let close = similarity >= threshold;
        let feedback_ok = wrong_near.is_none();
        let ok = same_partition
            && fresh
            && young
            && origin_ok
            && guards.0
            && long_ok
            && feedback_ok
            && close;
        if !detail {
            return (ok, Vec::new(), threshold);
        }
        let check = |name, passed, detail: String| Check {
            name,
            passed,
            detail,
        };
        let mut checks = vec![check(
            "partition",
            same_partition,
            if same_partition {
                "same model, parameters and exactly matched turns".into()
            } else if e.model != key.model {
                format!("stored for model {}", e.model)
            } else if e.params != key.params {
                format!("stored with other parameters: {}", e.params)
            } else {
                "the exactly matched turns differ (system prompt, assistant or tool turns, namespace)".into()
            },
        )];
        checks.push(check(
            "fresh",
            fresh,
            if fresh {
                format!("expires in {} s", (e.expires_at - now) / 1000)
            } else {
                format!("expired {} s ago", (now - e.expires_at) / 1000)
            },
        ));
        if let Some(m) = opts.max_age {
            checks.push(check(
                "max_age",
                young,
                format!(
                    "{} s old, max-age {} s",
                    (now - e.created_at) / 1000,
                    m.as_secs()
                ),
            ));
        }
        for g in guards.1 {
            checks.push(check(g.name, g.passed, g.detail));
        }
        if let Some(l) = long {
            checks.push(check("long_text", l.passed, l.detail.clone()));
        }
        if let Some(d) = wrong_near {
            checks.push(check(
                "feedback",
                false,
                format!("reported wrong for a question {d:.4} alike, closer than the entry's own"),
            ));
        }
        if let Some(o) = origin {
            checks.push(check(
                "origin",
                origin_ok,
                format!("written by {}, needs {}", e.origin.as_str(), o.as_str()),
            ));
        }
        let words = match &diff {
            None => String::new(),
            Some(d) if d.count() == 0 => format!(" ({why})"),
            Some(d) => format!(" ({why}: {})", d.describe()),
        };
        checks.push(check(
            "similarity",
            close,
            format!(
                "{similarity:.4} {} threshold {threshold:.4}{words}",
                if close { ">=" } else { "<" }
            ),
        ));
        (ok, checks, threshold)
    }

    /// The long-text guard for a candidate: past the embedding window, the
    /// two texts must be the same, or differ by one short edit whose
    /// sentences, embedded on their own, are as alike as a short question
    /// must be (the tenant's short threshold, tiered by the verifier).
    async fn long_text(&self, stored: &str, probe: &str, opts: &LookupOptions) -> LongCheck {
        // NOTE: the sentences are short texts: the short threshold.
        let threshold = opts.thresholds.short;
        use crate::guards::LongText;
        match crate::guards::long_text(stored, probe, opts.guards.window_words) {
            LongText::Same(why) => LongCheck {
                passed: true,
                detail: why.to_string(),
            },
            LongText::Differs(why) => LongCheck {
                passed: false,
                detail: why,
            },
            LongText::Edit {
                stored: a,
                probe: b,
            } => {
                let (needed, why) = if opts.verifier.enabled {
                    opts.verifier
                        .threshold(threshold, &crate::verify::diff(&a, &b))
                } else {
                    (threshold, "threshold")
                };
                let needed = opts.min_similarity.map_or(needed, |m| needed.max(m));
                // NOTE: together, so that the embedder batches them.
                let sim =
                    match tokio::join!(self.embed(&a), self.embed(&b)) {
                        (Some(x), Some(y)) => crate::index::dot(&x, &y),
                        _ => return LongCheck {
                            passed: false,
                            detail:
                                "one edit in a long text, and its sentences could not be embedded"
                                    .into(),
                        },
                    };
                let passed = sim >= needed;
                LongCheck {
                    passed,
                    detail: format!(
                        "one edit in a long text; its sentences {sim:.4} {} {needed:.4} ({why}): \"{}\" vs \"{}\"",
                        if passed { ">=" } else { "<" },
                        clip(&a),
                        clip(&b)
                    ),
                }
            }
        }
    }

    async fn find(
        &self,
        tenant: &str,
        key: &CacheKey,
        opts: &LookupOptions,
        probe: Probe,
        explain: bool,
    ) -> Explanation {
        let now = now_ms();
        let shifted;
        let opts = match self.calibration(tenant) {
            Some(c) if c.offset != 0.0 => {
                shifted = opts.shifted(c.offset);
                &shifted
            }
            _ => opts,
        };
        let threshold = Self::threshold_for(key, opts);
        let mut out = Explanation {
            threshold,
            semantic: key.semantic,
            ..Default::default()
        };
        if let Some(e) = self.exact(tenant, key).await {
            let (ok, checks, needed) = Self::judge(
                &e,
                tenant,
                key,
                1.0,
                threshold,
                now,
                opts,
                probe.origin,
                true,
                explain,
                None,
                None,
            );
            if ok {
                out.hit = Some(Hit {
                    entry: e.clone(),
                    similarity: 1.0,
                    kind: HitKind::Exact,
                });
            }
            if explain {
                out.candidates.push(Candidate {
                    entry: e,
                    similarity: 1.0,
                    kind: HitKind::Exact,
                    checks,
                    needed,
                    served: ok,
                });
            }
            if ok && !explain {
                return out;
            }
        }
        if !key.semantic {
            return out;
        }
        out.embedding = match probe.embedding {
            Some(v) => Some(v),
            None => self.embed(&key.embed_text).await,
        };
        let (Some(v), Some(idx)) = (&out.embedding, self.core.index(tenant)) else {
            return out;
        };
        let t0 = Instant::now();
        let found = if explain {
            // NOTE: the nearest entries of every partition of the tenant, so
            // that a near question stored under another model or other
            // parameters shows up, failing the partition check.
            let mut any = idx.search(v, None, 10);
            if let (Ok(a), Ok(own)) = (&mut any, idx.search(v, Some(key.partition_tag()), 8)) {
                for c in own {
                    if !a.iter().any(|(id, _)| *id == c.0) {
                        a.push(c);
                    }
                }
                a.sort_by(|x, y| y.1.total_cmp(&x.1));
            }
            any
        } else {
            idx.search(v, Some(key.partition_tag()), 8)
        };
        if !explain {
            self.core
                .metrics
                .ann_seconds
                .observe(t0.elapsed().as_secs_f64());
        }
        let cands = match found {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "vector search failed");
                self.core.metrics.cache_error(CacheStage::Ann);
                return out;
            }
        };
        // The lowest threshold the verifier may choose for any candidate.
        let floor = opts
            .min_similarity
            .map_or(opts.verifier.floor(threshold), |m| {
                opts.verifier.floor(threshold).max(m)
            });
        // The best recomputed similarity seen, for the histogram.
        let mut best: Option<f32> = None;
        for (i, (id, proposed)) in cands.into_iter().enumerate() {
            // NOTE: the nearest candidate is always read, so that the
            // histogram shows its true similarity, not the index's.
            if !explain && (out.hit.is_some() || (i > 0 && proposed < floor - INDEX_SLACK)) {
                break;
            }
            if out.candidates.iter().any(|c| c.entry.id == id as i64) {
                continue;
            }
            let Some(Known {
                entry: e,
                embedding,
            }) = self.entry_by_id(id as i64).await
            else {
                continue;
            };
            // NOTE: the index only proposes. The similarity that decides is
            // recomputed from the embedding the store keeps: a snapshot of
            // another store, a vector gone stale, or NaN bytes in the index
            // can then cost a hit, never serve a wrong one. A candidate with
            // no usable stored embedding is not served semantically.
            let sim = match embedding.as_deref() {
                Some(stored) if stored.len() == v.len() => crate::index::dot(stored, v),
                _ => f32::NAN,
            };
            if !sim.is_finite() {
                tracing::debug!(
                    entry = e.id,
                    proposed,
                    "a candidate without a usable stored embedding is not served"
                );
                continue;
            }
            let sim = sim.min(1.0);
            best = Some(best.map_or(sim, |b| b.max(sim)));
            // NOTE: the long-text guard may embed two sentences, so outside a
            // dry run it runs only for a candidate that passed all else.
            let long_needed =
                opts.guards.long_text && e.tenant == tenant && e.partition == key.partition;
            let long = if long_needed && explain {
                Some(self.long_text(&e.text, &key.text, opts).await)
            } else {
                None
            };
            // NOTE: the index only proposes; equality decides.
            let (ok, checks, needed) = Self::judge(
                &e,
                tenant,
                key,
                sim,
                threshold,
                now,
                opts,
                probe.origin,
                false,
                explain,
                self.core.reported_wrong(e.id, v, sim),
                long.as_ref(),
            );
            let ok = ok
                && (explain
                    || !long_needed
                    || self.long_text(&e.text, &key.text, opts).await.passed);
            let served = ok && out.hit.is_none();
            if served {
                out.hit = Some(Hit {
                    entry: e.clone(),
                    similarity: sim,
                    kind: HitKind::Semantic,
                });
            }
            if explain {
                out.candidates.push(Candidate {
                    entry: e,
                    similarity: sim,
                    kind: HitKind::Semantic,
                    checks,
                    needed,
                    served,
                });
            }
        }
        if let (Some(best), false) = (best, explain) {
            let result = if out.hit.is_some() { "hit" } else { "miss" };
            self.core
                .metrics
                .similarity
                .with_label_values(&[tenant, result])
                .observe(best.clamp(0.0, 1.0) as f64);
        }
        out
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
        self.read_store(move |s| s.verified_key(&t, &k)).await
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
            let done = self.embedder.embed_all_waiting(chunk).await;
            for r in done {
                out.push(r.inspect_err(|_| self.core.metrics.cache_error(CacheStage::Embed))?);
            }
        }
        Ok(out)
    }

    /// The calibration of `tenant`, if it has one.
    pub fn calibration(&self, tenant: &str) -> Option<Calibration> {
        self.core.calibrations.read().ok()?.get(tenant).copied()
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
            .embed_many(&[crate::verify::user_text(probe)], 1)
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
            None,
            Quantization::F16,
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
            let ex = cache.explain("t", &probe, &opts, Probe::default()).await;
            let c = ex.candidates.iter().find(|c| c.entry.id == ids[0]).unwrap();
            assert!((c.similarity - crate::index::dot(&e, &p)).abs() < 1e-5);
            assert!(c.similarity < 0.5 && !c.served);
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
