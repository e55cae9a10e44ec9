//! The write-back queue and its single worker thread.
//!
//! Owns every write to the store: new entries (batched into one transaction),
//! hit counts (batched: one row update per entry per second at most), and
//! sweeps. The queue is bounded; a full queue drops the write and counts it.
//! Entries the store refuses (it is away) wait in a second bounded queue and
//! are written when it returns. It must never make a response wait: `send`
//! never blocks.

use std::{
    collections::VecDeque,
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{error::CacheError, memory::Core};
use crate::{
    keying::CacheKey,
    metrics::CacheStage,
    store::{HitRecord, Limits, NewEntry, Origin, Removed, StoreError},
};

/// The stored row of `answer` to the request keyed `key` for `tenant`,
/// written `now`, living `ttl`: the one place a row is built from a key.
pub fn row(
    tenant: &str,
    key: &CacheKey,
    answer: String,
    embedding: Option<Vec<f32>>,
    now: i64,
    ttl: Duration,
    origin: Origin,
) -> NewEntry {
    NewEntry {
        tenant: tenant.to_string(),
        exact_hash: key.exact_hash.clone(),
        partition: key.partition.clone(),
        endpoint: key.endpoint.as_str().to_string(),
        model: key.model.clone(),
        text: key.text.clone(),
        params: key.params.clone(),
        answer,
        embedding,
        created_at: now,
        // NOTE: saturating: a TTL past i64 milliseconds never wraps.
        expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        origin,
    }
}

/// Which entries of a tenant a removal takes.
#[derive(Debug, Clone)]
pub enum RemoveTarget {
    /// These ids (ids of other tenants are left alone).
    Ids(Vec<i64>),
    /// Every entry, or every entry of one model.
    All {
        /// Only this model's entries.
        model: Option<String>,
    },
}

/// One unit of work for the writer.
pub enum WriteOp {
    /// Store entries now and reply with their ids once they can hit.
    InsertNow {
        /// The entries.
        entries: Vec<NewEntry>,
        /// Their ids, or the store's error.
        reply: oneshot::Sender<Result<Vec<i64>, CacheError>>,
    },
    /// Record a probe an entry answered wrongly.
    AddNegative {
        /// The negative.
        negative: crate::store::Negative,
        /// Done, or the store's error.
        reply: oneshot::Sender<Result<(), CacheError>>,
    },
    /// Remove entries from the store and every in-memory layer.
    Remove {
        /// Owning tenant.
        tenant: String,
        /// Which entries.
        target: RemoveTarget,
        /// What was removed, or the store's error.
        reply: oneshot::Sender<Result<Vec<Removed>, CacheError>>,
    },
    /// Store a new entry.
    Insert(NewEntry),
    /// Count a hit.
    Hit(HitRecord),
    /// Delete expired and surplus entries.
    Sweep {
        /// Now, in Unix milliseconds.
        now_ms: i64,
        /// Entry caps.
        limits: Limits,
    },
    /// Reply once everything queued before it is done.
    Flush(oneshot::Sender<()>),
    /// Finish the queue and stop.
    Stop,
}

/// Handle to the writer thread.
pub struct Writeback {
    tx: mpsc::SyncSender<WriteOp>,
    core: Arc<Core>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl Writeback {
    /// Starts the writer with a queue of `queue` operations. Up to `queue`
    /// entries whose write failed also wait in memory for the store.
    pub fn start(core: Arc<Core>, queue: usize, batch: usize) -> Writeback {
        let (tx, rx) = mpsc::sync_channel(queue);
        let worker_core = core.clone();
        let join = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || run(worker_core, rx, batch.max(1), queue))
            .ok();
        if join.is_none() {
            tracing::error!("cannot start the write-back thread; nothing will be cached");
        }
        Writeback {
            tx,
            core,
            join: Mutex::new(join),
        }
    }

    /// Queues `op` without waiting. Returns false if it was dropped.
    pub fn send(&self, op: WriteOp) -> bool {
        let is_insert = matches!(op, WriteOp::Insert(_));
        match self.tx.try_send(op) {
            Ok(()) => {
                self.core.metrics.writeback_queue_depth.inc();
                true
            }
            Err(_) => {
                if is_insert {
                    self.core.metrics.writeback_dropped.inc();
                    self.core
                        .metrics
                        .writeback
                        .with_label_values(&["dropped"])
                        .inc();
                    tracing::warn!("write-back queue full; answer not cached");
                }
                false
            }
        }
    }

    /// Queues `op`, waiting for room (off the runtime) rather than dropping
    /// it. Returns false only if the writer has stopped.
    pub async fn send_waiting(&self, op: WriteOp) -> bool {
        let tx = self.tx.clone();
        let metrics = self.core.metrics.clone();
        // NOTE: a blocking send, off the runtime: flushes, removals and
        // explicit inserts must not be dropped.
        tokio::task::spawn_blocking(move || {
            let ok = tx.send(op).is_ok();
            if ok {
                metrics.writeback_queue_depth.inc();
            }
            ok
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until every operation queued before this call is done.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send_waiting(WriteOp::Flush(reply)).await {
            let _ = rx.await;
        }
    }

    /// Drains the queue and joins the thread. Blocking.
    pub fn close(&self) {
        if self.tx.send(WriteOp::Stop).is_ok() {
            self.core.metrics.writeback_queue_depth.inc();
        }
        if let Ok(mut j) = self.join.lock() {
            if let Some(j) = j.take() {
                let _ = j.join();
            }
        }
    }
}

/// Shortest time between two refreshes of the entry gauges after writes (a
/// full count per tenant).
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// Hits are counted in the store in batches: at the latest this long after
/// the first hit of a batch...
const HITS_EVERY: Duration = Duration::from_secs(1);
/// ...or as soon as this many are waiting.
const HITS_BATCH: usize = 512;
/// Hits kept while the store refuses them; the oldest go beyond this.
const HITS_KEEP: usize = 10_000;
/// How often entries whose write failed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Stores `entries` in one transaction and publishes them to the in-memory
/// layers; counts what was written.
fn store_batch(core: &Core, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError> {
    let ids = core.store.insert_batch(entries)?;
    core.publish(entries, &ids);
    core.metrics
        .writeback
        .with_label_values(&["written"])
        .inc_by(ids.len() as u64);
    Ok(ids)
}

fn count_failed(core: &Core, n: usize) {
    core.metrics
        .writeback
        .with_label_values(&["failed"])
        .inc_by(n as u64);
}

/// Stores `entries` (or fails), counted either way.
fn insert(core: &Core, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError> {
    store_batch(core, entries).inspect_err(|e| {
        tracing::error!(error = %e, count = entries.len(), "write-back failed");
        count_failed(core, entries.len());
    })
}

/// Stores background entries. If the store refuses the batch for its data
/// (not for being away), each entry is tried alone, so that one it cannot
/// hold is dropped instead of holding back the rest. Returns the entries to
/// try again later (the store is away), if any.
///
/// Counts the entries dropped as failed; entries to try again are not
/// counted here (their first failure is, by the caller).
fn insert_sorting(core: &Core, entries: Vec<NewEntry>) -> Result<(), (Vec<NewEntry>, String)> {
    match store_batch(core, &entries) {
        Ok(_) => Ok(()),
        Err(StoreError::Rejected(_)) => {
            let mut again = Vec::new();
            let mut away = String::new();
            for e in entries {
                match store_batch(core, std::slice::from_ref(&e)) {
                    Ok(_) => {}
                    Err(StoreError::Rejected(why)) => {
                        tracing::error!(tenant = %e.tenant, %why, "the store refused an entry; dropped");
                        count_failed(core, 1);
                    }
                    Err(e2) => {
                        away = e2.to_string();
                        again.push(e);
                    }
                }
            }
            if again.is_empty() {
                Ok(())
            } else {
                Err((again, away))
            }
        }
        Err(e) => Err((entries, e.to_string())),
    }
}

/// Entries whose write failed (the store is away), kept in arrival order and
/// written when it returns. Bounded: past `keep` the oldest are dropped and
/// counted, and an entry that expires while waiting is dropped too.
struct Deferred {
    entries: VecDeque<NewEntry>,
    keep: usize,
    next_try: Instant,
    failing: bool,
}

impl Deferred {
    fn new(keep: usize) -> Deferred {
        Deferred {
            entries: VecDeque::new(),
            keep: keep.max(1),
            next_try: Instant::now(),
            failing: false,
        }
    }

    /// Keeps `entries` after a failed write.
    fn defer(&mut self, core: &Core, entries: Vec<NewEntry>) {
        if !self.failing {
            tracing::warn!(
                keep = self.keep,
                "the store refuses writes; keeping new entries in memory until it returns"
            );
            self.failing = true;
        }
        self.entries.extend(entries);
        let over = self.entries.len().saturating_sub(self.keep);
        if over > 0 {
            self.entries.drain(..over);
            drop_counted(
                core,
                over,
                "the store is still away; oldest waiting entries dropped",
            );
        }
        self.next_try = Instant::now() + RETRY_EVERY;
        core.metrics
            .writeback_deferred
            .set(self.entries.len() as i64);
    }

    /// Tries to write what waits (all of it, in batches of `batch`), if any.
    /// Returns whether anything was written.
    fn retry(&mut self, core: &Core, batch: usize) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let now = crate::clock::now_ms();
        let before = self.entries.len();
        self.entries.retain(|e| e.expires_at > now);
        if self.entries.len() < before {
            drop_counted(core, before - self.entries.len(), "waiting entries expired");
        }
        let mut wrote = false;
        while !self.entries.is_empty() {
            let n = self.entries.len().min(batch);
            let chunk: Vec<NewEntry> = self.entries.drain(..n).collect();
            let tried = chunk.len();
            match insert_sorting(core, chunk) {
                Ok(()) => wrote = true,
                Err((again, error)) => {
                    wrote |= again.len() < tried;
                    tracing::debug!(%error, waiting = self.entries.len() + again.len(), "deferred write failed again");
                    for e in again.into_iter().rev() {
                        self.entries.push_front(e);
                    }
                    self.next_try = Instant::now() + RETRY_EVERY;
                    break;
                }
            }
        }
        if self.entries.is_empty() && self.failing {
            tracing::info!("the store takes writes again; waiting entries written");
            self.failing = false;
        }
        core.metrics
            .writeback_deferred
            .set(self.entries.len() as i64);
        wrote
    }

    fn due(&self) -> Option<Instant> {
        (!self.entries.is_empty()).then_some(self.next_try)
    }
}

fn drop_counted(core: &Core, n: usize, why: &str) {
    core.metrics.writeback_dropped.inc_by(n as u64);
    core.metrics
        .writeback
        .with_label_values(&["dropped"])
        .inc_by(n as u64);
    tracing::warn!(count = n, "{why}");
}

/// Hits waiting to be counted in the store.
struct Hits {
    waiting: Vec<HitRecord>,
    since: Option<Instant>,
}

impl Hits {
    fn add(&mut self, hits: Vec<HitRecord>) {
        if self.waiting.is_empty() && !hits.is_empty() {
            self.since = Some(Instant::now());
        }
        self.waiting.extend(hits);
    }

    fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + HITS_EVERY)
    }

    /// Writes the waiting hits in one batch; kept (up to a bound) if the
    /// store refuses them.
    fn write(&mut self, core: &Core) {
        if self.waiting.is_empty() {
            return;
        }
        match core.store.record_hits(&self.waiting) {
            Ok(()) => {
                self.waiting.clear();
                self.since = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording hits failed");
                core.metrics.cache_error(CacheStage::RecordHits);
                if matches!(e, StoreError::Rejected(_)) {
                    // NOTE: the store is up and refuses these rows: keeping
                    // them would block every later hit.
                    self.waiting.clear();
                    self.since = None;
                    return;
                }
                let over = self.waiting.len().saturating_sub(HITS_KEEP);
                self.waiting.drain(..over);
                self.since = Some(Instant::now());
            }
        }
    }
}

fn run(core: Arc<Core>, rx: mpsc::Receiver<WriteOp>, batch: usize, keep: usize) {
    let mut stop = false;
    let mut counted = Instant::now();
    let mut stale = false;
    let mut deferred = Deferred::new(keep);
    let mut waiting_hits = Hits {
        waiting: Vec::new(),
        since: None,
    };
    while !stop {
        // NOTE: the queue is waited on only until the next timed duty: the
        // entry gauges after writes (once the queue has been quiet for the
        // rest of the second), a batch of hits, a retry of deferred writes.
        let due = [
            stale.then_some(counted + COUNTS_EVERY),
            waiting_hits.due(),
            deferred.due(),
        ]
        .into_iter()
        .flatten()
        .min();
        let first = match due {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if waiting_hits.due().is_some_and(|t| t <= now) {
                        waiting_hits.write(&core);
                    }
                    if deferred.due().is_some_and(|t| t <= now) {
                        stale |= deferred.retry(&core, batch);
                    }
                    if stale && counted + COUNTS_EVERY <= now {
                        core.refresh_counts();
                        counted = Instant::now();
                        stale = false;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => {
                let Ok(op) = rx.recv() else { break };
                op
            }
        };
        let mut ops = vec![first];
        while ops.len() < batch {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        core.metrics.writeback_queue_depth.sub(ops.len() as i64);
        let mut inserts = Vec::new();
        let mut hits = Vec::new();
        let mut after = Vec::new();
        for op in ops {
            match op {
                WriteOp::Insert(e) => inserts.push(e),
                WriteOp::Hit(h) => hits.push(h),
                other => after.push(other),
            }
        }
        if !inserts.is_empty() {
            if deferred.due().is_some() {
                // NOTE: behind the entries already waiting, in order.
                deferred.defer(&core, inserts);
            } else {
                let tried = inserts.len();
                match insert_sorting(&core, inserts) {
                    Ok(()) => stale = true,
                    Err((again, error)) => {
                        tracing::error!(%error, count = again.len(), "write-back failed");
                        count_failed(&core, again.len());
                        stale |= again.len() < tried;
                        deferred.defer(&core, again);
                    }
                }
            }
        }
        waiting_hits.add(hits);
        if waiting_hits.waiting.len() >= HITS_BATCH {
            waiting_hits.write(&core);
        }
        // NOTE: what waits is written before a removal, a flush or a stop,
        // so that a removal is never undone by a late write and a flush
        // means "stored".
        if after.iter().any(|op| {
            matches!(
                op,
                WriteOp::Remove { .. } | WriteOp::Flush(_) | WriteOp::Stop | WriteOp::Sweep { .. }
            )
        }) {
            waiting_hits.write(&core);
            stale |= deferred.retry(&core, batch);
        }
        for op in after {
            match op {
                WriteOp::Sweep { now_ms, limits } => match core.store.sweep(now_ms, &limits) {
                    Ok(removed) => {
                        if !removed.is_empty() {
                            tracing::info!(
                                count = removed.len(),
                                "swept expired or surplus entries"
                            );
                            core.forget(&removed);
                        }
                        core.refresh_counts();
                        counted = std::time::Instant::now();
                        stale = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweep failed");
                        core.metrics.cache_error(CacheStage::Sweep);
                    }
                },
                WriteOp::Flush(reply) => {
                    let _ = reply.send(());
                }
                WriteOp::InsertNow { entries, reply } => {
                    let result = insert(&core, &entries);
                    stale |= result.is_ok();
                    let _ = reply.send(result.map_err(CacheError::from));
                }
                WriteOp::AddNegative { negative, reply } => {
                    let _ = reply.send(core.add_negative(&negative));
                }
                WriteOp::Remove {
                    tenant,
                    target,
                    reply,
                } => {
                    let result = match &target {
                        RemoveTarget::Ids(ids) => core.store.delete(&tenant, ids),
                        RemoveTarget::All { model } => {
                            core.store.truncate(&tenant, model.as_deref())
                        }
                    };
                    if let Ok(removed) = &result {
                        core.forget(removed);
                        stale = true;
                    } else {
                        core.metrics.cache_error(CacheStage::Remove);
                    }
                    let _ = reply.send(result.map_err(CacheError::from));
                }
                WriteOp::Stop => stop = true,
                WriteOp::Insert(_) | WriteOp::Hit(_) => {}
            }
        }
        // NOTE: a full count per tenant, so at most once a second.
        if stale && counted.elapsed() >= COUNTS_EVERY {
            core.refresh_counts();
            counted = std::time::Instant::now();
            stale = false;
        }
    }
}
