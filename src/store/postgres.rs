//! PostgreSQL store: the shared store of several gateway replicas.
//!
//! Owns the PostgreSQL schema, its versioned migrations (applied once, at
//! open), and every statement: entries, answers, embeddings (`bytea`), hit
//! counts, the hit log, negatives, verified keys, `store_meta` (the store's
//! id), and an append-only change log of inserts and removals with a
//! monotonically increasing id. It provides the replication capability, the
//! [`ChangeLog`] its `change_log()` returns (`changes_since()`,
//! `wait_for_change()` by LISTEN/NOTIFY, or by polling where no LISTEN can
//! be held); replicas apply that log in
//! `cache`, not here. It must never decide what a hit is, and never be
//! called on a runtime thread: it blocks (call it from the write-back
//! thread, the follow thread, or under `spawn_blocking`).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Mutex,
};

use postgres::{fallible_iterator::FallibleIterator, Client, NoTls, Row};

use super::{
    blob_to_vec, vec_to_blob, Change, ChangeKind, ChangeLog, Entry, HitLog, HitLogRow, HitRecord,
    Limits, ListQuery, Negative, Negatives, NewEntry, Origin, Removed, Store, StoreError,
    TenantStats,
};

/// Schema versions, applied in order, each once (recorded in
/// `schema_migrations`).
const MIGRATIONS: [&str; 5] = [
    "
CREATE TABLE entries (
    id          BIGSERIAL PRIMARY KEY,
    tenant      TEXT NOT NULL,
    partition   TEXT NOT NULL,
    tag         BIGINT NOT NULL,
    exact_hash  TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    model       TEXT NOT NULL,
    text        TEXT NOT NULL,
    params      TEXT NOT NULL,
    answer      TEXT NOT NULL,
    embedding   BYTEA,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    hits        BIGINT NOT NULL DEFAULT 0,
    last_hit_at BIGINT,
    origin      TEXT NOT NULL DEFAULT 'proxy',
    UNIQUE (tenant, exact_hash)
);
CREATE INDEX entries_expiry ON entries (expires_at);
CREATE INDEX entries_tenant_lru ON entries (tenant, (coalesce(last_hit_at, created_at)));
CREATE TABLE hit_log (
    id         BIGSERIAL PRIMARY KEY,
    tenant     TEXT NOT NULL,
    entry_id   BIGINT NOT NULL,
    probe      TEXT NOT NULL,
    similarity REAL NOT NULL,
    at         BIGINT NOT NULL,
    request_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX hit_log_tenant ON hit_log (tenant, id);
CREATE INDEX hit_log_request ON hit_log (request_id) WHERE request_id <> '';
CREATE TABLE entry_negatives (
    id         BIGSERIAL PRIMARY KEY,
    entry_id   BIGINT NOT NULL,
    tenant     TEXT NOT NULL,
    probe      TEXT NOT NULL,
    embedding  BYTEA NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX entry_negatives_entry ON entry_negatives (entry_id);
CREATE TABLE registered_models (
    tenant     TEXT NOT NULL,
    model      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, model)
);
CREATE TABLE change_log (
    id         BIGSERIAL PRIMARY KEY,
    tenant     TEXT NOT NULL,
    entry_id   BIGINT NOT NULL,
    exact_hash TEXT NOT NULL,
    op         TEXT NOT NULL,
    at         BIGINT NOT NULL
);
",
    "
CREATE FUNCTION modelcache_change_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('modelcache_changes', current_schema());
    RETURN NULL;
END
$$;
CREATE TRIGGER change_log_notify AFTER INSERT ON change_log
    FOR EACH STATEMENT EXECUTE FUNCTION modelcache_change_notify();
",
    "
CREATE TABLE change_log_floor (
    one   BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    up_to BIGINT NOT NULL
);
INSERT INTO change_log_floor (up_to) VALUES (0);
",
    "
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value)
    VALUES ('store_id', md5(random()::text || clock_timestamp()::text || current_schema()));
",
    "
CREATE TABLE verified_keys (
    tenant      TEXT NOT NULL,
    key_hash    BYTEA NOT NULL,
    verified_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, key_hash)
);
",
];

/// The channel every write to the change log notifies (the payload is the
/// schema; a replica of another schema wakes for nothing, then reads nothing).
const CHANNEL: &str = "modelcache_changes";

/// Held by every transaction that appends to the change log, until it
/// commits: change ids then become visible in order, so that a replica
/// reading "after id N" can never skip a change that commits late.
const CHANGE_LOCK: &str = "SELECT pg_advisory_xact_lock(7204512)";

/// Rows of the hit log kept; older ones are trimmed by the sweep.
const HIT_LOG_KEEP: i64 = 100_000;

/// Changes kept in the change log; older ones are trimmed by the sweep, and
/// `change_log_floor` records up to where, so that a replica whose snapshot
/// is older than that checks it against the table instead of a tail.
const CHANGE_LOG_KEEP: i64 = 1_000_000;

const COLUMNS: &str = "id, tenant, partition, exact_hash, endpoint, model, text, params, answer, created_at, expires_at, hits, last_hit_at, origin";

/// The shared store, in one PostgreSQL database (or one schema of it).
pub struct PgStore {
    conns: Option<Conns>,
    next: AtomicUsize,
    url: String,
    schema: Option<String>,
    /// Whether [`Store::wait_for_change`] LISTENs (otherwise it only sleeps).
    notify: bool,
    /// Changes the sweep keeps in the change log.
    keep_changes: i64,
    /// `store_meta.store_id`, made by the migration that created the table.
    id: String,
}

struct Conns {
    writer: Mutex<Client>,
    readers: Vec<Mutex<Client>>,
    /// LISTENs on [`CHANNEL`]; opened by the first wait, re-opened after a
    /// failure.
    listener: Mutex<Option<Client>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // NOTE: a blocking client runs a runtime of its own to close; the last
        // owner of the store may well be a runtime thread, so close elsewhere.
        if let Some(c) = self.conns.take() {
            let _ = std::thread::spawn(move || drop(c)).join();
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // NOTE: SQLSTATE classes 22 (data exception), 23 (integrity) and 54
        // (program limit) mean the database is up and refuses these values;
        // anything else (a closed connection, a timeout) may pass later.
        match e.code().map(|c| c.code().get(..2).unwrap_or("")) {
            Some("22" | "23" | "54") => StoreError::Rejected(e.to_string()),
            _ => StoreError::Postgres(e.to_string()),
        }
    }
}

/// `s` as PostgreSQL `text` can hold it: a NUL character (which a chat
/// message may carry, JSON-escaped) becomes U+FFFD. Only stored text
/// changes: lookups go by hash.
fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn row_to_entry(r: &Row) -> Entry {
    Entry {
        id: r.get(0),
        tenant: r.get(1),
        partition: r.get(2),
        exact_hash: r.get(3),
        endpoint: r.get(4),
        model: r.get(5),
        text: r.get(6),
        params: r.get(7),
        answer: r.get(8),
        created_at: r.get(9),
        expires_at: r.get(10),
        hits: r.get(11),
        last_hit_at: r.get(12),
        origin: Origin::parse(r.get::<_, &str>(13)),
    }
}

fn row_to_removed(r: &Row) -> Removed {
    Removed {
        tenant: r.get(0),
        id: r.get(1),
        exact_hash: r.get(2),
    }
}

fn row_to_negative(r: &Row) -> Negative {
    Negative {
        entry_id: r.get(0),
        tenant: r.get(1),
        probe: r.get(2),
        embedding: blob_to_vec(r.get::<_, &[u8]>(3)),
        at: r.get(4),
    }
}

fn row_to_hit(r: &Row) -> HitLogRow {
    HitLogRow {
        id: r.get(0),
        at: r.get(1),
        tenant: r.get(2),
        entry_id: r.get(3),
        probe: r.get(4),
        matched: r.get(5),
        model: r.get(6),
        similarity: r.get::<_, f32>(7),
        request_id: r.get(8),
    }
}

fn connect(url: &str, schema: Option<&str>) -> Result<Client, StoreError> {
    let mut config: postgres::Config = url.parse()?;
    // NOTE: an unreachable host fails in seconds rather than after the
    // system's TCP timeout (minutes), and a dead peer is noticed by
    // keepalives; a URL that sets its own connect_timeout keeps it.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(3));
    }
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(30));
    let mut c = config.connect(NoTls)?;
    if let Some(s) = schema {
        // NOTE: a schema of its own keeps test runs (or several gateways'
        // deployments) apart in one database.
        let quoted = format!("\"{}\"", s.replace('"', "\"\""));
        // NOTE: notices ("already exists, skipping") are not worth a log
        // line on every connection.
        c.batch_execute(&format!(
            "SET client_min_messages TO warning; CREATE SCHEMA IF NOT EXISTS {quoted}; SET search_path TO {quoted}"
        ))?;
    }
    Ok(c)
}

fn log_changes(
    tx: &mut postgres::Transaction<'_>,
    removed: &[Removed],
    op: &str,
    at: i64,
) -> Result<(), postgres::Error> {
    let st = tx.prepare(
        "INSERT INTO change_log (tenant, entry_id, exact_hash, op, at) VALUES ($1, $2, $3, $4, $5)",
    )?;
    for r in removed {
        tx.execute(&st, &[&r.tenant, &r.id, &r.exact_hash, &op, &at])?;
    }
    Ok(())
}

fn now() -> i64 {
    crate::clock::now_ms()
}

impl PgStore {
    /// Connects (`readers` reader connections and one writer) and applies
    /// the migrations not applied yet. `schema` puts every table in a schema
    /// of its own.
    pub fn open(url: &str, readers: usize, schema: Option<&str>) -> Result<PgStore, StoreError> {
        let mut writer = connect(url, schema)?;
        migrate(&mut writer)?;
        let id: String = writer
            .query_one("SELECT value FROM store_meta WHERE key = 'store_id'", &[])?
            .get(0);
        let mut rs = Vec::new();
        for _ in 0..readers.max(1) {
            rs.push(Mutex::new(connect(url, schema)?));
        }
        Ok(PgStore {
            conns: Some(Conns {
                writer: Mutex::new(writer),
                readers: rs,
                listener: Mutex::new(None),
            }),
            next: AtomicUsize::new(0),
            url: url.to_string(),
            schema: schema.map(str::to_string),
            notify: true,
            keep_changes: CHANGE_LOG_KEEP,
            id,
        })
    }

    /// Keeps `n` changes in the change log instead of a million (tests).
    pub fn keep_changes(mut self, n: i64) -> PgStore {
        self.keep_changes = n.max(1);
        self
    }

    /// With `false`, replicas only poll the change log: for a pooler that
    /// cannot hold a LISTEN (PgBouncer in transaction mode).
    pub fn notify(mut self, on: bool) -> PgStore {
        self.notify = on;
        self
    }

    /// A connection that is closed (the database restarted or the network
    /// failed) is replaced before use; if that fails, the call fails and the
    /// next one tries again.
    fn usable<'a>(
        &self,
        c: &'a mut std::sync::MutexGuard<'_, Client>,
    ) -> Result<&'a mut Client, StoreError> {
        if c.is_closed() {
            **c = connect(&self.url, self.schema.as_deref())?;
            tracing::info!("reconnected to PostgreSQL");
        }
        Ok(&mut **c)
    }

    fn conns(&self) -> Result<&Conns, StoreError> {
        self.conns.as_ref().ok_or(StoreError::Poisoned)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let conns = self.conns()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.readers.len();
        let mut c = conns.readers[i].lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(self.usable(&mut c)?)?)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut c = self
            .conns()?
            .writer
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        Ok(f(self.usable(&mut c)?)?)
    }

    /// Waits up to `timeout` for a notification on [`CHANNEL`], on a
    /// connection of its own. Notifications that queued up meanwhile are
    /// taken together: one wake-up, one read of the log.
    fn listen(&self, timeout: std::time::Duration) -> Result<bool, StoreError> {
        let conns = self.conns()?;
        let mut slot = conns.listener.lock().map_err(|_| StoreError::Poisoned)?;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = None;
            let mut c = connect(&self.url, self.schema.as_deref())?;
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            *slot = Some(c);
        }
        let Some(c) = slot.as_mut() else {
            return Ok(false);
        };
        let waited = {
            let mut notes = c.notifications();
            let waited = notes.timeout_iter(timeout).next().map(|n| n.is_some());
            let mut more = notes.iter();
            while let Ok(Some(_)) = more.next() {}
            waited
        };
        if waited.is_err() {
            *slot = None;
        }
        Ok(waited?)
    }

    /// The id of the newest change (0 when none).
    pub fn last_change(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_one("SELECT coalesce(max(id), 0) FROM change_log", &[])
                .map(|r| r.get(0))
        })
    }
}

/// Applies the migrations not applied yet, each in a transaction, under an
/// advisory lock so that replicas starting together apply each once.
fn migrate(c: &mut Client) -> Result<(), StoreError> {
    c.batch_execute(
        "SELECT pg_advisory_lock(7204511); CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    let result = (|| -> Result<(), postgres::Error> {
        let done: Vec<i32> = c
            .query("SELECT version FROM schema_migrations", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            if done.contains(&version) {
                continue;
            }
            let mut tx = c.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[&version, &now()],
            )?;
            tx.commit()?;
            tracing::info!(version, "postgres migration applied");
        }
        Ok(())
    })();
    c.batch_execute("SELECT pg_advisory_unlock(7204511)")?;
    Ok(result?)
}

impl Store for PgStore {
    fn change_log(&self) -> Option<&dyn ChangeLog> {
        Some(self)
    }

    fn insert_batch(&self, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(CHANGE_LOCK)?;
            let st = tx.prepare(
                "INSERT INTO entries (tenant, partition, tag, exact_hash, endpoint, model, text, params, answer, embedding, created_at, expires_at, origin)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (tenant, exact_hash) DO UPDATE SET
                    answer = excluded.answer, params = excluded.params, embedding = excluded.embedding,
                    created_at = excluded.created_at, expires_at = excluded.expires_at, origin = excluded.origin
                 RETURNING id",
            )?;
            let log = tx.prepare(
                "INSERT INTO change_log (tenant, entry_id, exact_hash, op, at) VALUES ($1, $2, $3, 'insert', $4)",
            )?;
            let mut ids = Vec::with_capacity(entries.len());
            for e in entries {
                let tag = crate::keying::partition_tag(&e.partition) as i64;
                let blob = e.embedding.as_deref().map(vec_to_blob);
                let (model, text) = (pg_text(&e.model), pg_text(&e.text));
                let (params, answer) = (pg_text(&e.params), pg_text(&e.answer));
                let id: i64 = tx
                    .query_one(
                        &st,
                        &[
                            &e.tenant,
                            &e.partition,
                            &tag,
                            &e.exact_hash,
                            &e.endpoint,
                            &model.as_ref(),
                            &text.as_ref(),
                            &params.as_ref(),
                            &answer.as_ref(),
                            &blob,
                            &e.created_at,
                            &e.expires_at,
                            &e.origin.as_str(),
                        ],
                    )?
                    .get(0);
                tx.execute(&log, &[&e.tenant, &id, &e.exact_hash, &e.created_at])?;
                ids.push(id);
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    fn get(&self, id: i64) -> Result<Option<Entry>, StoreError> {
        self.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {COLUMNS} FROM entries WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(row_to_entry))
        })
    }

    fn get_exact(&self, tenant: &str, exact_hash: &str) -> Result<Option<Entry>, StoreError> {
        self.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {COLUMNS} FROM entries WHERE tenant = $1 AND exact_hash = $2"),
                &[&tenant, &exact_hash],
            )?
            .as_ref()
            .map(row_to_entry))
        })
    }

    fn index_rows(&self, tenant: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT id, tag FROM entries WHERE tenant = $1 AND embedding IS NOT NULL",
                &[&tenant],
            )?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
            .collect())
        })
    }

    fn embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError> {
        self.read(|c| {
            Ok(
                c.query_opt("SELECT embedding FROM entries WHERE id = $1", &[&id])?
                    .and_then(|r| r.get::<_, Option<Vec<u8>>>(0))
                    .map(|b| blob_to_vec(&b)),
            )
        })
    }

    fn get_with_embedding(&self, id: i64) -> Result<Option<super::WithEmbedding>, StoreError> {
        self.read(|c| {
            Ok(c.query_opt(
                &format!("SELECT {COLUMNS}, embedding FROM entries WHERE id = $1"),
                &[&id],
            )?
            .map(|r| {
                let v = r.get::<_, Option<&[u8]>>(14).map(blob_to_vec);
                (row_to_entry(&r), v)
            }))
        })
    }

    fn store_id(&self) -> Result<String, StoreError> {
        Ok(self.id.clone())
    }

    fn embeddings(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<f32>)>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT id, embedding FROM entries WHERE id = ANY($1) AND embedding IS NOT NULL",
                &[&ids],
            )?
            .iter()
            .map(|r| (r.get(0), blob_to_vec(r.get::<_, &[u8]>(1))))
            .collect())
        })
    }

    fn sweep(&self, now_ms: i64, limits: &Limits) -> Result<Vec<Removed>, StoreError> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(CHANGE_LOCK)?;
            let mut removed: Vec<Removed> = tx
                .query(
                    "DELETE FROM entries WHERE expires_at <= $1 RETURNING tenant, id, exact_hash",
                    &[&now_ms],
                )?
                .iter()
                .map(row_to_removed)
                .collect();
            log_changes(&mut tx, &removed, "expire", now_ms)?;
            let counts: Vec<(String, i64)> = tx
                .query("SELECT tenant, count(*) FROM entries GROUP BY tenant", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for (tenant, count) in counts {
                let over = count - limits.of(&tenant).min(i64::MAX as u64) as i64;
                if over <= 0 {
                    continue;
                }
                let evicted: Vec<Removed> = tx
                    .query(
                        "DELETE FROM entries WHERE id IN (
                            SELECT id FROM entries WHERE tenant = $1
                            ORDER BY coalesce(last_hit_at, created_at), id LIMIT $2)
                         RETURNING tenant, id, exact_hash",
                        &[&tenant, &over],
                    )?
                    .iter()
                    .map(row_to_removed)
                    .collect();
                log_changes(&mut tx, &evicted, "evict", now_ms)?;
                removed.extend(evicted);
            }
            tx.execute(
                "DELETE FROM hit_log WHERE id <= (SELECT max(id) FROM hit_log) - $1",
                &[&HIT_LOG_KEEP],
            )?;
            tx.execute(
                "WITH gone AS (
                    DELETE FROM change_log WHERE id <= (SELECT max(id) FROM change_log) - $1
                    RETURNING id)
                 UPDATE change_log_floor SET up_to = greatest(up_to, (SELECT max(id) FROM gone))
                 WHERE EXISTS (SELECT 1 FROM gone)",
                &[&self.keep_changes],
            )?;
            tx.execute(
                "DELETE FROM entry_negatives n WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.id = n.entry_id)",
                &[],
            )?;
            tx.commit()?;
            Ok(removed)
        })
    }

    fn delete(&self, tenant: &str, ids: &[i64]) -> Result<Vec<Removed>, StoreError> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(CHANGE_LOCK)?;
            let removed: Vec<Removed> = tx
                .query(
                    "DELETE FROM entries WHERE tenant = $1 AND id = ANY($2) RETURNING tenant, id, exact_hash",
                    &[&tenant, &ids],
                )?
                .iter()
                .map(row_to_removed)
                .collect();
            log_changes(&mut tx, &removed, "delete", now())?;
            tx.commit()?;
            Ok(removed)
        })
    }

    fn truncate(&self, tenant: &str, model: Option<&str>) -> Result<Vec<Removed>, StoreError> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(CHANGE_LOCK)?;
            let removed: Vec<Removed> = tx
                .query(
                    "DELETE FROM entries WHERE tenant = $1 AND ($2::text IS NULL OR model = $2)
                     RETURNING tenant, id, exact_hash",
                    &[&tenant, &model],
                )?
                .iter()
                .map(row_to_removed)
                .collect();
            log_changes(&mut tx, &removed, "truncate", now())?;
            tx.commit()?;
            Ok(removed)
        })
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<Entry>, StoreError> {
        let limit = q.limit.min(i64::MAX as usize) as i64;
        self.read(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {COLUMNS} FROM entries
                     WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR model = $2)
                       AND ($3::text IS NULL OR strpos(lower(text), lower($3)) > 0)
                       AND ($4::bigint IS NULL OR id < $4)
                     ORDER BY id DESC LIMIT $5"
                ),
                &[&q.tenant, &q.model, &q.text, &q.before_id, &limit],
            )?
            .iter()
            .map(row_to_entry)
            .collect())
        })
    }

    fn register_model(&self, tenant: &str, model: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO registered_models (tenant, model, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, model) DO NOTHING",
                &[&tenant, &pg_text(model).as_ref(), &now_ms],
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
                "INSERT INTO verified_keys (tenant, key_hash, verified_at) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, key_hash) DO UPDATE
                 SET verified_at = greatest(verified_keys.verified_at, excluded.verified_at)",
                &[&tenant, &&key_hash[..], &at_ms],
            )
            .map(|_| ())
        })
    }

    fn verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            c.query_opt(
                "SELECT verified_at FROM verified_keys WHERE tenant = $1 AND key_hash = $2",
                &[&tenant, &&key_hash[..]],
            )
            .map(|r| r.map(|r| r.get(0)))
        })
    }

    fn revoke_verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "DELETE FROM verified_keys WHERE tenant = $1 AND key_hash = $2",
                &[&tenant, &&key_hash[..]],
            )
            .map(|_| ())
        })
    }

    fn stats(&self) -> Result<Vec<TenantStats>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT tenant, count(*), coalesce(sum(hits), 0)::bigint FROM entries GROUP BY tenant ORDER BY tenant",
                &[],
            )?
            .iter()
            .map(|r| TenantStats {
                tenant: r.get(0),
                entries: r.get::<_, i64>(1) as u64,
                hits: r.get::<_, i64>(2) as u64,
            })
            .collect())
        })
    }

    fn counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT tenant, count(*) FROM entries GROUP BY tenant ORDER BY tenant",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
        })
    }
}

impl HitLog for PgStore {
    fn record_hits(&self, hits: &[HitRecord]) -> Result<(), StoreError> {
        self.write(|c| {
            // NOTE: two statements per batch, whatever its size: one
            // update of each entry hit (by its count), one insert of the
            // hit log's rows.
            let totals = super::hit_totals(hits);
            let ids: Vec<i64> = totals.iter().map(|t| t.entry_id).collect();
            let tenants: Vec<&str> = totals.iter().map(|t| t.tenant).collect();
            let counts: Vec<i64> = totals.iter().map(|t| t.count).collect();
            let lasts: Vec<i64> = totals.iter().map(|t| t.last_at).collect();
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE entries e SET hits = e.hits + u.n,
                        last_hit_at = greatest(coalesce(e.last_hit_at, 0), u.at)
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) AS u(id, tenant, n, at)
                 WHERE e.id = u.id AND e.tenant = u.tenant",
                &[&ids, &tenants, &counts, &lasts],
            )?;
            let tenants: Vec<&str> = hits.iter().map(|h| h.tenant.as_str()).collect();
            let entries: Vec<i64> = hits.iter().map(|h| h.entry_id).collect();
            let probes: Vec<std::borrow::Cow<'_, str>> =
                hits.iter().map(|h| pg_text(&h.probe)).collect();
            let probes: Vec<&str> = probes.iter().map(|p| p.as_ref()).collect();
            let sims: Vec<f32> = hits.iter().map(|h| h.similarity).collect();
            let ats: Vec<i64> = hits.iter().map(|h| h.at).collect();
            let rids: Vec<&str> = hits.iter().map(|h| h.request_id.as_str()).collect();
            tx.execute(
                "INSERT INTO hit_log (tenant, entry_id, probe, similarity, at, request_id)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::real[], $5::bigint[], $6::text[])",
                &[&tenants, &entries, &probes, &sims, &ats, &rids],
            )?;
            tx.commit()
        })
    }

    fn hit_log(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<HitLogRow>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(|c| {
            Ok(c.query(
                "SELECT h.id, h.at, h.tenant, h.entry_id, h.probe, e.text, e.model, h.similarity, h.request_id
                 FROM hit_log h LEFT JOIN entries e ON e.id = h.entry_id AND e.tenant = h.tenant
                 WHERE ($1::text IS NULL OR h.tenant = $1)
                 ORDER BY h.id DESC LIMIT $2",
                &[&tenant, &limit],
            )?
            .iter()
            .map(row_to_hit)
            .collect())
        })
    }

    fn hit_by_request(&self, request_id: &str) -> Result<Option<HitLogRow>, StoreError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT h.id, h.at, h.tenant, h.entry_id, h.probe, e.text, e.model, h.similarity, h.request_id
                 FROM hit_log h LEFT JOIN entries e ON e.id = h.entry_id AND e.tenant = h.tenant
                 WHERE h.request_id = $1 ORDER BY h.id DESC LIMIT 1",
                &[&request_id],
            )?
            .as_ref()
            .map(row_to_hit))
        })
    }
}

impl Negatives for PgStore {
    fn add_negative(&self, n: &Negative) -> Result<(), StoreError> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(CHANGE_LOCK)?;
            tx.execute(
                "INSERT INTO entry_negatives (entry_id, tenant, probe, embedding, at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &n.entry_id,
                    &n.tenant,
                    &pg_text(&n.probe).as_ref(),
                    &vec_to_blob(&n.embedding),
                    &n.at,
                ],
            )?;
            // NOTE: other replicas reload this entry's negatives when they
            // read the change; the exact hash is not needed for that.
            tx.execute(
                "INSERT INTO change_log (tenant, entry_id, exact_hash, op, at) VALUES ($1, $2, '', 'negative', $3)",
                &[&n.tenant, &n.entry_id, &n.at],
            )?;
            tx.commit()
        })
    }

    fn negatives(&self) -> Result<Vec<Negative>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT n.entry_id, n.tenant, n.probe, n.embedding, n.at FROM entry_negatives n
                 JOIN entries e ON e.id = n.entry_id AND e.tenant = n.tenant ORDER BY n.id",
                &[],
            )?
            .iter()
            .map(row_to_negative)
            .collect())
        })
    }

    fn negatives_of(&self, entry_id: i64) -> Result<Vec<Negative>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT n.entry_id, n.tenant, n.probe, n.embedding, n.at FROM entry_negatives n
                 JOIN entries e ON e.id = n.entry_id AND e.tenant = n.tenant
                 WHERE n.entry_id = $1 ORDER BY n.id",
                &[&entry_id],
            )?
            .iter()
            .map(row_to_negative)
            .collect())
        })
    }
}

impl ChangeLog for PgStore {
    fn last_change(&self) -> Result<i64, StoreError> {
        PgStore::last_change(self)
    }

    fn change_log_floor(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_one("SELECT up_to FROM change_log_floor", &[])
                .map(|r| r.get(0))
        })
    }

    fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(|c| {
            Ok(c.query(
                "SELECT id, tenant, entry_id, exact_hash, op FROM change_log WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )?
            .iter()
            .map(|r| Change {
                id: r.get(0),
                tenant: r.get(1),
                entry_id: r.get(2),
                exact_hash: r.get(3),
                kind: match r.get::<_, &str>(4) {
                    "insert" => ChangeKind::Insert,
                    "negative" => ChangeKind::Negative,
                    _ => ChangeKind::Remove,
                },
            })
            .collect())
        })
    }

    fn wait_for_change(&self, timeout: std::time::Duration) -> bool {
        if !self.notify {
            std::thread::sleep(timeout);
            return false;
        }
        match self.listen(timeout) {
            Ok(woken) => woken,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN failed; polling");
                std::thread::sleep(timeout);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test database (`scripts/postgres-up.sh` prints it; `make test` and
    /// `.ci/run` set it).
    pub(crate) fn url() -> String {
        std::env::var("MODELCACHE_TEST_POSTGRES_URL").expect(
            "MODELCACHE_TEST_POSTGRES_URL is not set: run `make test`, which starts PostgreSQL with scripts/postgres-up.sh",
        )
    }

    fn fresh_schema() -> String {
        format!("test_{:016x}", rand::random::<u64>())
    }

    crate::store::store_suite!(|| PgStore::open(&url(), 2, Some(&fresh_schema())).unwrap());

    #[test]
    fn migrations_apply_once_and_changes_are_logged() {
        let schema = fresh_schema();
        let s = PgStore::open(&url(), 1, Some(&schema)).unwrap();
        let before = crate::store::suite::a_change_log_logs_each_kind_in_order(&s);
        // A second open of the same schema applies nothing again.
        let again = PgStore::open(&url(), 1, Some(&schema)).unwrap();
        assert_eq!(again.last_change().unwrap(), before + 4);
        let applied: i64 = again
            .read(|c| {
                c.query_one("SELECT count(*) FROM schema_migrations", &[])
                    .map(|r| r.get(0))
            })
            .unwrap();
        assert_eq!(applied, MIGRATIONS.len() as i64);
        assert_eq!(again.store_id().unwrap(), s.store_id().unwrap());
        let other = PgStore::open(&url(), 1, Some(&fresh_schema())).unwrap();
        assert_ne!(other.store_id().unwrap(), s.store_id().unwrap());
    }

    #[test]
    fn refused_data_is_told_from_an_unreachable_database_and_nul_is_stored() {
        let s = PgStore::open(&url(), 1, Some(&fresh_schema())).unwrap();
        let refused = s.read(|c| c.query_one("SELECT 1 / 0", &[]).map(|_| ()));
        assert!(
            matches!(refused, Err(StoreError::Rejected(_))),
            "{refused:?}"
        );
        let away = PgStore::open("postgres://nobody:x@127.0.0.1:1/none", 1, None);
        assert!(matches!(away, Err(StoreError::Postgres(_))));
        // A NUL in a question (PostgreSQL text cannot hold it) is stored as
        // U+FFFD; the entry is found by its hash as before.
        let mut e = crate::store::suite::entry("a", "nul", 1, 1000);
        e.text = "user###a\0b".into();
        let ids = s.insert_batch(&[e]).unwrap();
        assert_eq!(s.get(ids[0]).unwrap().unwrap().text, "user###a\u{FFFD}b");
        assert!(s.get_exact("a", "nul").unwrap().is_some());
        s.record_hits(&[HitRecord {
            entry_id: ids[0],
            tenant: "a".into(),
            probe: "x\0y".into(),
            similarity: 1.0,
            at: 5,
            request_id: String::new(),
        }])
        .unwrap();
    }

    #[test]
    fn the_sweep_trims_the_change_log_and_records_the_floor() {
        let s = PgStore::open(&url(), 1, Some(&fresh_schema()))
            .unwrap()
            .keep_changes(2);
        crate::store::suite::a_trimmed_change_log_records_its_floor(&s);
    }
}
