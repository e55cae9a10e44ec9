//! Milvus as a vector index that replicas share.
//!
//! Owns the HTTP client of Milvus's RESTful API (v1, as Milvus 2.3 and 2.4
//! serve it), the collection's shape, and the write queue: adds and removes
//! wait in a bounded queue and one thread writes them in batches, retrying
//! while Milvus is away. It must never make a request wait on Milvus longer
//! than the search bound, and never be the source of truth: a proposal is
//! judged on the entry and embedding the store keeps.
//!
//! One collection holds every tenant. Its primary key is Milvus's own (the
//! RESTful API creates collections with an automatic id), and each row
//! carries `entry` (our id), `tenant` and `tag` (the partition, in hex) as
//! dynamic fields; tenant and partition are equality filters, never a
//! distance. Vectors are unit length and compared by inner product, so a
//! distance is a cosine.
//!
//! Milvus shows a row to searches a moment after it takes it (0.34 s at the
//! median, 0.65 s at most, measured on 2.3.5), and not at all while it is
//! away. So each replica also keeps the vectors not yet searchable in
//! Milvus (its own waiting writes, and what it wrote or followed in the
//! last [`VISIBLE_WITHIN`]), and a search reads both: a replica's own write,
//! and another's it followed from the change log, are searchable at once.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{IndexError, VectorIndex};

/// Where the shared index lives and how long it may take.
#[derive(Debug, Clone)]
pub struct MilvusSettings {
    /// `http://host:19530`.
    pub url: String,
    /// The collection (created on first use).
    pub collection: String,
    /// The longest a lookup waits for a search; past it, a miss.
    pub search_within: Duration,
    /// Adds and removes that may wait while Milvus is away.
    pub queue: usize,
}

/// One index operation waiting to be written.
#[derive(Debug, Clone)]
enum Op {
    Add {
        tenant: String,
        id: u64,
        tag: u64,
        vector: Vec<f32>,
        /// Which add of `id` this is (its overlay row says the newest).
        seq: u64,
    },
    Remove {
        id: u64,
    },
}

impl Op {
    fn id(&self) -> u64 {
        match self {
            Op::Add { id, .. } | Op::Remove { id } => *id,
        }
    }
}

/// How many operations one write carries.
const BATCH: usize = 256;
/// How long rows this process inserted are remembered by entry, so that
/// replacing or removing them soon after does not depend on Milvus already
/// showing them to a query.
const RECENT_FOR: Duration = Duration::from_secs(30);
/// Milvus's largest query window (offset + limit).
const QUERY_MAX: usize = 16_384;
/// How long a vector written to Milvus is still searched in the overlay:
/// well past the 0.65 s Milvus took at most to show a row on 2.3.5.
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(3);

/// A vector in the overlay: waiting for Milvus, or only just written.
struct Recent {
    tenant: String,
    tag: u64,
    vector: Vec<f32>,
    seq: u64,
    /// Dropped from the overlay after this; `None` while not yet written.
    until: Option<Instant>,
}

/// The client and the write queue of one Milvus collection.
pub struct Milvus {
    settings: MilvusSettings,
    dims: usize,
    search: ureq::Agent,
    write: ureq::Agent,
    queue: Mutex<VecDeque<Op>>,
    queued: Condvar,
    /// Operations taken from the queue and not yet written.
    in_flight: AtomicUsize,
    /// Operations refused because the queue was full.
    dropped: AtomicU64,
    /// The collection exists with our shape and is loaded.
    ready: AtomicBool,
    /// Rows this process inserted lately: entry → (when, Milvus ids).
    recent: Mutex<HashMap<u64, (Instant, Vec<i64>)>>,
    /// Vectors not yet searchable in Milvus (or only just), by entry.
    overlay: std::sync::RwLock<HashMap<u64, Recent>>,
    /// Numbers the adds.
    seq: AtomicU64,
    /// Where the number of waiting writes is shown, once set.
    gauge: std::sync::OnceLock<prometheus::IntGauge>,
}

fn fail(e: impl std::fmt::Display) -> IndexError {
    IndexError::Native(format!("milvus: {e}"))
}

/// A string literal of Milvus's filter expressions.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn tag_literal(tag: u64) -> String {
    format!("\"{tag:016x}\"")
}

fn ids_list(ids: impl Iterator<Item = u64>) -> String {
    let ids: Vec<String> = ids.map(|i| i.to_string()).collect();
    format!("[{}]", ids.join(","))
}

impl Milvus {
    /// A client of the collection `settings` names, for vectors of `dims`.
    /// Creates the collection if Milvus answers and it is missing; refuses
    /// one of another shape. Milvus away at start is not an error: lookups
    /// miss and writes wait until it answers.
    pub fn connect(settings: MilvusSettings, dims: usize) -> Result<Arc<Milvus>, IndexError> {
        let agent = |within: Duration| -> ureq::Agent {
            ureq::Agent::config_builder()
                .timeout_global(Some(within))
                .http_status_as_error(false)
                .build()
                .into()
        };
        let m = Arc::new(Milvus {
            search: agent(settings.search_within),
            write: agent(Duration::from_secs(10)),
            settings,
            dims,
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            in_flight: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            recent: Mutex::new(HashMap::new()),
            overlay: std::sync::RwLock::new(HashMap::new()),
            seq: AtomicU64::new(0),
            gauge: std::sync::OnceLock::new(),
        });
        match m.ensure_collection() {
            Ok(()) => {}
            Err(Shape(e)) => return Err(e),
            Err(Away(e)) => tracing::warn!(
                url = %m.settings.url,
                error = %e,
                "Milvus does not answer; lookups miss and index writes wait until it does"
            ),
        }
        let weak = Arc::downgrade(&m);
        std::thread::Builder::new()
            .name("milvus-write".into())
            .spawn(move || write_loop(weak))
            .map_err(fail)?;
        Ok(m)
    }

    /// The view of one tenant.
    pub fn tenant(self: &Arc<Self>, tenant: &str) -> MilvusIndex {
        MilvusIndex {
            milvus: self.clone(),
            tenant: tenant.to_string(),
        }
    }

    /// Operations waiting to be written (queued or being written).
    pub fn pending(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0) + self.in_flight.load(Ordering::Acquire)
    }

    /// Shows the number of waiting writes on `gauge` from now on.
    pub fn observe(&self, gauge: prometheus::IntGauge) {
        gauge.set(self.pending() as i64);
        let _ = self.gauge.set(gauge);
    }

    fn report(&self) {
        if let Some(g) = self.gauge.get() {
            g.set(self.pending() as i64);
        }
    }

    /// Operations refused so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every queued operation is written, or `within` passes;
    /// the number still waiting.
    pub fn flush(&self, within: Duration) -> usize {
        let until = Instant::now() + within;
        loop {
            let left = self.pending();
            if left == 0 || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/vector/{path}",
            self.settings.url.trim_end_matches('/')
        )
    }

    /// One call; Milvus answers 200 with its own `code` in the body.
    fn call(&self, agent: &ureq::Agent, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = self.url(path);
        let resp = match body {
            Some(b) => agent.post(&url).send_json(&b),
            None => agent.get(&url).call(),
        };
        let mut resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("{path}: HTTP {status}, unreadable body: {e}"))?;
        match v.get("code").and_then(Value::as_i64) {
            Some(200) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
            code => {
                let message = v.get("message").and_then(Value::as_str).unwrap_or("");
                if Self::missing(message) {
                    // NOTE: dropped, or lost with Milvus's data: the write
                    // thread creates it again when idle.
                    self.ready.store(false, Ordering::Release);
                }
                Err(format!(
                    "{path}: code {}: {message}",
                    code.map_or("none".into(), |c| c.to_string()),
                ))
            }
        }
    }

    /// Whether Milvus's message says the collection does not exist.
    fn missing(message: &str) -> bool {
        message.contains("can't find collection") || message.contains("not exist")
    }

    /// Makes sure the collection exists, has our shape and is loaded.
    fn ensure_collection(&self) -> Result<(), Trouble> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let c = &self.settings.collection;
        let describe = format!("collections/describe?collectionName={c}");
        let described = match self.call(&self.write, &describe, None) {
            Ok(d) => d,
            Err(e) if Self::missing(&e) => {
                tracing::info!(collection = %c, dims = self.dims, "creating the Milvus collection");
                self.call(
                    &self.write,
                    "collections/create",
                    Some(json!({
                        "collectionName": c,
                        "dimension": self.dims,
                        "metricType": "IP",
                        "primaryField": "id",
                        "vectorField": "vector",
                        "description": "modelcache entries (entry, tenant, tag are dynamic fields)",
                    })),
                )
                .map_err(Away)?;
                self.call(&self.write, &describe, None).map_err(Away)?
            }
            Err(e) => return Err(Away(e)),
        };
        let fields = described
            .get("fields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let vector = fields
            .iter()
            .find(|f| f.get("name").and_then(Value::as_str) == Some("vector"))
            .and_then(|f| f.get("type").and_then(Value::as_str).map(str::to_string));
        let want = format!("FloatVector({})", self.dims);
        if vector.as_deref() != Some(want.as_str()) {
            return Err(Shape(fail(format!(
                "collection `{c}` holds {}, not {want} (another embedding model's? set [index] collection)",
                vector.as_deref().unwrap_or("no `vector` field")
            ))));
        }
        let dynamic = described
            .get("enableDynamicField")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !dynamic {
            return Err(Shape(fail(format!(
                "collection `{c}` has no dynamic fields (entry, tenant and tag are stored as such)"
            ))));
        }
        // NOTE: a collection just created is still loading; searches fail
        // until it is loaded, so lookups miss meanwhile.
        let loaded = described.get("load").and_then(Value::as_str) == Some("LoadStateLoaded");
        if loaded {
            self.ready.store(true, Ordering::Release);
            Ok(())
        } else {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
                let d = self.call(&self.write, &describe, None).map_err(Away)?;
                if d.get("load").and_then(Value::as_str) == Some("LoadStateLoaded") {
                    self.ready.store(true, Ordering::Release);
                    return Ok(());
                }
            }
            Err(Away(format!("collection `{c}` is not loaded yet")))
        }
    }

    /// The nearest of Milvus's rows and the overlay's, merged. Milvus
    /// failing fails the search unless the overlay found something.
    fn search(
        &self,
        tenant: &str,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        let mut found = self.search_overlay(tenant, vector, tag, k);
        match self.search_milvus(tenant, vector, tag, k) {
            Ok(rows) => {
                for (id, d) in rows {
                    match found.iter_mut().find(|(i, _)| *i == id) {
                        Some(f) => f.1 = f.1.max(d),
                        None => found.push((id, d)),
                    }
                }
            }
            Err(e) if found.is_empty() => return Err(e),
            Err(e) => tracing::debug!(error = %e, "Milvus search failed; the overlay answered"),
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(k);
        Ok(found)
    }

    fn search_overlay(
        &self,
        tenant: &str,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Vec<(u64, f32)> {
        let Ok(overlay) = self.overlay.read() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut out: Vec<(u64, f32)> = overlay
            .iter()
            .filter(|(_, r)| {
                r.tenant == tenant
                    && tag.is_none_or(|t| t == r.tag)
                    && r.until.is_none_or(|u| u > now)
            })
            .map(|(id, r)| (*id, super::dot(&r.vector, vector)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.truncate(k);
        out
    }

    /// Puts a vector in the overlay (`until`: none while it waits to be
    /// written by this process).
    fn remember(
        &self,
        tenant: &str,
        id: u64,
        tag: u64,
        vector: &[f32],
        until: Option<Instant>,
    ) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut overlay) = self.overlay.write() {
            // NOTE: this replica's own writes come back through the change
            // log too; one still waiting for Milvus stays until written.
            if until.is_some() && overlay.get(&id).is_some_and(|r| r.until.is_none()) {
                return seq;
            }
            overlay.insert(
                id,
                Recent {
                    tenant: tenant.to_string(),
                    tag,
                    vector: vector.to_vec(),
                    seq,
                    until,
                },
            );
            // NOTE: followed rows expire on their own; a replica that only
            // follows has no batches of its own to prune after.
            if seq.is_multiple_of(64) {
                let now = Instant::now();
                overlay.retain(|_, r| r.until.is_none_or(|u| u > now));
            }
        }
        seq
    }

    fn forget(&self, id: u64) {
        if let Ok(mut overlay) = self.overlay.write() {
            overlay.remove(&id);
        }
    }

    /// After a batch is written: its adds leave the overlay once Milvus
    /// shows them (a newer add of the same entry stays); expired rows go.
    fn written(&self, ops: &[Op]) {
        let Ok(mut overlay) = self.overlay.write() else {
            return;
        };
        let now = Instant::now();
        for op in ops {
            if let Op::Add { id, seq, .. } = op {
                if let Some(r) = overlay.get_mut(id) {
                    if r.seq == *seq {
                        r.until = Some(now + VISIBLE_WITHIN);
                    }
                }
            }
        }
        overlay.retain(|_, r| r.until.is_none_or(|u| u > now));
    }

    fn search_milvus(
        &self,
        tenant: &str,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(fail("the collection is not ready"));
        }
        let mut filter = format!("tenant == {}", literal(tenant));
        if let Some(t) = tag {
            filter.push_str(&format!(" and tag == {}", tag_literal(t)));
        }
        // NOTE: a few more than asked: a row replaced moments ago may show
        // twice until its old copy's delete is applied.
        let data = self
            .call(
                &self.search,
                "search",
                Some(json!({
                    "collectionName": self.settings.collection,
                    "vector": vector,
                    "filter": filter,
                    "limit": (k + 4).min(QUERY_MAX),
                    "outputFields": ["entry"],
                })),
            )
            .map_err(fail)?;
        let mut out: Vec<(u64, f32)> = Vec::with_capacity(k);
        for row in data.as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (Some(id), Some(d)) = (
                row.get("entry").and_then(Value::as_u64),
                row.get("distance").and_then(Value::as_f64),
            ) else {
                continue;
            };
            if !out.iter().any(|(i, _)| *i == id) {
                out.push((id, d as f32));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.truncate(k);
        Ok(out)
    }

    fn enqueue(&self, op: Op) -> Result<(), IndexError> {
        let mut q = self.queue.lock().map_err(fail)?;
        if q.len() >= self.settings.queue {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(fail(format!(
                "the write queue is full ({} waiting); Milvus is away or too slow",
                q.len()
            )));
        }
        q.push_back(op);
        self.queued.notify_one();
        drop(q);
        self.report();
        Ok(())
    }

    /// The Milvus ids of the rows of `entries` (queried, and those this
    /// process inserted lately).
    fn rows_of(&self, entries: &[u64]) -> Result<Vec<i64>, String> {
        let mut pks: Vec<i64> = Vec::new();
        for chunk in entries.chunks(BATCH) {
            let data = self.call(
                &self.write,
                "query",
                Some(json!({
                    "collectionName": self.settings.collection,
                    "filter": format!("entry in {}", ids_list(chunk.iter().copied())),
                    "outputFields": ["id"],
                    "limit": QUERY_MAX,
                })),
            )?;
            for row in data.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                // NOTE: Milvus writes 64-bit ids as strings in JSON.
                let pk = match row.get("id") {
                    Some(Value::String(s)) => s.parse().ok(),
                    Some(v) => v.as_i64(),
                    None => None,
                };
                pks.extend(pk);
            }
        }
        if let Ok(mut recent) = self.recent.lock() {
            recent.retain(|_, (at, _)| at.elapsed() < RECENT_FOR);
            for e in entries {
                if let Some((_, r)) = recent.get(e) {
                    pks.extend(r);
                }
            }
        }
        pks.sort_unstable();
        pks.dedup();
        Ok(pks)
    }

    /// Writes one batch: every row of its entries goes, then the adds are
    /// inserted. Repeatable: a batch that failed half-way is written again.
    fn write(&self, ops: &[Op]) -> Result<(), String> {
        self.ensure_collection().map_err(|t| match t {
            Away(e) => e,
            Shape(e) => e.to_string(),
        })?;
        // The last operation on an entry wins.
        let mut last: HashMap<u64, &Op> = HashMap::new();
        for op in ops {
            last.insert(op.id(), op);
        }
        let entries: Vec<u64> = last.keys().copied().collect();
        let pks = self.rows_of(&entries)?;
        for chunk in pks.chunks(BATCH * 4) {
            self.call(
                &self.write,
                "delete",
                Some(json!({"collectionName": self.settings.collection, "id": chunk})),
            )?;
        }
        if let Ok(mut recent) = self.recent.lock() {
            for e in &entries {
                recent.remove(e);
            }
        }
        let adds: Vec<(u64, Value)> = last
            .values()
            .filter_map(|op| match op {
                Op::Add {
                    tenant,
                    id,
                    tag,
                    vector,
                    ..
                } => Some((
                    *id,
                    json!({
                        "vector": vector,
                        "entry": id,
                        "tenant": tenant,
                        "tag": format!("{tag:016x}"),
                    }),
                )),
                Op::Remove { .. } => None,
            })
            .collect();
        if adds.is_empty() {
            return Ok(());
        }
        let (ids, rows): (Vec<u64>, Vec<Value>) = adds.into_iter().unzip();
        let data = self.call(
            &self.write,
            "insert",
            Some(json!({"collectionName": self.settings.collection, "data": rows})),
        )?;
        let inserted: Vec<i64> = data
            .get("insertIds")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| match v {
                        Value::String(s) => s.parse().ok(),
                        v => v.as_i64(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if inserted.len() == ids.len() {
            if let Ok(mut recent) = self.recent.lock() {
                let now = Instant::now();
                for (e, pk) in ids.into_iter().zip(inserted) {
                    recent
                        .entry(e)
                        .or_insert_with(|| (now, Vec::new()))
                        .1
                        .push(pk);
                }
            }
        }
        Ok(())
    }

    /// Drops the collection (and every row in it).
    pub fn drop_collection(&self) -> Result<(), IndexError> {
        self.ready.store(false, Ordering::Release);
        self.call(
            &self.write,
            "collections/drop",
            Some(json!({"collectionName": self.settings.collection})),
        )
        .map(|_| ())
        .map_err(fail)
    }

    /// Whether Milvus has a row of `entry` (a query; for tests and tools).
    fn has(&self, entry: u64) -> Result<bool, String> {
        Ok(!self.rows_of(&[entry])?.is_empty())
    }
}

/// Why the collection could not be made ready.
enum Trouble {
    /// Milvus did not answer, or not yet: retried.
    Away(String),
    /// The collection has another shape: a configuration error.
    Shape(IndexError),
}
use Trouble::{Away, Shape};

/// The write thread: takes batches from the queue and writes them, retrying
/// a failed batch with a growing pause (up to 5 s) while the queue keeps
/// what comes meanwhile. Ends when the last handle is dropped and nothing
/// is left to write.
fn write_loop(weak: Weak<Milvus>) {
    let mut pause = Duration::from_millis(100);
    let mut failing = false;
    let mut batch: Vec<Op> = Vec::new();
    loop {
        let Some(m) = weak.upgrade() else { return };
        if batch.is_empty() {
            let Ok(mut q) = m.queue.lock() else { return };
            if q.is_empty() {
                let Ok((g, _)) = m.queued.wait_timeout(q, Duration::from_millis(250)) else {
                    return;
                };
                q = g;
            }
            let n = q.len().min(BATCH);
            batch.extend(q.drain(..n));
            m.in_flight.store(batch.len(), Ordering::Release);
        }
        if batch.is_empty() {
            // NOTE: Milvus was away when this replica started: searches
            // miss until the collection is found ready, writes or not.
            if !m.ready.load(Ordering::Acquire) && m.ensure_collection().is_err() {
                drop(m);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            continue;
        }
        match m.write(&batch) {
            Ok(()) => {
                m.written(&batch);
                if failing {
                    tracing::info!("Milvus answers again; queued index writes resume");
                    failing = false;
                }
                batch.clear();
                m.in_flight.store(0, Ordering::Release);
                m.report();
                pause = Duration::from_millis(100);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, waiting = m.pending(), "writing to Milvus failed; retrying");
                    failing = true;
                }
                drop(m);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One tenant's view of the shared collection.
pub struct MilvusIndex {
    milvus: Arc<Milvus>,
    tenant: String,
}

impl MilvusIndex {
    /// The shared client.
    pub fn milvus(&self) -> &Arc<Milvus> {
        &self.milvus
    }
}

impl VectorIndex for MilvusIndex {
    fn add(&self, id: u64, tag: u64, vector: &[f32]) -> Result<(), IndexError> {
        super::fits(vector.len(), self.milvus.dims)?;
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(fail("a vector with a non-finite value is not indexed"));
        }
        let seq = self.milvus.remember(&self.tenant, id, tag, vector, None);
        let queued = self.milvus.enqueue(Op::Add {
            tenant: self.tenant.clone(),
            id,
            tag,
            vector: vector.to_vec(),
            seq,
        });
        if queued.is_err() {
            // NOTE: not kept either: the overlay is bounded by the queue.
            self.milvus.forget(id);
        }
        queued
    }

    fn remove(&self, id: u64) -> Result<(), IndexError> {
        self.milvus.forget(id);
        self.milvus.enqueue(Op::Remove { id })
    }

    /// Another replica wrote it to Milvus: searchable here at once through
    /// the overlay, for as long as Milvus may take to show it.
    fn followed_add(&self, id: u64, tag: u64, vector: &[f32]) -> Result<(), IndexError> {
        super::fits(vector.len(), self.milvus.dims)?;
        self.milvus.remember(
            &self.tenant,
            id,
            tag,
            vector,
            Some(Instant::now() + VISIBLE_WITHIN),
        );
        Ok(())
    }

    /// Another replica removed it from Milvus: gone from the overlay too.
    fn followed_remove(&self, id: u64) -> Result<(), IndexError> {
        self.milvus.forget(id);
        Ok(())
    }

    fn search(
        &self,
        vector: &[f32],
        tag: Option<u64>,
        k: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        super::fits(vector.len(), self.milvus.dims)?;
        self.milvus.search(&self.tenant, vector, tag, k)
    }

    /// Not known here: the rows are Milvus's (0).
    fn len(&self) -> usize {
        0
    }

    fn contains(&self, id: u64) -> bool {
        self.milvus.has(id).unwrap_or(false)
    }

    /// Nothing is held in this process.
    fn memory_bytes(&self) -> usize {
        0
    }

    /// Nothing to save: Milvus keeps the rows.
    fn save(&self, _path: &Path) -> Result<bool, IndexError> {
        Ok(false)
    }

    fn shared(&self) -> bool {
        true
    }

    fn flush(&self, within: Duration) -> usize {
        self.milvus.flush(within)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::index::suite;

    /// The test server (`scripts/milvus-up.sh` prints it; `make test` and
    /// `.ci/run` set it).
    pub(crate) fn url() -> String {
        std::env::var("MODELCACHE_TEST_MILVUS_URL").expect(
            "MODELCACHE_TEST_MILVUS_URL is not set: run `make test`, which starts Milvus with scripts/milvus-up.sh",
        )
    }

    /// A fresh collection of `dims`, dropped with the fixture.
    pub(crate) struct Fresh(pub(crate) Arc<Milvus>);

    impl Fresh {
        pub(crate) fn new(dims: usize) -> Fresh {
            let settings = MilvusSettings {
                url: url(),
                collection: format!("mctest_{:016x}", rand::random::<u64>()),
                search_within: Duration::from_secs(5),
                queue: 10_000,
            };
            let m = Milvus::connect(settings, dims).unwrap();
            assert!(
                m.ready.load(Ordering::Acquire),
                "the test collection is not ready"
            );
            Fresh(m)
        }
    }

    impl Drop for Fresh {
        fn drop(&mut self) {
            let _ = self.0.drop_collection();
        }
    }

    /// Two replicas on one collection: writes through one, searches
    /// through the other, so that what is searched is Milvus, not the
    /// writer's overlay.
    struct Replicas {
        fresh: Fresh,
        reader: Arc<Milvus>,
    }

    struct Split {
        writer: MilvusIndex,
        reader: MilvusIndex,
    }

    impl VectorIndex for Split {
        fn add(&self, id: u64, tag: u64, vector: &[f32]) -> Result<(), IndexError> {
            self.writer.add(id, tag, vector)
        }
        fn remove(&self, id: u64) -> Result<(), IndexError> {
            self.writer.remove(id)
        }
        fn search(
            &self,
            vector: &[f32],
            tag: Option<u64>,
            k: usize,
        ) -> Result<Vec<(u64, f32)>, IndexError> {
            self.reader.search(vector, tag, k)
        }
        fn len(&self) -> usize {
            0
        }
        fn contains(&self, id: u64) -> bool {
            self.reader.contains(id)
        }
        fn memory_bytes(&self) -> usize {
            0
        }
        fn save(&self, _: &Path) -> Result<bool, IndexError> {
            Ok(false)
        }
        fn shared(&self) -> bool {
            true
        }
        fn flush(&self, within: Duration) -> usize {
            self.writer.flush(within)
        }
    }

    impl suite::Fixture for Replicas {
        fn open(&self, tenant: &str) -> Arc<dyn VectorIndex> {
            Arc::new(Split {
                writer: self.fresh.0.tenant(tenant),
                reader: self.reader.tenant(tenant),
            })
        }
    }

    suite::index_suite!(|| {
        let fresh = Fresh::new(suite::DIMS);
        let reader = Milvus::connect(fresh.0.settings.clone(), suite::DIMS).unwrap();
        Replicas { fresh, reader }
    });

    #[test]
    fn own_and_followed_writes_are_searchable_at_once_even_with_milvus_away() {
        let settings = MilvusSettings {
            url: "http://127.0.0.1:9".into(),
            collection: "nowhere".into(),
            search_within: Duration::from_millis(200),
            queue: 100,
        };
        let m = Milvus::connect(settings, 4).unwrap();
        let (a, b) = (m.tenant("a"), m.tenant("b"));
        a.add(1, 7, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        a.followed_add(2, 7, &[0.0, 1.0, 0.0, 0.0]).unwrap();
        a.followed_add(3, 8, &[0.6, 0.8, 0.0, 0.0]).unwrap();
        let got = a.search(&[1.0, 0.0, 0.0, 0.0], Some(7), 5).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        assert!((got[0].1 - 1.0).abs() < 1e-6);
        // Filtered by tenant and partition here as in Milvus.
        assert!(b.search(&[1.0, 0.0, 0.0, 0.0], None, 5).is_err());
        assert_eq!(a.search(&[0.6, 0.8, 0.0, 0.0], Some(8), 5).unwrap()[0].0, 3);
        // This replica's own write, still waiting for Milvus, is not cut
        // short when the change log brings it back.
        a.followed_add(1, 7, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(m.overlay.read().unwrap()[&1].until, None);
        a.remove(1).unwrap();
        a.followed_remove(2).unwrap();
        assert!(a.search(&[1.0, 0.0, 0.0, 0.0], Some(7), 5).is_err());
    }

    #[test]
    fn a_collection_of_another_size_is_refused() {
        let fresh = Fresh::new(8);
        let settings = MilvusSettings {
            collection: fresh.0.settings.collection.clone(),
            ..fresh.0.settings.clone()
        };
        let err = Milvus::connect(settings, 16).err().expect("refused");
        assert!(err.to_string().contains("FloatVector(8)"), "{err}");
    }

    #[test]
    fn a_collection_dropped_under_a_running_replica_is_made_again() {
        let fresh = Fresh::new(4);
        let other = Milvus::connect(fresh.0.settings.clone(), 4).unwrap();
        let idx = fresh.0.tenant("t");
        idx.add(1, 1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(fresh.0.flush(Duration::from_secs(10)), 0);
        other.drop_collection().unwrap();
        // The next write finds it gone, makes it again and lands.
        idx.add(2, 1, &[0.0, 1.0, 0.0, 0.0]).unwrap();
        assert_eq!(fresh.0.flush(Duration::from_secs(60)), 0);
        let reader = Milvus::connect(fresh.0.settings.clone(), 4).unwrap();
        let t0 = Instant::now();
        loop {
            let got = reader.tenant("t").search(&[0.0, 1.0, 0.0, 0.0], None, 5);
            if got.as_ref().is_ok_and(|g| g.iter().any(|(id, _)| *id == 2)) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn milvus_away_is_a_failed_search_and_queued_writes() {
        let settings = MilvusSettings {
            url: "http://127.0.0.1:9".into(),
            collection: "nowhere".into(),
            search_within: Duration::from_millis(200),
            queue: 2,
        };
        let m = Milvus::connect(settings, 4).unwrap();
        let idx = m.tenant("t");
        assert!(idx.search(&[1.0, 0.0, 0.0, 0.0], None, 1).is_err());
        idx.add(1, 1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        idx.remove(2).unwrap();
        // The queue holds two; a third waits nowhere and says so.
        let mut refused = false;
        for i in 3..6 {
            refused |= idx.add(i, 1, &[0.0, 1.0, 0.0, 0.0]).is_err();
        }
        assert!(refused);
        assert!(m.dropped() >= 1);
        assert!(m.pending() >= 2);
        assert!(idx.add(9, 1, &[f32::NAN, 0.0, 0.0, 0.0]).is_err());
    }

    #[test]
    fn filter_literals_cannot_be_escaped_from() {
        assert_eq!(literal("a"), "\"a\"");
        assert_eq!(
            literal("a\" or tenant != \""),
            "\"a\\\" or tenant != \\\"\""
        );
        assert_eq!(literal("b\\"), "\"b\\\\\"");
        assert_eq!(tag_literal(255), "\"00000000000000ff\"");
        assert_eq!(ids_list([1u64, 22].into_iter()), "[1,22]");
    }
}
