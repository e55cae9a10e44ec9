//! Faults and leak checks: a store whose writes can be held or made to fail,
//! and a scan of a data folder for a secret.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Mutex},
};

use modelcache::store::{ChangeLog, HitLog, Negatives};

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Fails if any file below `dir` contains `needle`.
pub fn assert_no_file_contains(dir: &Path, needle: &str) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "nothing under {}", dir.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} contains a secret",
            f.display()
        );
    }
}

/// A store over the in-memory one whose writes can be held at a gate (to
/// fill the write-back queue) or made to fail (a broken disk).
#[derive(Default)]
pub struct FaultyStore {
    inner: modelcache::store::memory::MemoryStore,
    held: Mutex<bool>,
    cv: std::sync::Condvar,
    fail: std::sync::atomic::AtomicBool,
    /// The size of every batch of hits the gateway wrote.
    pub hit_batches: Mutex<Vec<usize>>,
    /// Refuses (as a store that is up but cannot hold the data) any batch
    /// with an entry whose text contains "POISON".
    pub reject_poison: std::sync::atomic::AtomicBool,
}

type StoreResult<T> = Result<T, modelcache::store::StoreError>;

impl FaultyStore {
    /// A store whose inserts wait until [`FaultyStore::release`].
    pub fn held() -> FaultyStore {
        let s = FaultyStore::default();
        *s.held.lock().unwrap() = true;
        s
    }

    /// Lets held inserts through.
    pub fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.cv.notify_all();
    }

    /// Makes every write fail (or succeed again).
    pub fn fail_writes(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn write(&self) -> StoreResult<()> {
        let mut g = self.held.lock().unwrap();
        while *g {
            g = self.cv.wait(g).unwrap();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(modelcache::store::StoreError::Io(std::io::Error::other(
                "disk I/O error (test)",
            )));
        }
        Ok(())
    }
}

impl modelcache::store::Store for FaultyStore {
    fn change_log(&self) -> Option<&dyn ChangeLog> {
        self.inner.change_log()
    }

    fn record_verified_key(&self, t: &str, k: &[u8; 32], at: i64) -> StoreResult<()> {
        self.write()?;
        self.inner.record_verified_key(t, k, at)
    }
    fn verified_key(&self, t: &str, k: &[u8; 32]) -> StoreResult<Option<i64>> {
        self.inner.verified_key(t, k)
    }
    fn revoke_verified_key(&self, t: &str, k: &[u8; 32]) -> StoreResult<()> {
        self.write()?;
        self.inner.revoke_verified_key(t, k)
    }
    fn insert_batch(&self, e: &[modelcache::store::NewEntry]) -> StoreResult<Vec<i64>> {
        self.write()?;
        if self.reject_poison.load(Ordering::SeqCst) && e.iter().any(|e| e.text.contains("POISON"))
        {
            return Err(modelcache::store::StoreError::Rejected(
                "value out of range (test)".into(),
            ));
        }
        self.inner.insert_batch(e)
    }
    fn get(&self, id: i64) -> StoreResult<Option<modelcache::store::Entry>> {
        self.inner.get(id)
    }
    fn get_exact(&self, t: &str, h: &str) -> StoreResult<Option<modelcache::store::Entry>> {
        self.inner.get_exact(t, h)
    }
    fn index_rows(&self, t: &str) -> StoreResult<Vec<(u64, u64)>> {
        self.inner.index_rows(t)
    }
    fn embedding(&self, id: i64) -> StoreResult<Option<Vec<f32>>> {
        self.inner.embedding(id)
    }
    fn store_id(&self) -> StoreResult<String> {
        self.inner.store_id()
    }
    fn sweep(
        &self,
        now: i64,
        limits: &modelcache::store::Limits,
    ) -> StoreResult<Vec<modelcache::store::Removed>> {
        self.inner.sweep(now, limits)
    }
    fn delete(&self, t: &str, ids: &[i64]) -> StoreResult<Vec<modelcache::store::Removed>> {
        self.write()?;
        self.inner.delete(t, ids)
    }
    fn truncate(
        &self,
        t: &str,
        model: Option<&str>,
    ) -> StoreResult<Vec<modelcache::store::Removed>> {
        self.write()?;
        self.inner.truncate(t, model)
    }
    fn list(&self, q: &modelcache::store::ListQuery) -> StoreResult<Vec<modelcache::store::Entry>> {
        self.inner.list(q)
    }
    fn register_model(&self, t: &str, m: &str, now: i64) -> StoreResult<bool> {
        self.write()?;
        self.inner.register_model(t, m, now)
    }
    fn stats(&self) -> StoreResult<Vec<modelcache::store::TenantStats>> {
        self.inner.stats()
    }
    fn counts(&self) -> StoreResult<Vec<(String, u64)>> {
        self.inner.counts()
    }
}

impl HitLog for FaultyStore {
    fn record_hits(&self, h: &[modelcache::store::HitRecord]) -> StoreResult<()> {
        self.write()?;
        self.hit_batches.lock().unwrap().push(h.len());
        self.inner.record_hits(h)
    }

    fn hit_log(
        &self,
        t: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<modelcache::store::HitLogRow>> {
        self.inner.hit_log(t, limit)
    }

    fn hit_by_request(&self, r: &str) -> StoreResult<Option<modelcache::store::HitLogRow>> {
        self.inner.hit_by_request(r)
    }
}

impl Negatives for FaultyStore {
    fn add_negative(&self, n: &modelcache::store::Negative) -> StoreResult<()> {
        self.write()?;
        self.inner.add_negative(n)
    }

    fn negatives(&self) -> StoreResult<Vec<modelcache::store::Negative>> {
        self.inner.negatives()
    }
}
