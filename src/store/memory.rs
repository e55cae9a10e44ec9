//! In-memory store: the same behaviour as SQLite, nothing durable.
//!
//! Owns nothing but a map. Unit tests use it, and so does `eval`, which
//! measures lookups in a throwaway cache. It must never back a serving
//! gateway: nothing in it survives a restart, and no other process sees it.

use std::{collections::BTreeMap, sync::Mutex};

use super::{
    ChangeLog, Entry, HitLog, HitLogRow, HitRecord, Limits, ListQuery, Negative, Negatives,
    NewEntry, Removed, Store, StoreError, TenantStats,
};

/// An entry, its embedding and its last hit time.
type Row = (Entry, Option<Vec<f32>>, Option<i64>);

#[derive(Default)]
struct Inner {
    next_id: i64,
    rows: BTreeMap<i64, Row>,
    hit_log: Vec<HitRecord>,
    models: std::collections::BTreeSet<(String, String)>,
    negatives: Vec<Negative>,
    verified: std::collections::HashMap<(String, [u8; 32]), i64>,
}

impl Inner {
    fn remove_where(&mut self, mut pred: impl FnMut(&Entry) -> bool) -> Vec<Removed> {
        let ids: Vec<i64> = self
            .rows
            .values()
            .filter(|(r, _, _)| pred(r))
            .map(|(r, _, _)| r.id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.rows.remove(&id))
            .map(|(r, _, _)| Removed {
                tenant: r.tenant,
                id: r.id,
                exact_hash: r.exact_hash,
            })
            .collect()
    }
}

/// A map-backed [`Store`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    id: std::sync::OnceLock<String>,
}

impl MemoryStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl Store for MemoryStore {
    fn change_log(&self) -> Option<&dyn ChangeLog> {
        None
    }

    fn insert_batch(&self, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError> {
        let mut g = self.lock()?;
        let mut ids = Vec::new();
        for e in entries {
            let existing = g
                .rows
                .values()
                .find(|(r, _, _)| r.tenant == e.tenant && r.exact_hash == e.exact_hash)
                .map(|(r, _, _)| (r.id, r.hits));
            let (id, hits) = match existing {
                Some(x) => x,
                None => {
                    g.next_id += 1;
                    (g.next_id, 0)
                }
            };
            let last_hit = g.rows.get(&id).and_then(|r| r.2);
            let mut entry = e.to_entry(id, hits);
            entry.last_hit_at = last_hit;
            g.rows.insert(id, (entry, e.embedding.clone(), last_hit));
            ids.push(id);
        }
        Ok(ids)
    }

    fn get(&self, id: i64) -> Result<Option<Entry>, StoreError> {
        Ok(self.lock()?.rows.get(&id).map(|r| r.0.clone()))
    }

    fn delete(&self, tenant: &str, ids: &[i64]) -> Result<Vec<Removed>, StoreError> {
        Ok(self
            .lock()?
            .remove_where(|e| e.tenant == tenant && ids.contains(&e.id)))
    }

    fn truncate(&self, tenant: &str, model: Option<&str>) -> Result<Vec<Removed>, StoreError> {
        Ok(self
            .lock()?
            .remove_where(|e| e.tenant == tenant && model.is_none_or(|m| e.model == m)))
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<Entry>, StoreError> {
        let needle = q.text.as_ref().map(|t| t.to_ascii_lowercase());
        Ok(self
            .lock()?
            .rows
            .values()
            .rev()
            .map(|(r, _, _)| r)
            .filter(|r| {
                q.tenant.as_ref().is_none_or(|t| &r.tenant == t)
                    && q.model.as_ref().is_none_or(|m| &r.model == m)
                    && needle
                        .as_ref()
                        .is_none_or(|n| r.text.to_ascii_lowercase().contains(n.as_str()))
                    && q.before_id.is_none_or(|b| r.id < b)
            })
            .take(q.limit)
            .cloned()
            .collect())
    }

    fn register_model(&self, tenant: &str, model: &str, _now_ms: i64) -> Result<bool, StoreError> {
        Ok(self
            .lock()?
            .models
            .insert((tenant.to_string(), model.to_string())))
    }

    fn record_verified_key(
        &self,
        tenant: &str,
        key_hash: &[u8; 32],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let at = g
            .verified
            .entry((tenant.to_string(), *key_hash))
            .or_insert(at_ms);
        *at = (*at).max(at_ms);
        Ok(())
    }

    fn verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<Option<i64>, StoreError> {
        Ok(self
            .lock()?
            .verified
            .get(&(tenant.to_string(), *key_hash))
            .copied())
    }

    fn revoke_verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.lock()?
            .verified
            .remove(&(tenant.to_string(), *key_hash));
        Ok(())
    }

    fn stats(&self) -> Result<Vec<TenantStats>, StoreError> {
        let g = self.lock()?;
        let mut m: BTreeMap<String, TenantStats> = BTreeMap::new();
        for (r, _, _) in g.rows.values() {
            let s = m.entry(r.tenant.clone()).or_insert_with(|| TenantStats {
                tenant: r.tenant.clone(),
                ..Default::default()
            });
            s.entries += 1;
            s.hits += r.hits as u64;
        }
        Ok(m.into_values().collect())
    }

    fn get_exact(&self, tenant: &str, exact_hash: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .lock()?
            .rows
            .values()
            .find(|(r, _, _)| r.tenant == tenant && r.exact_hash == exact_hash)
            .map(|r| r.0.clone()))
    }

    fn index_rows(&self, tenant: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(self
            .lock()?
            .rows
            .values()
            .filter(|(r, e, _)| r.tenant == tenant && e.is_some())
            .map(|(r, _, _)| (r.id as u64, crate::keying::partition_tag(&r.partition)))
            .collect())
    }

    fn embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError> {
        Ok(self.lock()?.rows.get(&id).and_then(|r| r.1.clone()))
    }

    fn get_with_embedding(&self, id: i64) -> Result<Option<super::WithEmbedding>, StoreError> {
        Ok(self
            .lock()?
            .rows
            .get(&id)
            .map(|r| (r.0.clone(), r.1.clone())))
    }

    fn store_id(&self) -> Result<String, StoreError> {
        Ok(self.id.get_or_init(super::new_store_id).clone())
    }

    fn sweep(&self, now_ms: i64, limits: &Limits) -> Result<Vec<Removed>, StoreError> {
        let mut g = self.lock()?;
        let mut removed = Vec::new();
        let expired: Vec<i64> = g
            .rows
            .values()
            .filter(|(r, _, _)| r.expires_at <= now_ms)
            .map(|(r, _, _)| r.id)
            .collect();
        let mut take = |g: &mut Inner, id: i64| {
            if let Some((r, _, _)) = g.rows.remove(&id) {
                removed.push(Removed {
                    tenant: r.tenant,
                    id,
                    exact_hash: r.exact_hash,
                });
            }
        };
        for id in expired {
            take(&mut g, id);
        }
        let mut by_tenant: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for (r, _, l) in g.rows.values() {
            by_tenant
                .entry(r.tenant.clone())
                .or_default()
                .push((l.unwrap_or(r.created_at), r.id));
        }
        for (tenant, mut lru) in by_tenant {
            let over = lru.len().saturating_sub(limits.of(&tenant) as usize);
            lru.sort();
            for (_, id) in lru.into_iter().take(over) {
                take(&mut g, id);
            }
        }
        Ok(removed)
    }

    fn counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let g = self.lock()?;
        let mut m = BTreeMap::new();
        for (r, _, _) in g.rows.values() {
            *m.entry(r.tenant.clone()).or_insert(0u64) += 1;
        }
        Ok(m.into_iter().collect())
    }
}

impl HitLog for MemoryStore {
    fn record_hits(&self, hits: &[HitRecord]) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        for h in hits {
            if let Some(r) = g.rows.get_mut(&h.entry_id) {
                if r.0.tenant == h.tenant {
                    r.0.hits += 1;
                    r.2 = Some(r.2.unwrap_or(0).max(h.at));
                    r.0.last_hit_at = r.2;
                }
            }
        }
        g.hit_log.extend(hits.iter().cloned());
        Ok(())
    }

    fn hit_log(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<HitLogRow>, StoreError> {
        let g = self.lock()?;
        Ok(g.hit_log
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, h)| tenant.is_none_or(|t| h.tenant == t))
            .take(limit)
            .map(|(i, h)| {
                let e = g
                    .rows
                    .get(&h.entry_id)
                    .map(|r| &r.0)
                    .filter(|e| e.tenant == h.tenant);
                HitLogRow {
                    id: i as i64 + 1,
                    at: h.at,
                    tenant: h.tenant.clone(),
                    entry_id: h.entry_id,
                    probe: h.probe.clone(),
                    matched: e.map(|e| e.text.clone()),
                    model: e.map(|e| e.model.clone()),
                    similarity: h.similarity,
                    request_id: h.request_id.clone(),
                }
            })
            .collect())
    }

    fn hit_by_request(&self, request_id: &str) -> Result<Option<HitLogRow>, StoreError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        Ok(self
            .hit_log(None, usize::MAX)?
            .into_iter()
            .find(|h| h.request_id == request_id))
    }
}

impl Negatives for MemoryStore {
    fn add_negative(&self, n: &Negative) -> Result<(), StoreError> {
        self.lock()?.negatives.push(n.clone());
        Ok(())
    }

    fn negatives(&self) -> Result<Vec<Negative>, StoreError> {
        let g = self.lock()?;
        Ok(g.negatives
            .iter()
            .filter(|n| {
                g.rows
                    .get(&n.entry_id)
                    .is_some_and(|r| r.0.tenant == n.tenant)
            })
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    crate::store::store_suite!(MemoryStore::default);
}
