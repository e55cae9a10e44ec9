//! MySQL store: the shared store of several gateway replicas on MySQL 8,
//! MariaDB or OceanBase's MySQL mode (the databases ModelCache runs on).
//!
//! Owns the MySQL schema, its versioned migrations (applied once, at open,
//! under a named lock), and every statement: entries, embeddings (blobs),
//! hit counts, the hit log, negatives, verified keys, `store_meta` (the
//! store's id), and a change log written in the same transaction as the
//! entry. MySQL has no LISTEN/NOTIFY, so the [`ChangeLog`] it provides is
//! read by polling at a configured interval. It runs the async driver
//! (`mysql_async`) on a small runtime of its own and blocks on it, so like
//! every store it must never be called on a runtime thread.
//!
//! The SQL is the subset MySQL 8, MariaDB and OceanBase all accept: no
//! `RETURNING`, no functional indexes, no `INSERT … AS alias`; utf8mb4
//! throughout, with identity columns (tenant, hashes, model) binary so that
//! they compare byte for byte, never by a case- or space-folding collation.

use std::{future::Future, time::Duration};

use mysql_async::{prelude::Queryable, Conn, Params, Pool, Row, TxOpts, Value};

use super::{
    blob_to_vec, vec_to_blob, Change, ChangeKind, ChangeLog, Entry, HitLog, HitLogRow, HitRecord,
    Limits, ListQuery, Negative, Negatives, NewEntry, Origin, Removed, Store, StoreError,
    TenantStats,
};

/// Schema versions, applied in order, each once (recorded in
/// `schema_migrations`). MySQL commits DDL as it goes, so every statement
/// may run again after an interrupted migration (`IF NOT EXISTS`,
/// `INSERT IGNORE`).
const MIGRATIONS: [&[&str]; 1] = [&[
    "CREATE TABLE IF NOT EXISTS entries (
        id          BIGINT NOT NULL AUTO_INCREMENT,
        tenant      VARBINARY(255) NOT NULL,
        part        VARBINARY(255) NOT NULL,
        tag         BIGINT NOT NULL,
        exact_hash  VARBINARY(255) NOT NULL,
        endpoint    VARBINARY(64) NOT NULL,
        model       MEDIUMBLOB NOT NULL,
        key_text    LONGTEXT NOT NULL,
        params      LONGTEXT NOT NULL,
        answer      LONGTEXT NOT NULL,
        embedding   MEDIUMBLOB NULL,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        hits        BIGINT NOT NULL DEFAULT 0,
        last_hit_at BIGINT NULL,
        used_at     BIGINT NOT NULL,
        origin      VARBINARY(16) NOT NULL DEFAULT 'proxy',
        PRIMARY KEY (id),
        UNIQUE KEY entries_exact (tenant, exact_hash),
        KEY entries_expiry (expires_at),
        KEY entries_lru (tenant, used_at, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS hit_log (
        id         BIGINT NOT NULL AUTO_INCREMENT,
        tenant     VARBINARY(255) NOT NULL,
        entry_id   BIGINT NOT NULL,
        probe      LONGTEXT NOT NULL,
        similarity FLOAT NOT NULL,
        at_ms      BIGINT NOT NULL,
        request_id VARBINARY(255) NOT NULL DEFAULT '',
        PRIMARY KEY (id),
        KEY hit_log_tenant (tenant, id),
        KEY hit_log_request (request_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS entry_negatives (
        id        BIGINT NOT NULL AUTO_INCREMENT,
        entry_id  BIGINT NOT NULL,
        tenant    VARBINARY(255) NOT NULL,
        probe     LONGTEXT NOT NULL,
        embedding MEDIUMBLOB NOT NULL,
        at_ms     BIGINT NOT NULL,
        PRIMARY KEY (id),
        KEY entry_negatives_entry (entry_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS registered_models (
        tenant     VARBINARY(255) NOT NULL,
        model      VARBINARY(512) NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tenant, model)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS change_log (
        id         BIGINT NOT NULL AUTO_INCREMENT,
        tenant     VARBINARY(255) NOT NULL,
        entry_id   BIGINT NOT NULL,
        exact_hash VARBINARY(255) NOT NULL,
        op         VARBINARY(16) NOT NULL,
        at_ms      BIGINT NOT NULL,
        PRIMARY KEY (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    // NOTE: its one row is also the lock every writer of the change log
    // takes (`SELECT … FOR UPDATE`) until it commits, so that change ids
    // become visible in order (see CHANGE_LOCK).
    "CREATE TABLE IF NOT EXISTS change_log_floor (
        one   TINYINT NOT NULL,
        up_to BIGINT NOT NULL,
        PRIMARY KEY (one)
    ) ENGINE=InnoDB",
    "INSERT IGNORE INTO change_log_floor (one, up_to) VALUES (1, 0)",
    "CREATE TABLE IF NOT EXISTS store_meta (
        meta_key   VARBINARY(64) NOT NULL,
        meta_value VARBINARY(255) NOT NULL,
        PRIMARY KEY (meta_key)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS verified_keys (
        tenant      VARBINARY(255) NOT NULL,
        key_hash    BINARY(32) NOT NULL,
        verified_at BIGINT NOT NULL,
        PRIMARY KEY (tenant, key_hash)
    ) ENGINE=InnoDB",
]];

/// Taken first by every transaction that writes entries or the change log,
/// and held until it commits: change ids (AUTO_INCREMENT, handed out at
/// insert time) then become visible in the order they were handed out, so
/// that a replica reading "after id N" can never skip a change that commits
/// late. Writers also meet in one order, so they cannot deadlock each other.
const CHANGE_LOCK: &str = "SELECT up_to FROM change_log_floor WHERE one = 1 FOR UPDATE";

/// Rows of the hit log kept; older ones are trimmed by the sweep.
const HIT_LOG_KEEP: i64 = 100_000;

/// Changes kept in the change log (see the PostgreSQL store).
const CHANGE_LOG_KEEP: i64 = 1_000_000;

/// How long a connection may take to be made (or taken from the pool).
const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// How long one call may take in all. A database that hangs (rather than
/// refusing) fails the call after this, so the write-back thread retries
/// instead of waiting forever; reads on a request's path are bounded
/// tighter by the cache.
const CALL_WITHIN: Duration = Duration::from_secs(30);

/// The server's error code for a duplicate key.
const ER_DUP_ENTRY: u16 = 1062;

/// Rows per statement when a list of ids or rows is written out.
const CHUNK: usize = 500;

const COLUMNS: &str = "id, tenant, part, exact_hash, endpoint, model, key_text, params, answer, created_at, expires_at, hits, last_hit_at, origin";

/// The shared store, in one MySQL database.
pub struct MySqlStore {
    /// The driver's runtime (one worker); taken on drop.
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// How often replicas read the change log.
    poll: Duration,
    /// Changes the sweep keeps in the change log.
    keep_changes: i64,
    /// `store_meta.store_id`, made once when the tables were created.
    id: String,
}

impl Drop for MySqlStore {
    fn drop(&mut self) {
        // NOTE: a runtime cannot be dropped on a runtime thread, and the last
        // owner of the store may be one: close the pool and the runtime on a
        // thread of their own.
        if let Some(rt) = self.rt.take() {
            let pool = self.pool.clone();
            let _ = std::thread::spawn(move || {
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(2), pool.disconnect()).await;
                });
                rt.shutdown_background();
            })
            .join();
        }
    }
}

impl From<mysql_async::Error> for StoreError {
    fn from(e: mysql_async::Error) -> Self {
        // NOTE: SQLSTATE classes 22 (data exception) and 23 (integrity), and
        // a packet over max_allowed_packet, mean the database is up and
        // refuses these values; anything else (a lost connection, a
        // deadlock, a timeout) may pass later.
        match &e {
            mysql_async::Error::Server(s)
                if s.state.starts_with("22") || s.state.starts_with("23") || s.code == 1153 =>
            {
                StoreError::Rejected(e.to_string())
            }
            mysql_async::Error::Driver(mysql_async::DriverError::PacketTooLarge) => {
                StoreError::Rejected(e.to_string())
            }
            _ => StoreError::Mysql(e.to_string()),
        }
    }
}

/// Positional parameters from a list of values of mixed types.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        Params::Positional(vec![$(Value::from($v)),*])
    };
}

/// Column `i` of `r`, converted; a NULL or a value of another type is an
/// error, not a panic.
fn take<T: mysql_async::prelude::FromValue>(r: &mut Row, i: usize) -> Result<T, StoreError> {
    match r.take_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(StoreError::Mysql(format!("column {i}: {e:?}"))),
        None => Err(StoreError::Mysql(format!("column {i} is missing"))),
    }
}

fn row_to_entry(r: &mut Row) -> Result<Entry, StoreError> {
    Ok(Entry {
        id: take(r, 0)?,
        tenant: take(r, 1)?,
        partition: take(r, 2)?,
        exact_hash: take(r, 3)?,
        endpoint: take(r, 4)?,
        model: take(r, 5)?,
        text: take(r, 6)?,
        params: take(r, 7)?,
        answer: take(r, 8)?,
        created_at: take(r, 9)?,
        expires_at: take(r, 10)?,
        hits: take(r, 11)?,
        last_hit_at: take(r, 12)?,
        origin: Origin::parse(&take::<String>(r, 13)?),
    })
}

fn rows_to<T>(
    rows: Vec<Row>,
    f: impl Fn(&mut Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(|mut r| f(&mut r)).collect()
}

fn row_to_removed(r: &mut Row) -> Result<Removed, StoreError> {
    Ok(Removed {
        tenant: take(r, 0)?,
        id: take(r, 1)?,
        exact_hash: take(r, 2)?,
    })
}

fn row_to_negative(r: &mut Row) -> Result<Negative, StoreError> {
    Ok(Negative {
        entry_id: take(r, 0)?,
        tenant: take(r, 1)?,
        probe: take(r, 2)?,
        embedding: blob_to_vec(&take::<Vec<u8>>(r, 3)?),
        at: take(r, 4)?,
    })
}

fn row_to_hit(r: &mut Row) -> Result<HitLogRow, StoreError> {
    Ok(HitLogRow {
        id: take(r, 0)?,
        at: take(r, 1)?,
        tenant: take(r, 2)?,
        entry_id: take(r, 3)?,
        probe: take(r, 4)?,
        matched: take(r, 5)?,
        model: take(r, 6)?,
        similarity: take(r, 7)?,
        request_id: take(r, 8)?,
    })
}

const HIT_COLUMNS: &str = "SELECT h.id, h.at_ms, h.tenant, h.entry_id, h.probe, e.key_text, e.model, h.similarity, h.request_id
     FROM hit_log h LEFT JOIN entries e ON e.id = h.entry_id AND e.tenant = h.tenant";

/// `?, ?, …` for `n` values.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn now() -> i64 {
    crate::clock::now_ms()
}

/// The removed rows' change-log lines, and their deletion, in the
/// transaction that selected them.
async fn remove_rows(
    tx: &mut mysql_async::Transaction<'_>,
    removed: &[Removed],
    op: &str,
    at: i64,
) -> Result<(), mysql_async::Error> {
    for chunk in removed.chunks(CHUNK) {
        let ids: Vec<Value> = chunk.iter().map(|r| Value::from(r.id)).collect();
        tx.exec_drop(
            format!("DELETE FROM entries WHERE id IN ({})", marks(ids.len())),
            Params::Positional(ids),
        )
        .await?;
        let mut values = Vec::with_capacity(chunk.len() * 5);
        for r in chunk {
            values.extend([
                Value::from(r.tenant.as_str()),
                Value::from(r.id),
                Value::from(r.exact_hash.as_str()),
                Value::from(op),
                Value::from(at),
            ]);
        }
        tx.exec_drop(
            format!(
                "INSERT INTO change_log (tenant, entry_id, exact_hash, op, at_ms) VALUES {}",
                vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            ),
            Params::Positional(values),
        )
        .await?;
    }
    Ok(())
}

/// Reads `(tenant, id, exact_hash)` rows, locking them for the transaction.
async fn select_removed(
    tx: &mut mysql_async::Transaction<'_>,
    sql: &str,
    params: Params,
) -> Result<Vec<Removed>, StoreError> {
    let rows: Vec<Row> = tx.exec(sql, params).await?;
    rows_to(rows, row_to_removed)
}

impl MySqlStore {
    /// Connects (a pool of up to `connections`) and applies the migrations
    /// not applied yet. `database` keeps the tables in a database of their
    /// own (created if missing) instead of the URL's.
    pub fn open(
        url: &str,
        connections: usize,
        database: Option<&str>,
    ) -> Result<MySqlStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mysql")
            .enable_all()
            .build()?;
        let opts = mysql_async::Opts::from_url(url)
            .map_err(|e| StoreError::Mysql(format!("storage.url: {e}")))?;
        let pool = rt.block_on(async {
            tokio::time::timeout(CALL_WITHIN, open_pool(opts, connections, database))
                .await
                .map_err(|_| StoreError::Mysql(format!("no answer within {CALL_WITHIN:?}")))?
        });
        let pool = match pool {
            Ok(p) => p,
            Err(e) => {
                rt.shutdown_background();
                return Err(e);
            }
        };
        let mut store = MySqlStore {
            rt: Some(rt),
            pool,
            poll: crate::config::MYSQL_POLL,
            keep_changes: CHANGE_LOG_KEEP,
            id: String::new(),
        };
        store.id = store.call(|mut c| async move {
            migrate(&mut c).await?;
            c.exec_drop(
                "INSERT IGNORE INTO store_meta (meta_key, meta_value) VALUES ('store_id', ?)",
                (super::new_store_id(),),
            )
            .await?;
            let id: Option<String> = c
                .exec_first(
                    "SELECT meta_value FROM store_meta WHERE meta_key = 'store_id'",
                    (),
                )
                .await?;
            id.ok_or_else(|| StoreError::Mysql("store_meta has no store_id".into()))
        })?;
        Ok(store)
    }

    /// Replicas read the change log this often.
    pub fn poll_every(mut self, every: Duration) -> MySqlStore {
        self.poll = every.max(Duration::from_millis(1));
        self
    }

    /// Keeps `n` changes in the change log instead of a million (tests).
    pub fn keep_changes(mut self, n: i64) -> MySqlStore {
        self.keep_changes = n.max(1);
        self
    }

    /// Runs `f` on a pooled connection on the driver's runtime, blocking
    /// this thread, bounded by [`CALL_WITHIN`].
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let rt = self.rt.as_ref().ok_or(StoreError::Poisoned)?;
        rt.block_on(async {
            let conn = tokio::time::timeout(CONNECT_WITHIN, self.pool.get_conn())
                .await
                .map_err(|_| {
                    StoreError::Mysql(format!("no connection within {CONNECT_WITHIN:?}"))
                })??;
            tokio::time::timeout(CALL_WITHIN, f(conn))
                .await
                .map_err(|_| StoreError::Mysql(format!("no answer within {CALL_WITHIN:?}")))?
        })
    }

    /// The id of the newest change (0 when none).
    pub fn last_change(&self) -> Result<i64, StoreError> {
        self.call(|mut c| async move {
            let n: Option<i64> = c
                .exec_first(
                    "SELECT CAST(COALESCE(MAX(id), 0) AS SIGNED) FROM change_log",
                    (),
                )
                .await?;
            Ok(n.unwrap_or(0))
        })
    }
}

async fn open_pool(
    opts: mysql_async::Opts,
    connections: usize,
    database: Option<&str>,
) -> Result<Pool, StoreError> {
    let mut builder = mysql_async::OptsBuilder::from_opts(opts.clone())
        .pool_opts(mysql_async::PoolOpts::default().with_constraints(
            mysql_async::PoolConstraints::new(0, connections.max(1)).unwrap_or_default(),
        ))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // NOTE: strict, so that a value too long for its column is refused
        // (and counted) rather than cut short and stored; the rest of the
        // mode is what all three servers accept.
        .init(vec![
            "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'",
        ]);
    if let Some(db) = database {
        let quoted = format!("`{}`", db.replace('`', "``"));
        let mut c = tokio::time::timeout(CONNECT_WITHIN, Conn::new(opts))
            .await
            .map_err(|_| StoreError::Mysql(format!("no connection within {CONNECT_WITHIN:?}")))??;
        c.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .await?;
        let _ = c.disconnect().await;
        builder = builder.db_name(Some(db));
    }
    Ok(Pool::new(builder))
}

/// Applies the migrations not applied yet, under a named lock so that
/// replicas starting together apply each once.
async fn migrate(c: &mut Conn) -> Result<(), StoreError> {
    let got: Option<i64> = c
        .exec_first(
            "SELECT GET_LOCK(CONCAT('modelcache_migrate:', DATABASE()), 60)",
            (),
        )
        .await?;
    if got != Some(1) {
        return Err(StoreError::Mysql(
            "another gateway held the migration lock for 60 s".into(),
        ));
    }
    let result = async {
        c.query_drop(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL) ENGINE=InnoDB",
        )
        .await?;
        let done: Vec<i32> = c.exec("SELECT version FROM schema_migrations", ()).await?;
        for (i, statements) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            if done.contains(&version) {
                continue;
            }
            for sql in statements.iter() {
                c.query_drop(*sql).await?;
            }
            c.exec_drop(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, now()),
            )
            .await?;
            tracing::info!(version, "mysql migration applied");
        }
        Ok::<(), StoreError>(())
    }
    .await;
    c.query_drop("DO RELEASE_LOCK(CONCAT('modelcache_migrate:', DATABASE()))")
        .await?;
    result
}

impl Store for MySqlStore {
    fn change_log(&self) -> Option<&dyn ChangeLog> {
        Some(self)
    }

    fn insert_batch(&self, entries: &[NewEntry]) -> Result<Vec<i64>, StoreError> {
        self.call(|mut c| async move {
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.query_drop(CHANGE_LOCK).await?;
            let mut ids = Vec::with_capacity(entries.len());
            for e in entries {
                let tag = crate::keying::partition_tag(&e.partition) as i64;
                let blob = e.embedding.as_deref().map(vec_to_blob);
                tx.exec_drop(
                    "INSERT INTO entries (tenant, part, tag, exact_hash, endpoint, model, key_text, params, answer, embedding, created_at, expires_at, used_at, origin)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE
                        answer = VALUES(answer), params = VALUES(params), embedding = VALUES(embedding),
                        created_at = VALUES(created_at), expires_at = VALUES(expires_at),
                        used_at = COALESCE(last_hit_at, VALUES(created_at)), origin = VALUES(origin)",
                    args![
                        e.tenant.as_str(),
                        e.partition.as_str(),
                        tag,
                        e.exact_hash.as_str(),
                        e.endpoint.as_str(),
                        e.model.as_str(),
                        e.text.as_str(),
                        e.params.as_str(),
                        e.answer.as_str(),
                        blob,
                        e.created_at,
                        e.expires_at,
                        e.created_at,
                        e.origin.as_str(),
                    ],
                )
                .await?;
                // NOTE: read back by the unique key rather than trusting
                // LAST_INSERT_ID, which an upsert that updated leaves
                // unset on some servers.
                let id: Option<i64> = tx
                    .exec_first(
                        "SELECT id FROM entries WHERE tenant = ? AND exact_hash = ?",
                        (e.tenant.as_str(), e.exact_hash.as_str()),
                    )
                    .await?;
                let id = id.ok_or_else(|| StoreError::Mysql("an upserted entry is gone".into()))?;
                tx.exec_drop(
                    "INSERT INTO change_log (tenant, entry_id, exact_hash, op, at_ms) VALUES (?, ?, ?, 'insert', ?)",
                    (e.tenant.as_str(), id, e.exact_hash.as_str(), e.created_at),
                )
                .await?;
                ids.push(id);
            }
            tx.commit().await?;
            Ok(ids)
        })
    }

    fn get(&self, id: i64) -> Result<Option<Entry>, StoreError> {
        self.call(|mut c| async move {
            let row: Option<Row> = c
                .exec_first(format!("SELECT {COLUMNS} FROM entries WHERE id = ?"), (id,))
                .await?;
            row.map(|mut r| row_to_entry(&mut r)).transpose()
        })
    }

    fn get_exact(&self, tenant: &str, exact_hash: &str) -> Result<Option<Entry>, StoreError> {
        self.call(|mut c| async move {
            let row: Option<Row> = c
                .exec_first(
                    format!("SELECT {COLUMNS} FROM entries WHERE tenant = ? AND exact_hash = ?"),
                    (tenant, exact_hash),
                )
                .await?;
            row.map(|mut r| row_to_entry(&mut r)).transpose()
        })
    }

    fn index_rows(&self, tenant: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        self.call(|mut c| async move {
            let rows: Vec<(i64, i64)> = c
                .exec(
                    "SELECT id, tag FROM entries WHERE tenant = ? AND embedding IS NOT NULL",
                    (tenant,),
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, tag)| (id as u64, tag as u64))
                .collect())
        })
    }

    fn embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError> {
        self.call(|mut c| async move {
            let v: Option<Option<Vec<u8>>> = c
                .exec_first("SELECT embedding FROM entries WHERE id = ?", (id,))
                .await?;
            Ok(v.flatten().map(|b| blob_to_vec(&b)))
        })
    }

    fn get_with_embedding(&self, id: i64) -> Result<Option<super::WithEmbedding>, StoreError> {
        self.call(|mut c| async move {
            let row: Option<Row> = c
                .exec_first(
                    format!("SELECT {COLUMNS}, embedding FROM entries WHERE id = ?"),
                    (id,),
                )
                .await?;
            match row {
                None => Ok(None),
                Some(mut r) => {
                    let v = take::<Option<Vec<u8>>>(&mut r, 14)?.map(|b| blob_to_vec(&b));
                    Ok(Some((row_to_entry(&mut r)?, v)))
                }
            }
        })
    }

    fn store_id(&self) -> Result<String, StoreError> {
        Ok(self.id.clone())
    }

    fn embeddings(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<f32>)>, StoreError> {
        self.call(|mut c| async move {
            let mut out = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(CHUNK) {
                let rows: Vec<(i64, Vec<u8>)> = c
                    .exec(
                        format!(
                            "SELECT id, embedding FROM entries WHERE id IN ({}) AND embedding IS NOT NULL",
                            marks(chunk.len())
                        ),
                        Params::Positional(chunk.iter().map(|&i| Value::from(i)).collect()),
                    )
                    .await?;
                out.extend(rows.into_iter().map(|(id, b)| (id, blob_to_vec(&b))));
            }
            Ok(out)
        })
    }

    fn sweep(&self, now_ms: i64, limits: &Limits) -> Result<Vec<Removed>, StoreError> {
        let keep_changes = self.keep_changes;
        self.call(|mut c| async move {
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.query_drop(CHANGE_LOCK).await?;
            let mut removed = select_removed(
                &mut tx,
                "SELECT tenant, id, exact_hash FROM entries WHERE expires_at <= ? ORDER BY id FOR UPDATE",
                args![now_ms],
            )
            .await?;
            remove_rows(&mut tx, &removed, "expire", now_ms).await?;
            let counts: Vec<(String, i64)> = tx
                .exec("SELECT tenant, COUNT(*) FROM entries GROUP BY tenant", ())
                .await?;
            for (tenant, count) in counts {
                let over = count - limits.of(&tenant).min(i64::MAX as u64) as i64;
                if over <= 0 {
                    continue;
                }
                let evicted = select_removed(
                    &mut tx,
                    "SELECT tenant, id, exact_hash FROM entries WHERE tenant = ?
                     ORDER BY used_at, id LIMIT ? FOR UPDATE",
                    args![tenant.as_str(), over],
                )
                .await?;
                remove_rows(&mut tx, &evicted, "evict", now_ms).await?;
                removed.extend(evicted);
            }
            let newest_hit: Option<i64> = tx
                .exec_first("SELECT CAST(COALESCE(MAX(id), 0) AS SIGNED) FROM hit_log", ())
                .await?;
            tx.exec_drop(
                "DELETE FROM hit_log WHERE id <= ?",
                (newest_hit.unwrap_or(0) - HIT_LOG_KEEP,),
            )
            .await?;
            let newest: Option<i64> = tx
                .exec_first("SELECT CAST(COALESCE(MAX(id), 0) AS SIGNED) FROM change_log", ())
                .await?;
            let cut = newest.unwrap_or(0) - keep_changes;
            let gone: Option<Option<i64>> = tx
                .exec_first("SELECT MAX(id) FROM change_log WHERE id <= ?", (cut,))
                .await?;
            if let Some(gone) = gone.flatten() {
                tx.exec_drop("DELETE FROM change_log WHERE id <= ?", (gone,))
                    .await?;
                tx.exec_drop(
                    "UPDATE change_log_floor SET up_to = GREATEST(up_to, ?) WHERE one = 1",
                    (gone,),
                )
                .await?;
            }
            tx.query_drop(
                "DELETE n FROM entry_negatives n LEFT JOIN entries e ON e.id = n.entry_id WHERE e.id IS NULL",
            )
            .await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    fn delete(&self, tenant: &str, ids: &[i64]) -> Result<Vec<Removed>, StoreError> {
        self.call(|mut c| async move {
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.query_drop(CHANGE_LOCK).await?;
            let mut removed = Vec::new();
            for chunk in ids.chunks(CHUNK) {
                let mut params = vec![Value::from(tenant)];
                params.extend(chunk.iter().map(|&i| Value::from(i)));
                removed.extend(
                    select_removed(
                        &mut tx,
                        &format!(
                            "SELECT tenant, id, exact_hash FROM entries WHERE tenant = ? AND id IN ({}) ORDER BY id FOR UPDATE",
                            marks(chunk.len())
                        ),
                        Params::Positional(params),
                    )
                    .await?,
                );
            }
            remove_rows(&mut tx, &removed, "delete", now()).await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    fn truncate(&self, tenant: &str, model: Option<&str>) -> Result<Vec<Removed>, StoreError> {
        self.call(|mut c| async move {
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.query_drop(CHANGE_LOCK).await?;
            let removed = select_removed(
                &mut tx,
                "SELECT tenant, id, exact_hash FROM entries WHERE tenant = ? AND (? IS NULL OR model = ?)
                 ORDER BY id FOR UPDATE",
                args![tenant, model, model],
            )
            .await?;
            remove_rows(&mut tx, &removed, "truncate", now()).await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<Entry>, StoreError> {
        let limit = q.limit.min(i64::MAX as usize) as i64;
        self.call(|mut c| async move {
            let (t, m, x) = (q.tenant.as_deref(), q.model.as_deref(), q.text.as_deref());
            let rows: Vec<Row> = c
                .exec(
                    format!(
                        "SELECT {COLUMNS} FROM entries
                         WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR model = ?)
                           AND (? IS NULL OR LOCATE(LOWER(?), LOWER(key_text)) > 0)
                           AND (? IS NULL OR id < ?)
                         ORDER BY id DESC LIMIT ?"
                    ),
                    args![t, t, m, m, x, x, q.before_id, q.before_id, limit],
                )
                .await?;
            rows_to(rows, row_to_entry)
        })
    }

    fn register_model(&self, tenant: &str, model: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.call(|mut c| async move {
            // NOTE: not INSERT IGNORE, which would also store a model name
            // cut to its column's length; a duplicate is the one error
            // that means "recorded before".
            let inserted = c
                .exec_drop(
                    "INSERT INTO registered_models (tenant, model, created_at) VALUES (?, ?, ?)",
                    (tenant, model, now_ms),
                )
                .await;
            match inserted {
                Ok(()) => Ok(true),
                Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_ENTRY => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn record_verified_key(
        &self,
        tenant: &str,
        key_hash: &[u8; 32],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            c.exec_drop(
                "INSERT INTO verified_keys (tenant, key_hash, verified_at) VALUES (?, ?, ?)
                 ON DUPLICATE KEY UPDATE verified_at = GREATEST(verified_at, VALUES(verified_at))",
                (tenant, key_hash.to_vec(), at_ms),
            )
            .await?;
            Ok(())
        })
    }

    fn verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<Option<i64>, StoreError> {
        self.call(|mut c| async move {
            Ok(c.exec_first(
                "SELECT verified_at FROM verified_keys WHERE tenant = ? AND key_hash = ?",
                (tenant, key_hash.to_vec()),
            )
            .await?)
        })
    }

    fn revoke_verified_key(&self, tenant: &str, key_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            c.exec_drop(
                "DELETE FROM verified_keys WHERE tenant = ? AND key_hash = ?",
                (tenant, key_hash.to_vec()),
            )
            .await?;
            Ok(())
        })
    }

    fn stats(&self) -> Result<Vec<TenantStats>, StoreError> {
        self.call(|mut c| async move {
            let rows: Vec<(String, i64, i64)> = c
                .exec(
                    "SELECT tenant, COUNT(*), CAST(COALESCE(SUM(hits), 0) AS SIGNED) FROM entries
                     GROUP BY tenant ORDER BY tenant",
                    (),
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|(tenant, entries, hits)| TenantStats {
                    tenant,
                    entries: entries as u64,
                    hits: hits as u64,
                })
                .collect())
        })
    }

    fn counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.call(|mut c| async move {
            let rows: Vec<(String, i64)> = c
                .exec(
                    "SELECT tenant, COUNT(*) FROM entries GROUP BY tenant ORDER BY tenant",
                    (),
                )
                .await?;
            Ok(rows.into_iter().map(|(t, n)| (t, n as u64)).collect())
        })
    }
}

impl HitLog for MySqlStore {
    fn record_hits(&self, hits: &[HitRecord]) -> Result<(), StoreError> {
        if hits.is_empty() {
            return Ok(());
        }
        self.call(|mut c| async move {
            // NOTE: one update of the entries hit (each by its count) and
            // one insert of the hit log's rows per chunk of the batch,
            // whatever its size.
            let totals = super::hit_totals(hits);
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.query_drop(CHANGE_LOCK).await?;
            for chunk in totals.chunks(CHUNK) {
                let mut values = Vec::with_capacity(chunk.len() * 4);
                for t in chunk {
                    values.extend([
                        Value::from(t.entry_id),
                        Value::from(t.tenant),
                        Value::from(t.count),
                        Value::from(t.last_at),
                    ]);
                }
                let rows = std::iter::once("SELECT ? AS id, ? AS tenant, ? AS n, ? AS at_ms")
                    .chain(std::iter::repeat_n("SELECT ?, ?, ?, ?", chunk.len() - 1))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ");
                tx.exec_drop(
                    format!(
                        "UPDATE entries e JOIN ({rows}) u ON e.id = u.id AND e.tenant = u.tenant
                         SET e.hits = e.hits + u.n,
                             e.last_hit_at = GREATEST(COALESCE(e.last_hit_at, 0), u.at_ms),
                             e.used_at = GREATEST(COALESCE(e.last_hit_at, 0), u.at_ms)"
                    ),
                    Params::Positional(values),
                )
                .await?;
            }
            for chunk in hits.chunks(CHUNK) {
                let mut values = Vec::with_capacity(chunk.len() * 6);
                for h in chunk {
                    values.extend([
                        Value::from(h.tenant.as_str()),
                        Value::from(h.entry_id),
                        Value::from(h.probe.as_str()),
                        Value::from(h.similarity),
                        Value::from(h.at),
                        Value::from(h.request_id.as_str()),
                    ]);
                }
                tx.exec_drop(
                    format!(
                        "INSERT INTO hit_log (tenant, entry_id, probe, similarity, at_ms, request_id) VALUES {}",
                        vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
                    ),
                    Params::Positional(values),
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn hit_log(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<HitLogRow>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.call(|mut c| async move {
            let rows: Vec<Row> = c
                .exec(
                    format!("{HIT_COLUMNS} WHERE (? IS NULL OR h.tenant = ?) ORDER BY h.id DESC LIMIT ?"),
                    args![tenant, tenant, limit],
                )
                .await?;
            rows_to(rows, row_to_hit)
        })
    }

    fn hit_by_request(&self, request_id: &str) -> Result<Option<HitLogRow>, StoreError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        self.call(|mut c| async move {
            let row: Option<Row> = c
                .exec_first(
                    format!("{HIT_COLUMNS} WHERE h.request_id = ? ORDER BY h.id DESC LIMIT 1"),
                    (request_id,),
                )
                .await?;
            row.map(|mut r| row_to_hit(&mut r)).transpose()
        })
    }
}

const NEGATIVE_COLUMNS: &str = "SELECT n.entry_id, n.tenant, n.probe, n.embedding, n.at_ms
     FROM entry_negatives n JOIN entries e ON e.id = n.entry_id AND e.tenant = n.tenant";

impl Negatives for MySqlStore {
    fn add_negative(&self, n: &Negative) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.query_drop(CHANGE_LOCK).await?;
            tx.exec_drop(
                "INSERT INTO entry_negatives (entry_id, tenant, probe, embedding, at_ms) VALUES (?, ?, ?, ?, ?)",
                (
                    n.entry_id,
                    n.tenant.as_str(),
                    n.probe.as_str(),
                    vec_to_blob(&n.embedding),
                    n.at,
                ),
            )
            .await?;
            // NOTE: other replicas reload this entry's negatives when they
            // read the change; the exact hash is not needed for that.
            tx.exec_drop(
                "INSERT INTO change_log (tenant, entry_id, exact_hash, op, at_ms) VALUES (?, ?, '', 'negative', ?)",
                (n.tenant.as_str(), n.entry_id, n.at),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn negatives(&self) -> Result<Vec<Negative>, StoreError> {
        self.call(|mut c| async move {
            let rows: Vec<Row> = c
                .exec(format!("{NEGATIVE_COLUMNS} ORDER BY n.id"), ())
                .await?;
            rows_to(rows, row_to_negative)
        })
    }

    fn negatives_of(&self, entry_id: i64) -> Result<Vec<Negative>, StoreError> {
        self.call(|mut c| async move {
            let rows: Vec<Row> = c
                .exec(
                    format!("{NEGATIVE_COLUMNS} WHERE n.entry_id = ? ORDER BY n.id"),
                    (entry_id,),
                )
                .await?;
            rows_to(rows, row_to_negative)
        })
    }
}

impl ChangeLog for MySqlStore {
    fn last_change(&self) -> Result<i64, StoreError> {
        MySqlStore::last_change(self)
    }

    fn change_log_floor(&self) -> Result<i64, StoreError> {
        self.call(|mut c| async move {
            let up_to: Option<i64> = c
                .exec_first("SELECT up_to FROM change_log_floor WHERE one = 1", ())
                .await?;
            Ok(up_to.unwrap_or(0))
        })
    }

    fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.call(|mut c| async move {
            let rows: Vec<(i64, String, i64, String, String)> = c
                .exec(
                    "SELECT id, tenant, entry_id, exact_hash, op FROM change_log WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit),
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, tenant, entry_id, exact_hash, op)| Change {
                    id,
                    tenant,
                    entry_id,
                    exact_hash,
                    kind: match op.as_str() {
                        "insert" => ChangeKind::Insert,
                        "negative" => ChangeKind::Negative,
                        _ => ChangeKind::Remove,
                    },
                })
                .collect())
        })
    }

    /// MySQL cannot notify: the follower reads the log every poll interval.
    fn wait_for_change(&self, _timeout: Duration) -> bool {
        std::thread::sleep(self.poll);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test database (`scripts/mariadb-up.sh` prints it; `make test` and
    /// `.ci/run` set it).
    pub(crate) fn url() -> String {
        std::env::var("MODELCACHE_TEST_MYSQL_URL").expect(
            "MODELCACHE_TEST_MYSQL_URL is not set: run `make test`, which starts MariaDB with scripts/mariadb-up.sh",
        )
    }

    pub(crate) fn fresh_database() -> String {
        format!("mctest_{:016x}", rand::random::<u64>())
    }

    crate::store::store_suite!(|| MySqlStore::open(&url(), 2, Some(&fresh_database())).unwrap());

    #[test]
    fn migrations_apply_once_and_changes_are_logged() {
        let db = fresh_database();
        let s = MySqlStore::open(&url(), 1, Some(&db)).unwrap();
        let before = crate::store::suite::a_change_log_logs_each_kind_in_order(&s);
        // A second open of the same database applies nothing again and
        // finds the same store id; another database is another store.
        let again = MySqlStore::open(&url(), 1, Some(&db)).unwrap();
        assert_eq!(again.last_change().unwrap(), before + 4);
        let applied = again
            .call(|mut c| async move {
                let n: Option<i64> = c
                    .exec_first("SELECT COUNT(*) FROM schema_migrations", ())
                    .await?;
                Ok(n)
            })
            .unwrap();
        assert_eq!(applied, Some(MIGRATIONS.len() as i64));
        assert_eq!(again.store_id().unwrap(), s.store_id().unwrap());
        let other = MySqlStore::open(&url(), 1, Some(&fresh_database())).unwrap();
        assert_ne!(other.store_id().unwrap(), s.store_id().unwrap());
    }

    #[test]
    fn replicas_opening_together_migrate_once() {
        let db = fresh_database();
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let db = db.clone();
                std::thread::spawn(move || {
                    MySqlStore::open(&url(), 1, Some(&db)).map(|s| s.id.clone())
                })
            })
            .collect();
        let ids: Vec<String> = opened
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn refused_data_is_told_from_an_unreachable_database() {
        let s = MySqlStore::open(&url(), 1, Some(&fresh_database())).unwrap();
        // A model name over its column is refused (strict mode), not cut
        // short and stored.
        let long = "m".repeat(600);
        let refused = s.register_model("t", &long, 1);
        assert!(
            matches!(refused, Err(StoreError::Rejected(_))),
            "{refused:?}"
        );
        let away = MySqlStore::open("mysql://nobody:x@127.0.0.1:1/none", 1, None);
        assert!(
            matches!(away, Err(StoreError::Mysql(_))),
            "{:?}",
            away.err()
        );
        // Text the way requests carry it: NUL, emoji, CJK, kept exactly.
        let mut e = crate::store::suite::entry("a", "odd", 1, 1000);
        e.text = "user###a\0b 🦀 上传文件".into();
        let ids = s.insert_batch(&[e.clone()]).unwrap();
        assert_eq!(s.get(ids[0]).unwrap().unwrap().text, e.text);
    }

    #[test]
    fn identities_compare_byte_for_byte() {
        let s = MySqlStore::open(&url(), 1, Some(&fresh_database())).unwrap();
        // A case- or space-folding collation would make these one entry,
        // or one tenant read another's.
        s.insert_batch(&[
            crate::store::suite::entry("a", "h", 1, 1000),
            crate::store::suite::entry("A", "h", 1, 1000),
            crate::store::suite::entry("a", "H", 1, 1000),
            crate::store::suite::entry("a", "h ", 1, 1000),
        ])
        .unwrap();
        assert_eq!(
            s.counts().unwrap(),
            vec![("A".to_string(), 1), ("a".to_string(), 3)]
        );
        assert!(s.get_exact("b", "h").unwrap().is_none());
        let mut m = crate::store::suite::entry("a", "x", 1, 1000);
        m.model = "gpt".into();
        s.insert_batch(&[m]).unwrap();
        assert!(s.truncate("a", Some("GPT")).unwrap().is_empty());
        assert!(s.truncate("a", Some("gpt ")).unwrap().is_empty());
        assert_eq!(s.truncate("a", Some("gpt")).unwrap().len(), 1);
    }

    #[test]
    fn the_sweep_trims_the_change_log_and_records_the_floor() {
        let s = MySqlStore::open(&url(), 1, Some(&fresh_database()))
            .unwrap()
            .keep_changes(2);
        crate::store::suite::a_trimmed_change_log_records_its_floor(&s);
    }

    #[test]
    fn big_batches_are_written_in_chunks() {
        let s = MySqlStore::open(&url(), 1, Some(&fresh_database())).unwrap();
        let entries: Vec<NewEntry> = (0..(CHUNK + 7))
            .map(|i| crate::store::suite::entry("a", &format!("h{i}"), 1000, 1000))
            .collect();
        let ids = s.insert_batch(&entries).unwrap();
        let hits: Vec<HitRecord> = ids
            .iter()
            .map(|&id| HitRecord {
                entry_id: id,
                tenant: "a".into(),
                probe: "p".into(),
                similarity: 1.0,
                at: 1500,
                request_id: String::new(),
            })
            .collect();
        s.record_hits(&hits).unwrap();
        assert_eq!(s.stats().unwrap()[0].hits, ids.len() as u64);
        assert_eq!(s.embeddings(&ids).unwrap().len(), ids.len());
        assert_eq!(s.delete("a", &ids).unwrap().len(), ids.len());
        assert!(s.counts().unwrap().is_empty());
    }
}
