//! The write-back queue and its single worker thread.
//!
//! Owns every write to the store: new entries (batched into one transaction),
//! hit counts, and sweeps. The queue is bounded; a full queue drops the write
//! and counts it. It must never make a response wait: `send` never blocks.

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
};

use tokio::sync::oneshot;

use crate::{
    cache::Core,
    store::{HitRecord, Limits, NewEntry, Removed},
};

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
        reply: oneshot::Sender<Result<Vec<i64>, String>>,
    },
    /// Record a probe an entry answered wrongly.
    AddNegative {
        /// The negative.
        negative: crate::store::Negative,
        /// Done, or the store's error.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Remove entries from the store and every in-memory layer.
    Remove {
        /// Owning tenant.
        tenant: String,
        /// Which entries.
        target: RemoveTarget,
        /// What was removed, or the store's error.
        reply: oneshot::Sender<Result<Vec<Removed>, String>>,
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
    /// Starts the writer with a queue of `queue` operations.
    pub fn start(core: Arc<Core>, queue: usize, batch: usize) -> Writeback {
        let (tx, rx) = mpsc::sync_channel(queue);
        let worker_core = core.clone();
        let join = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || run(worker_core, rx, batch.max(1)))
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
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Stores `entries` in one transaction and publishes them to the in-memory
/// layers; counted either way.
fn insert(core: &Core, entries: &[NewEntry]) -> Result<Vec<i64>, String> {
    match core.store.insert_batch(entries) {
        Ok(ids) => {
            core.publish(entries, &ids);
            core.metrics
                .writeback
                .with_label_values(&["written"])
                .inc_by(ids.len() as u64);
            Ok(ids)
        }
        Err(e) => {
            tracing::error!(error = %e, count = entries.len(), "write-back failed");
            core.metrics
                .writeback
                .with_label_values(&["failed"])
                .inc_by(entries.len() as u64);
            Err(e.to_string())
        }
    }
}

fn run(core: Arc<Core>, rx: mpsc::Receiver<WriteOp>, batch: usize) {
    let mut stop = false;
    let mut counted = std::time::Instant::now();
    let mut stale = false;
    while !stop {
        let first = if stale {
            // Writes are waiting to be counted: count them once the queue
            // has been quiet for the rest of the second.
            match rx.recv_timeout(COUNTS_EVERY.saturating_sub(counted.elapsed())) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    core.refresh_counts();
                    counted = std::time::Instant::now();
                    stale = false;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            let Ok(op) = rx.recv() else { break };
            op
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
            stale |= insert(&core, &inserts).is_ok();
        }
        if !hits.is_empty() {
            if let Err(e) = core.store.record_hits(&hits) {
                tracing::warn!(error = %e, "recording hits failed");
                core.metrics
                    .cache_errors
                    .with_label_values(&["record_hits"])
                    .inc();
            }
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
                        core.metrics
                            .cache_errors
                            .with_label_values(&["sweep"])
                            .inc();
                    }
                },
                WriteOp::Flush(reply) => {
                    let _ = reply.send(());
                }
                WriteOp::InsertNow { entries, reply } => {
                    let result = insert(&core, &entries);
                    stale |= result.is_ok();
                    let _ = reply.send(result);
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
                        core.metrics
                            .cache_errors
                            .with_label_values(&["remove"])
                            .inc();
                    }
                    let _ = reply.send(result.map_err(|e| e.to_string()));
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
