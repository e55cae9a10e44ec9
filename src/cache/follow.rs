//! Replica following: applying other replicas' changes of a shared store.
//!
//! Owns the loop that reads the store's change log (woken by the store's
//! notifications, or every 250 ms as a safety net) and what a change
//! does to this replica's memory layers. It must never drop an entry this
//! replica still serves from unless the store removed it.

use std::{sync::Arc, time::Duration};

use super::memory::{exact_key, Core};
use crate::{metrics::CacheStage, store::Removed};

/// How often a replica reads a shared store's change log when no
/// notification woke it first (the safety net under LISTEN/NOTIFY).
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

impl Core {
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
            // NOTE: the entry and its vector in one read (one round trip to
            // a shared store, not two).
            let Ok(Some((e, vector))) = self.store.get_with_embedding(c.entry_id) else {
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
            if let (Some(v), Some(idx)) = (vector, self.index(&e.tenant)) {
                if v.len() == self.dims {
                    if let Err(err) = idx.followed_add(
                        e.id as u64,
                        crate::keying::partition_tag(&e.partition),
                        &v,
                    ) {
                        tracing::warn!(error = %err, "index add of a followed entry failed");
                    }
                }
            }
        }
        if !removed.is_empty() {
            self.forget_followed(&removed);
        }
    }
}

impl Core {
    /// With a shared store (PostgreSQL), starts a thread that applies other
    /// replicas' changes as soon as the store notifies one (LISTEN/NOTIFY),
    /// and at least every 250 ms, until the cache is dropped. A read that
    /// fails (the database is away) is counted and retried.
    pub(super) fn start_following(self: &Arc<Self>) {
        if self.store.change_log().is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || {
                let mut failing = false;
                let store = match weak.upgrade() {
                    Some(core) => core.store.clone(),
                    None => return,
                };
                // NOTE: the store, not the memory layers, is held while
                // waiting, so that a dropped cache (whose writer then lets go
                // of them too) stops this thread within a wait.
                while let Some(log) = store.change_log() {
                    log.wait_for_change(FOLLOW_EVERY);
                    let Some(core) = weak.upgrade() else { break };
                    let after = core.followed.load(std::sync::atomic::Ordering::Acquire);
                    match log.changes_since(after, 1000) {
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
}
