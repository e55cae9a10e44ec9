//! Vector indexes: nearest neighbours by cosine, filtered to one partition.
//!
//! Owns the [`VectorIndex`] seam, its usearch implementation and a brute-force
//! one for tests, and the index files under `data/index/`. It must never be the
//! source of truth: SQLite is, and a missing or stale index is rebuilt from it.
//! Partition filtering is an equality test on a tag, never a distance.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        RwLock,
    },
};

use crate::config::Quantization;

/// Index failures. A search failure makes the lookup a miss, never an error.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// usearch reported an error.
    #[error("vector index: {0}")]
    Native(String),
    /// Wrong vector size.
    #[error("vector has {got} dimensions, the index {want}")]
    Dims {
        /// Given.
        got: usize,
        /// Expected.
        want: usize,
    },
}

/// The dot product of two vectors: their cosine similarity when both are
/// unit vectors, as every embedding here is.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A nearest-neighbour index over unit vectors, each tagged with a partition.
pub trait VectorIndex: Send + Sync {
    /// Adds (or replaces) `id`.
    fn add(&self, id: u64, tag: u64, vector: &[f32]) -> Result<(), IndexError>;
    /// Removes `id` if present.
    fn remove(&self, id: u64) -> Result<(), IndexError>;
    /// Up to `k` nearest ids whose tag is `tag` (any tag with `None`), with
    /// cosine similarity, best first.
    fn search(
        &self,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError>;
    /// Number of vectors.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether `id` is present.
    fn contains(&self, id: u64) -> bool;
    /// Approximate memory use.
    fn memory_bytes(&self) -> usize;
    /// Writes a snapshot to `path` if anything changed since the last one.
    fn save(&self, path: &Path) -> Result<bool, IndexError>;
}

/// usearch HNSW index.
pub struct UsearchIndex {
    index: usearch::Index,
    dims: usize,
    tags: RwLock<HashMap<u64, u64>>,
    dirty: AtomicBool,
}

fn native(e: impl std::fmt::Display) -> IndexError {
    IndexError::Native(e.to_string())
}

impl UsearchIndex {
    fn options(dims: usize, q: Quantization) -> usearch::IndexOptions {
        usearch::IndexOptions {
            dimensions: dims,
            metric: usearch::MetricKind::Cos,
            quantization: match q {
                Quantization::F32 => usearch::ScalarKind::F32,
                Quantization::F16 => usearch::ScalarKind::F16,
                Quantization::I8 => usearch::ScalarKind::I8,
            },
            connectivity: 0,
            expansion_add: 0,
            expansion_search: 0,
            multi: false,
        }
    }

    /// An empty index.
    pub fn new(dims: usize, q: Quantization) -> Result<Self, IndexError> {
        let index = usearch::Index::new(&Self::options(dims, q)).map_err(native)?;
        index.reserve(1024).map_err(native)?;
        Ok(UsearchIndex {
            index,
            dims,
            tags: RwLock::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        })
    }

    /// Loads a snapshot, then reconciles it with `rows` (id, tag) from the
    /// store: ids the snapshot lacks are added with the vectors `vectors_of`
    /// reads (it may leave out ids it has no vector for). If the
    /// snapshot is unreadable, of another shape, or holds ids the store no
    /// longer has, the index is rebuilt from the store instead. Returns the
    /// index and whether it was rebuilt.
    ///
    /// `changed` are ids the store changed since the snapshot was taken (a
    /// shared store's change log tail): they are dropped from the snapshot
    /// first, and the ones still stored come back with their stored vector.
    pub fn open(
        path: &Path,
        dims: usize,
        q: Quantization,
        rows: &[(u64, u64)],
        changed: &[u64],
        mut vectors_of: impl FnMut(&[u64]) -> Vec<(u64, Vec<f32>)>,
    ) -> Result<(Self, bool), IndexError> {
        let loaded = if path.exists() {
            let idx = Self::new(dims, q)?;
            match path
                .to_str()
                .ok_or_else(|| native("non-UTF-8 path"))
                .and_then(|p| idx.index.load(p).map_err(native))
            {
                Ok(()) if idx.index.dimensions() == dims => Some(idx),
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "index snapshot unreadable; rebuilding");
                    None
                }
            }
        } else {
            None
        };
        let (idx, rebuilt) = match loaded {
            Some(idx) => {
                for id in changed {
                    if idx.index.contains(*id) {
                        idx.index.remove(*id).map_err(native)?;
                        idx.dirty.store(true, Ordering::Release);
                    }
                }
                let present = rows
                    .iter()
                    .filter(|(id, _)| idx.index.contains(*id))
                    .count();
                if present == idx.index.size() {
                    (idx, false)
                } else {
                    tracing::warn!(path = %path.display(), "index snapshot is stale; rebuilding");
                    (Self::new(dims, q)?, true)
                }
            }
            None => (Self::new(dims, q)?, path.exists() || !rows.is_empty()),
        };
        {
            let mut tags = idx.tags.write().map_err(native)?;
            for (id, tag) in rows {
                tags.insert(*id, *tag);
            }
        }
        let missing: Vec<(u64, u64)> = rows
            .iter()
            .filter(|(id, _)| !idx.index.contains(*id))
            .copied()
            .collect();
        let mut wrong_dims = 0usize;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        if !missing.is_empty() {
            idx.index
                .reserve_capacity_and_threads(
                    (idx.index.size() + missing.len() + 1).max(idx.index.capacity()),
                    threads,
                )
                .map_err(native)?;
        }
        // NOTE: vectors are read a thousand at a time (one round trip each,
        // not one per entry: a remote store pays per round trip), and added
        // by several threads: usearch takes concurrent adds up to the
        // threads reserved, and nothing searches this index yet.
        for chunk in missing.chunks(1000) {
            let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
            let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
            let mut found = vectors_of(&ids);
            found.retain(|(id, v)| {
                // NOTE: vectors from another model (another size) cannot be
                // searched; their entries still serve exact hits.
                let fits = v.len() == dims;
                wrong_dims += usize::from(!fits);
                fits && wanted.contains(id)
            });
            if found.is_empty() {
                continue;
            }
            let per = found.len().div_ceil(threads);
            let index = &idx.index;
            std::thread::scope(|sc| {
                let jobs: Vec<_> = found
                    .chunks(per)
                    .map(|part| {
                        sc.spawn(move || {
                            part.iter()
                                .try_for_each(|(id, v)| index.add(*id, v).map_err(native))
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| {
                        j.join()
                            .unwrap_or_else(|_| Err(native("index add panicked")))
                    })
                    .collect::<Result<Vec<()>, IndexError>>()
            })?;
            idx.dirty.store(true, Ordering::Release);
        }
        if wrong_dims > 0 {
            tracing::warn!(
                count = wrong_dims,
                dims,
                "stored embeddings of another size were not indexed"
            );
        }
        Ok((idx, rebuilt))
    }
}

impl VectorIndex for UsearchIndex {
    fn add(&self, id: u64, tag: u64, vector: &[f32]) -> Result<(), IndexError> {
        if vector.len() != self.dims {
            return Err(IndexError::Dims {
                got: vector.len(),
                want: self.dims,
            });
        }
        let mut tags = self.tags.write().map_err(native)?;
        if self.index.contains(id) {
            self.index.remove(id).map_err(native)?;
        }
        if self.index.size() + 1 >= self.index.capacity() {
            // NOTE: reserve is not safe against concurrent searches; the tags
            // write lock held here keeps them out.
            self.index
                .reserve((self.index.capacity() * 2).max(1024))
                .map_err(native)?;
        }
        self.index.add(id, vector).map_err(native)?;
        tags.insert(id, tag);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn remove(&self, id: u64) -> Result<(), IndexError> {
        let mut tags = self.tags.write().map_err(native)?;
        if tags.remove(&id).is_some() || self.index.contains(id) {
            self.index.remove(id).map_err(native)?;
            self.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn search(
        &self,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        if vector.len() != self.dims {
            return Err(IndexError::Dims {
                got: vector.len(),
                want: self.dims,
            });
        }
        let tags = self.tags.read().map_err(native)?;
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = |key: &u64| match tag {
            Some(t) => tags.get(key) == Some(&t),
            None => tags.contains_key(key),
        };
        let m = self
            .index
            .filtered_search(vector, k, |key| wanted(&key))
            .map_err(native)?;
        Ok(m.keys
            .into_iter()
            .zip(m.distances)
            .filter(|(key, _)| wanted(key))
            .map(|(key, d)| (key, 1.0 - d))
            .collect())
    }

    fn len(&self) -> usize {
        self.index.size()
    }

    fn contains(&self, id: u64) -> bool {
        self.index.contains(id)
    }

    fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }

    fn save(&self, path: &Path) -> Result<bool, IndexError> {
        let _guard = self.tags.write().map_err(native)?;
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let tmp = path.with_extension("usearch.tmp");
        let result = tmp
            .to_str()
            .ok_or_else(|| native("non-UTF-8 path"))
            .and_then(|p| self.index.save(p).map_err(native))
            .and_then(|()| std::fs::rename(&tmp, path).map_err(native));
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result.map(|()| true)
    }
}

/// Exact brute-force index, for tests.
#[derive(Default)]
pub struct BruteIndex {
    rows: RwLock<HashMap<u64, (u64, Vec<f32>)>>,
}

impl VectorIndex for BruteIndex {
    fn add(&self, id: u64, tag: u64, vector: &[f32]) -> Result<(), IndexError> {
        self.rows
            .write()
            .map_err(native)?
            .insert(id, (tag, vector.to_vec()));
        Ok(())
    }

    fn remove(&self, id: u64) -> Result<(), IndexError> {
        self.rows.write().map_err(native)?.remove(&id);
        Ok(())
    }

    fn search(
        &self,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        let rows = self.rows.read().map_err(native)?;
        let mut out: Vec<(u64, f32)> = rows
            .iter()
            .filter(|(_, (t, _))| tag.is_none_or(|tag| *t == tag))
            .map(|(id, (_, v))| (*id, dot(v, vector)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.truncate(k);
        Ok(out)
    }

    fn len(&self) -> usize {
        self.rows.read().map(|r| r.len()).unwrap_or(0)
    }

    fn contains(&self, id: u64) -> bool {
        self.rows
            .read()
            .map(|r| r.contains_key(&id))
            .unwrap_or(false)
    }

    fn memory_bytes(&self) -> usize {
        0
    }

    fn save(&self, _path: &Path) -> Result<bool, IndexError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Embedder, HashEmbedder};

    fn vecs(n: usize) -> Vec<Vec<f32>> {
        let mut e = HashEmbedder::new(32);
        let texts: Vec<String> = (0..n)
            .map(|i| format!("w{} w{} w{}", i, i * 7, i % 5))
            .collect();
        e.embed_batch(&texts).unwrap()
    }

    #[test]
    fn usearch_agrees_with_brute_force_and_filters_by_tag() {
        let u = UsearchIndex::new(32, Quantization::F32).unwrap();
        let b = BruteIndex::default();
        let vs = vecs(3000);
        for (i, v) in vs.iter().enumerate() {
            let tag = (i % 3) as u64;
            u.add(i as u64, tag, v).unwrap();
            b.add(i as u64, tag, v).unwrap();
        }
        for q in [5usize, 77, 1500] {
            let got = u.search(&vs[q], Some(2), 1).unwrap();
            let want = b.search(&vs[q], Some(2), 1).unwrap();
            assert_eq!(got.first().map(|r| r.0), want.first().map(|r| r.0));
            assert!(got.iter().all(|(id, _)| id % 3 == 2));
        }
        let own = u.search(&vs[5], Some(2), 1).unwrap();
        assert_eq!(own[0].0, 5);
        assert!((own[0].1 - 1.0).abs() < 1e-3);
        // Without a tag, every partition is searched.
        assert_eq!(u.search(&vs[4], None, 1).unwrap()[0].0, 4);
        assert_eq!(b.search(&vs[4], None, 1).unwrap()[0].0, 4);
    }

    #[test]
    fn snapshot_round_trip_and_stale_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.usearch");
        let vs = vecs(10);
        let u = UsearchIndex::new(32, Quantization::F16).unwrap();
        for (i, v) in vs.iter().enumerate() {
            u.add(i as u64, 1, v).unwrap();
        }
        assert!(u.save(&path).unwrap());
        assert!(!u.save(&path).unwrap(), "nothing changed");
        let rows: Vec<(u64, u64)> = (0..10).map(|i| (i, 1)).collect();
        let (l, rebuilt) =
            UsearchIndex::open(&path, 32, Quantization::F16, &rows, &[], |_| Vec::new()).unwrap();
        assert!(!rebuilt);
        assert_eq!(l.len(), 10);
        // The store gained a row: it is added from the store.
        let mut more = rows.clone();
        more.push((10, 1));
        let (l, _) = UsearchIndex::open(&path, 32, Quantization::F16, &more, &[], |ids| {
            ids.iter()
                .map(|&id| (id, vs[(id as usize) % 10].clone()))
                .collect()
        })
        .unwrap();
        assert_eq!(l.len(), 11);
        // The store lost a row: the snapshot is stale, rebuilt from the store.
        let fewer: Vec<(u64, u64)> = (0..5).map(|i| (i, 1)).collect();
        let (l, rebuilt) = UsearchIndex::open(&path, 32, Quantization::F16, &fewer, &[], |ids| {
            ids.iter()
                .map(|&id| (id, vs[id as usize].clone()))
                .collect()
        })
        .unwrap();
        assert!(rebuilt);
        assert_eq!(l.len(), 5);
        // A corrupt file is rebuilt too.
        std::fs::write(&path, b"garbage").unwrap();
        let (l, rebuilt) = UsearchIndex::open(&path, 32, Quantization::F16, &fewer, &[], |ids| {
            ids.iter()
                .map(|&id| (id, vs[id as usize].clone()))
                .collect()
        })
        .unwrap();
        assert!(rebuilt);
        assert_eq!(l.len(), 5);
        // Vectors of another size (another model) are skipped, not fatal.
        let (l, _) = UsearchIndex::open(&path, 32, Quantization::F16, &fewer, &[], |ids| {
            ids.iter().map(|&id| (id, vec![1.0; 8])).collect()
        })
        .unwrap();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_snapshot_plus_the_change_tail_is_not_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.usearch");
        let vs = vecs(12);
        let u = UsearchIndex::new(32, Quantization::F32).unwrap();
        for (i, v) in vs.iter().take(10).enumerate() {
            u.add(i as u64, 1, v).unwrap();
        }
        u.save(&path).unwrap();
        // Since the snapshot: 9 was removed, 3 replaced (now vector 11), 10
        // added.
        let rows: Vec<(u64, u64)> = (0..9).chain([10]).map(|i| (i, 1)).collect();
        let mut asked = Vec::new();
        let (l, rebuilt) =
            UsearchIndex::open(&path, 32, Quantization::F32, &rows, &[9, 3, 10], |ids| {
                asked.extend_from_slice(ids);
                ids.iter()
                    .map(|&id| (id, vs[if id == 3 { 11 } else { id as usize }].clone()))
                    .collect()
            })
            .unwrap();
        assert!(!rebuilt, "the tail explains every difference");
        asked.sort();
        assert_eq!(asked, vec![3, 10], "only changed entries are read");
        assert_eq!(l.len(), 10);
        assert!(!l.contains(9));
        assert_eq!(l.search(&vs[11], Some(1), 1).unwrap()[0].0, 3);
        assert_eq!(l.search(&vs[10], Some(1), 1).unwrap()[0].0, 10);
    }

    #[test]
    fn remove_and_replace() {
        let u = UsearchIndex::new(32, Quantization::F32).unwrap();
        let vs = vecs(2);
        u.add(1, 1, &vs[0]).unwrap();
        u.add(1, 1, &vs[1]).unwrap();
        assert_eq!(u.len(), 1);
        u.remove(1).unwrap();
        assert!(u.search(&vs[1], Some(1), 3).unwrap().is_empty());
        assert!(matches!(u.add(2, 1, &[1.0]), Err(IndexError::Dims { .. })));
    }
}
