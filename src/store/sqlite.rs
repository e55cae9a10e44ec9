//! SQLite store: WAL mode, one writer connection, a few reader connections.
//!
//! Owns the schema and every SQL statement. It must never be called from a
//! runtime thread; writes come from the write-back thread only.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{
    blob_to_vec, vec_to_blob, ChangeLog, Entry, HitLog, HitRecord, Limits, Negatives, NewEntry,
    Removed, Store, StoreError,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL,
    partition   TEXT NOT NULL,
    tag         INTEGER NOT NULL,
    exact_hash  TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    model       TEXT NOT NULL,
    text        TEXT NOT NULL,
    params      TEXT NOT NULL,
    answer      TEXT NOT NULL,
    embedding   BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    hits        INTEGER NOT NULL DEFAULT 0,
    last_hit_at INTEGER,
    origin      TEXT NOT NULL DEFAULT 'proxy'
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_exact ON entries(tenant, exact_hash);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries(expires_at);
DROP INDEX IF EXISTS entries_lru;
CREATE INDEX IF NOT EXISTS entries_tenant_lru ON entries(tenant, coalesce(last_hit_at, created_at));
CREATE TABLE IF NOT EXISTS hit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    entry_id   INTEGER NOT NULL,
    probe      TEXT NOT NULL,
    similarity REAL NOT NULL,
    at         INTEGER NOT NULL,
    request_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS hit_log_tenant ON hit_log(tenant, id);
CREATE TABLE IF NOT EXISTS entry_negatives (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id   INTEGER NOT NULL,
    tenant     TEXT NOT NULL,
    probe      TEXT NOT NULL,
    embedding  BLOB NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entry_negatives_entry ON entry_negatives(entry_id);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registered_models (
    tenant     TEXT NOT NULL,
    model      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, model)
);
CREATE TABLE IF NOT EXISTS verified_keys (
    tenant      TEXT NOT NULL,
    key_hash    BLOB NOT NULL,
    verified_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key_hash)
);
";

/// Rows of the hit log kept; older ones are trimmed by the sweep.
const HIT_LOG_KEEP: i64 = 100_000;

const COLUMNS: &str = "id, tenant, partition, exact_hash, endpoint, model, text, params, answer, created_at, expires_at, hits, last_hit_at, origin";

/// Columns added after the first release, with their tables and definitions;
/// added to an older database when it is opened.
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    ("entries", "origin", "TEXT NOT NULL DEFAULT 'proxy'"),
    ("hit_log", "request_id", "TEXT NOT NULL DEFAULT ''"),
];

/// The embedded store, in `DATA_DIR/modelcache.db`.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    /// `meta.store_id`, made when the database was created.
    id: String,
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        tenant: r.get(1)?,
        partition: r.get(2)?,
        exact_hash: r.get(3)?,
        endpoint: r.get(4)?,
        model: r.get(5)?,
        text: r.get(6)?,
        params: r.get(7)?,
        answer: r.get(8)?,
        created_at: r.get(9)?,
        expires_at: r.get(10)?,
        hits: r.get(11)?,
        last_hit_at: r.get(12)?,
        origin: super::Origin::parse(&r.get::<_, String>(13)?),
    })
}

fn row_to_hit(r: &rusqlite::Row<'_>) -> rusqlite::Result<super::HitLogRow> {
    Ok(super::HitLogRow {
        id: r.get(0)?,
        at: r.get(1)?,
        tenant: r.get(2)?,
        entry_id: r.get(3)?,
        probe: r.get(4)?,
        matched: r.get(5)?,
        model: r.get(6)?,
        similarity: r.get::<_, f64>(7)? as f32,
        request_id: r.get(8)?,
    })
}

fn row_to_removed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Removed> {
    Ok(Removed {
        tenant: r.get(0)?,
        id: r.get(1)?,
        exact_hash: r.get(2)?,
    })
}

/// Adds the columns an older database lacks.
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    for (table, name, def) in ADDED_COLUMNS {
        let have: Vec<String> = c
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if !have.iter().any(|h| h == name) {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {def}"))?;
        }
    }
    c.execute_batch(
        "CREATE INDEX IF NOT EXISTS hit_log_request ON hit_log(request_id) WHERE request_id <> ''",
    )
}

fn collect_removed(
    st: &mut rusqlite::Statement<'_>,
    p: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Removed>> {
    st.query_map(p, row_to_removed)?.collect()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with `readers` reader connections.
    pub fn open(path: &Path, readers: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        migrate(&writer)?;
        // NOTE: made once; a database copied elsewhere keeps its id, and
        // with it the index snapshots built from it.
        writer.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
            [super::new_store_id()],
        )?;
        let id: String =
            writer.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })?;
        let mut rs = Vec::new();
        for _ in 0..readers.max(1) {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            rs.push(Mutex::new(c));
        }
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers: rs,
            next: AtomicUsize::new(0),
            id,
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let c = self.readers[i].lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&c)?)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut c = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut c)?)
    }
}

impl Store for SqliteStore {
    fn change_log(&self) -> Option<&dyn ChangeLog> {
        None
    }

    fn insert_batch(&self, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            let mut ids = Vec::with_capacity(entries.len());
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO entries (tenant, partition, tag, exact_hash, endpoint, model, text, params, answer, embedding, created_at, expires_at, origin)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT(tenant, exact_hash) DO UPDATE SET
                        answer = excluded.answer, params = excluded.params, embedding = excluded.embedding,
                        created_at = excluded.created_at, expires_at = excluded.expires_at,
                        origin = excluded.origin
                     RETURNING id",
                )?;
                for e in entries {
                    let tag = crate::keying::partition_tag(&e.partition) as i64;
                    let id: i64 = st.query_row(
                        params![
                            e.tenant,
                            e.partition,
                            tag,
                            e.exact_hash,
                            e.endpoint,
                            e.model,
                            e.text,
                            e.params,
                            e.answer,
                            e.embedding.as_deref().map(vec_to_blob),
                            e.created_at,
                            e.expires_at,
                            e.origin.as_str()
                        ],
                        |r| r.get(0),
                    )?;
                    ids.push(id);
                }
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    fn get(&self, id: i64) -> Result<Option<Entry>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM entries WHERE id = ?1"))?
                .query_row([id], row_to_entry)
                .optional()
        })
    }

    fn get_exact(&self, tenant: &str, exact_hash: &str) -> Result<Option<Entry>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM entries WHERE tenant = ?1 AND exact_hash = ?2"
            ))?
            .query_row([tenant, exact_hash], row_to_entry)
            .optional()
        })
    }

    fn index_rows(&self, tenant: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, tag FROM entries WHERE tenant = ?1 AND embedding IS NOT NULL",
            )?;
            let rows = st.query_map([tenant], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })
    }

    fn embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT embedding FROM entries WHERE id = ?1")?
                .query_row([id], |r| r.get::<_, Option<Vec<u8>>>(0))
                .optional()
                .map(|o| o.flatten().map(|b| blob_to_vec(&b)))
        })
    }

    fn get_with_embedding(&self, id: i64) -> Result<Option<super::WithEmbedding>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS}, embedding FROM entries WHERE id = ?1"
            ))?
            .query_row([id], |r| {
                let v: Option<Vec<u8>> = r.get(14)?;
                Ok((row_to_entry(r)?, v.map(|b| blob_to_vec(&b))))
            })
            .optional()
        })
    }

    fn store_id(&self) -> Result<String, StoreError> {
        Ok(self.id.clone())
    }

    fn sweep(&self, now_ms: i64, limits: &Limits) -> Result<Vec<Removed>, StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            let mut removed = Vec::new();
            {
                let mut st = tx.prepare_cached(
                    "DELETE FROM entries WHERE expires_at <= ?1 RETURNING tenant, id, exact_hash",
                )?;
                let rows = st.query_map([now_ms], row_to_removed)?;
                for r in rows {
                    removed.push(r?);
                }
                let counts: Vec<(String, i64)> = {
                    let mut st =
                        tx.prepare_cached("SELECT tenant, count(*) FROM entries GROUP BY tenant")?;
                    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<Result<_, _>>()?
                };
                for (tenant, count) in counts {
                    let over = count - limits.of(&tenant).min(i64::MAX as u64) as i64;
                    if over <= 0 {
                        continue;
                    }
                    let mut st = tx.prepare_cached(
                        "DELETE FROM entries WHERE id IN (
                            SELECT id FROM entries WHERE tenant = ?1
                            ORDER BY coalesce(last_hit_at, created_at), id LIMIT ?2)
                         RETURNING tenant, id, exact_hash",
                    )?;
                    let rows = st.query_map(params![tenant, over], row_to_removed)?;
                    for r in rows {
                        removed.push(r?);
                    }
                }
                tx.execute(
                    "DELETE FROM hit_log WHERE id <= (SELECT max(id) FROM hit_log) - ?1",
                    [HIT_LOG_KEEP],
                )?;
                tx.execute(
                    "DELETE FROM entry_negatives WHERE entry_id NOT IN (SELECT id FROM entries)",
                    [],
                )?;
            }
            tx.commit()?;
            Ok(removed)
        })
    }

    fn delete(&self, tenant: &str, ids: &[i64]) -> Result<Vec<Removed>, StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            let mut removed = Vec::new();
            {
                let mut st = tx.prepare_cached(
                    "DELETE FROM entries WHERE id = ?1 AND tenant = ?2 RETURNING tenant, id, exact_hash",
                )?;
                for id in ids {
                    removed.extend(collect_removed(&mut st, params![id, tenant])?);
                }
            }
            tx.commit()?;
            Ok(removed)
        })
    }

    fn truncate(&self, tenant: &str, model: Option<&str>) -> Result<Vec<Removed>, StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            let removed = {
                let mut st = tx.prepare_cached(
                    "DELETE FROM entries WHERE tenant = ?1 AND (?2 IS NULL OR model = ?2)
                     RETURNING tenant, id, exact_hash",
                )?;
                collect_removed(&mut st, params![tenant, model])?
            };
            tx.commit()?;
            Ok(removed)
        })
    }

    fn list(&self, q: &super::ListQuery) -> Result<Vec<Entry>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM entries
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR model = ?2)
                   AND (?3 IS NULL OR instr(lower(text), lower(?3)) > 0)
                   AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5"
            ))?;
            let rows = st.query_map(
                params![q.tenant, q.model, q.text, q.before_id, q.limit as i64],
                row_to_entry,
            )?;
            rows.collect()
        })
    }

    fn register_model(&self, tenant: &str, model: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO registered_models (tenant, model, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant, model) DO NOTHING",
                params![tenant, model, now_ms],
            )
            .map(|n| n == 1)
        })
    }

    fn record_verified_key(
        &self,
        tenant: &str,
        key_hash: &[u8; 32],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO verified_keys (tenant, key_hash, verified_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant, key_hash) DO UPDATE
                 SET verified_at = max(verified_at, excluded.verified_at)",
                params![tenant, &key_hash[..], at_ms],
            )
            .map(|_| ())
        })
    }

    fn verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT verified_at FROM verified_keys WHERE tenant = ?1 AND key_hash = ?2",
                params![tenant, &key_hash[..]],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn revoke_verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "DELETE FROM verified_keys WHERE tenant = ?1 AND key_hash = ?2",
                params![tenant, &key_hash[..]],
            )
            .map(|_| ())
        })
    }

    fn stats(&self) -> Result<Vec<super::TenantStats>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT tenant, count(*), coalesce(sum(hits), 0) FROM entries GROUP BY tenant ORDER BY tenant",
            )?;
            let rows = st.query_map([], |r| {
                Ok(super::TenantStats {
                    tenant: r.get(0)?,
                    entries: r.get::<_, i64>(1)? as u64,
                    hits: r.get::<_, i64>(2)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    fn counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT tenant, count(*) FROM entries GROUP BY tenant ORDER BY tenant")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }
}

impl HitLog for SqliteStore {
    fn record_hits(&self, hits: &[HitRecord]) -> Result<(), StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            {
                let mut bump = tx.prepare_cached(
                    "UPDATE entries SET hits = hits + ?4, last_hit_at = max(coalesce(last_hit_at, 0), ?2)
                     WHERE id = ?1 AND tenant = ?3",
                )?;
                let mut log = tx.prepare_cached(
                    "INSERT INTO hit_log (tenant, entry_id, probe, similarity, at, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for t in super::hit_totals(hits) {
                    bump.execute(params![t.entry_id, t.last_at, t.tenant, t.count])?;
                }
                for h in hits {
                    log.execute(params![
                        h.tenant,
                        h.entry_id,
                        h.probe,
                        h.similarity as f64,
                        h.at,
                        h.request_id
                    ])?;
                }
            }
            tx.commit()
        })
    }

    fn hit_log(
        &self,
        tenant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::HitLogRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT h.id, h.at, h.tenant, h.entry_id, h.probe, e.text, e.model, h.similarity, h.request_id
                 FROM hit_log h LEFT JOIN entries e ON e.id = h.entry_id AND e.tenant = h.tenant
                 WHERE (?1 IS NULL OR h.tenant = ?1)
                 ORDER BY h.id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![tenant, limit as i64], row_to_hit)?;
            rows.collect()
        })
    }

    fn hit_by_request(&self, request_id: &str) -> Result<Option<super::HitLogRow>, StoreError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        self.read(|c| {
            c.prepare_cached(
                "SELECT h.id, h.at, h.tenant, h.entry_id, h.probe, e.text, e.model, h.similarity, h.request_id
                 FROM hit_log h LEFT JOIN entries e ON e.id = h.entry_id AND e.tenant = h.tenant
                 WHERE h.request_id = ?1 AND h.request_id <> '' ORDER BY h.id DESC LIMIT 1",
            )?
            .query_row([request_id], row_to_hit)
            .optional()
        })
    }
}

impl Negatives for SqliteStore {
    fn add_negative(&self, n: &super::Negative) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO entry_negatives (entry_id, tenant, probe, embedding, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![n.entry_id, n.tenant, n.probe, vec_to_blob(&n.embedding), n.at],
            )
            .map(|_| ())
        })
    }

    fn negatives(&self) -> Result<Vec<super::Negative>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT n.entry_id, n.tenant, n.probe, n.embedding, n.at FROM entry_negatives n
                 JOIN entries e ON e.id = n.entry_id AND e.tenant = n.tenant ORDER BY n.id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(super::Negative {
                    entry_id: r.get(0)?,
                    tenant: r.get(1)?,
                    probe: r.get(2)?,
                    embedding: blob_to_vec(&r.get::<_, Vec<u8>>(3)?),
                    at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store::store_suite!(|| {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db"), 2).unwrap();
        (s, dir)
    });

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        let id = {
            let s = SqliteStore::open(&p, 1).unwrap();
            s.insert_batch(&[crate::store::suite::entry("a", "h", 1, 1000)])
                .unwrap()[0]
        };
        let s = SqliteStore::open(&p, 1).unwrap();
        assert_eq!(s.get(id).unwrap().unwrap().exact_hash, "h");
        let kept = s.store_id().unwrap();
        drop(s);
        assert_eq!(SqliteStore::open(&p, 1).unwrap().store_id().unwrap(), kept);
        let other = SqliteStore::open(&dir.path().join("other.db"), 1).unwrap();
        assert_ne!(other.store_id().unwrap(), kept, "each store has its own id");
    }

    #[test]
    fn adds_the_origin_column_to_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        {
            let c = Connection::open(&p).unwrap();
            let old = SCHEMA
                .replace(",\n    origin      TEXT NOT NULL DEFAULT 'proxy'", "")
                .replace(",\n    request_id TEXT NOT NULL DEFAULT ''", "");
            assert!(!old.contains("origin") && !old.contains("request_id"));
            c.execute_batch(&old).unwrap();
            c.execute(
                "INSERT INTO entries (tenant, partition, tag, exact_hash, endpoint, model, text, params, answer, created_at, expires_at)
                 VALUES ('a', 'p', 0, 'h', 'chat', 'm', 'user###x', '{}', '{}', 1, 2)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&p, 1).unwrap();
        let e = s.get_exact("a", "h").unwrap().unwrap();
        assert_eq!(e.origin, super::super::Origin::Proxy);
        let mut api = crate::store::suite::entry("a", "h2", 1, 1000);
        api.origin = super::super::Origin::Api;
        let id = s.insert_batch(&[api]).unwrap()[0];
        assert_eq!(
            s.get(id).unwrap().unwrap().origin,
            super::super::Origin::Api
        );
    }
}
