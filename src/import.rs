//! `modelcache import --from-modelcache mysql://…`: moves the answers of a
//! ModelCache MySQL database into a tenant of ours.
//!
//! Owns reading ModelCache's `modelcache_llm_answer` table, parsing its
//! `question` column (ModelCache's `role###content|||…` text, a JSON message
//! list, or the bare question of the oldest versions), and the summary of
//! what was imported and skipped. Each answer is written as the ModelCache
//! API's `insert` writes it (the same key, re-embedded with our model), so a
//! ModelCache client, or a chat request for the same model, finds it. It
//! must never write anything but whole rows, and never stop on one bad row.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use crate::{
    admin::{api_entry, api_key},
    cache::Cache,
    config::{Policy, Settings},
    store::NewEntry,
};

/// ModelCache's answer table.
const TABLE: &str = "modelcache_llm_answer";

/// Rows read per query, and written per batch.
const PAGE: usize = 256;

/// The roles a `role###content` segment may name; a question whose
/// segments name anything else is the bare text of one question.
const ROLES: [&str; 6] = [
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "function",
];

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows read from ModelCache.
    pub read: usize,
    /// Answers written.
    pub imported: usize,
    /// Rows written over an earlier row of the same question and model (the
    /// later answer is kept), counted in `imported` too.
    pub replaced: usize,
    /// Rows not written, by reason.
    pub skipped: BTreeMap<String, usize>,
}

impl Summary {
    /// Rows not written.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    fn skip(&mut self, why: &str) {
        *self.skipped.entry(why.to_string()).or_default() += 1;
    }

    /// The summary as the command prints it.
    pub fn report(&self, tenant: &str) -> String {
        let mut out = format!(
            "read {} ModelCache rows; imported {} answers into tenant {tenant}",
            self.read, self.imported
        );
        if self.replaced > 0 {
            out += &format!(
                " ({} repeated an earlier row's question and model: the later answer was kept)",
                self.replaced
            );
        }
        out += &format!("; skipped {}", self.skipped_total());
        for (why, n) in &self.skipped {
            out += &format!("\n  skipped {n}: {why}");
        }
        out
    }
}

/// The messages of a ModelCache `question` value.
pub fn parse_question(q: &str) -> Result<Vec<Value>, &'static str> {
    let t = q.trim();
    if t.is_empty() {
        return Err("empty question");
    }
    if t.starts_with('[') {
        let Ok(list) = serde_json::from_str::<Vec<Value>>(t) else {
            return Err("question starts like a JSON list but is not one");
        };
        if list.is_empty() {
            return Err("empty message list");
        }
        for m in &list {
            let role = m.get("role").and_then(Value::as_str);
            if role.is_none() || m.get("content").is_none() {
                return Err("a message of the JSON list has no role or content");
            }
        }
        return Ok(list);
    }
    let segments: Vec<(&str, &str)> = q
        .split("|||")
        .map(|s| s.split_once("###").unwrap_or(("", s)))
        .collect();
    if segments.iter().all(|(role, _)| ROLES.contains(role)) {
        return Ok(segments
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect());
    }
    // NOTE: the oldest versions stored the question alone.
    Ok(vec![json!({"role": "user", "content": q})])
}

/// One row of ModelCache's table.
struct Row {
    id: u64,
    question: Result<String, ()>,
    answer: Result<String, ()>,
    model: Result<String, ()>,
}

fn text(v: Option<Vec<u8>>) -> Result<String, ()> {
    v.and_then(|b| String::from_utf8(b).ok()).ok_or(())
}

/// The source database.
struct Source {
    conn: mysql_async::Conn,
    /// Whether the table has ModelCache's `is_deleted` flag (later versions).
    soft_deletes: bool,
}

impl Source {
    async fn open(url: &str) -> Result<Source, String> {
        let opts = mysql_async::Opts::from_url(url).map_err(|e| format!("{url}: {e}"))?;
        let mut conn = tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
            .await
            .map_err(|_| "the ModelCache database did not answer within 10 s".to_string())?
            .map_err(|e| format!("connecting to the ModelCache database: {e}"))?;
        let columns: Vec<String> = conn
            .exec(
                "SELECT column_name FROM information_schema.columns
                 WHERE table_schema = DATABASE() AND table_name = ?",
                (TABLE,),
            )
            .await
            .map_err(|e| format!("reading {TABLE}'s columns: {e}"))?;
        if columns.is_empty() {
            return Err(format!(
                "the database has no table {TABLE} (is this ModelCache's database?)"
            ));
        }
        for need in ["id", "question", "answer", "model"] {
            if !columns.iter().any(|c| c.eq_ignore_ascii_case(need)) {
                return Err(format!("{TABLE} has no column {need}"));
            }
        }
        let soft_deletes = columns.iter().any(|c| c.eq_ignore_ascii_case("is_deleted"));
        Ok(Source { conn, soft_deletes })
    }

    /// Rows to read, and of them those ModelCache marked deleted.
    async fn counts(&mut self) -> Result<(usize, usize), String> {
        let all: Option<u64> = self
            .conn
            .query_first(format!("SELECT COUNT(*) FROM {TABLE}"))
            .await
            .map_err(|e| e.to_string())?;
        let deleted: Option<u64> = if self.soft_deletes {
            self.conn
                .query_first(format!(
                    "SELECT COUNT(*) FROM {TABLE} WHERE is_deleted <> 0"
                ))
                .await
                .map_err(|e| e.to_string())?
        } else {
            Some(0)
        };
        Ok((all.unwrap_or(0) as usize, deleted.unwrap_or(0) as usize))
    }

    /// The next rows after `after`, by id.
    async fn page(&mut self, after: u64) -> Result<Vec<Row>, String> {
        let live = if self.soft_deletes {
            "AND is_deleted = 0"
        } else {
            ""
        };
        type Raw = (u64, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
        let rows: Vec<Raw> = self
            .conn
            .exec(
                format!(
                    "SELECT id, question, answer, model FROM {TABLE}
                     WHERE id > ? {live} ORDER BY id LIMIT {PAGE}"
                ),
                (after,),
            )
            .await
            .map_err(|e| format!("reading {TABLE}: {e}"))?;
        Ok(rows
            .into_iter()
            .map(|(id, q, a, m)| Row {
                id,
                question: text(q),
                answer: text(a),
                model: text(m),
            })
            .collect())
    }
}

/// A progress line on stderr: redrawn in place on a terminal, else printed
/// at every tenth of the way.
struct Progress {
    total: usize,
    tty: bool,
    shown: Instant,
    tenth: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            shown: Instant::now(),
            tenth: 0,
        }
    }

    fn show(&mut self, done: usize, s: &Summary, last: bool) {
        let total = self.total.max(1);
        let line = {
            let width = 30;
            let full = (done * width / total).min(width);
            format!(
                "[{}{}] {done}/{} rows, {} imported, {} skipped",
                "#".repeat(full),
                ".".repeat(width - full),
                self.total,
                s.imported,
                s.skipped_total()
            )
        };
        let mut err = std::io::stderr();
        if self.tty {
            if last || self.shown.elapsed() >= Duration::from_millis(100) {
                let _ = write!(err, "\r{line}");
                if last {
                    let _ = writeln!(err);
                }
                let _ = err.flush();
                self.shown = Instant::now();
            }
        } else {
            let tenth = done * 10 / total;
            if last || tenth > self.tenth {
                self.tenth = tenth;
                let _ = writeln!(err, "{line}");
            }
        }
    }
}

/// Imports every row of the ModelCache database `src` into `tenant` (with
/// `policy`) of `cache`.
async fn run(
    cache: &Cache,
    tenant: &str,
    policy: &Policy,
    mut src: Source,
    embed_batch: usize,
) -> Result<Summary, String> {
    let (all, deleted) = src.counts().await?;
    let mut summary = Summary::default();
    if deleted > 0 {
        summary.skipped.insert(
            "marked deleted in ModelCache (is_deleted)".to_string(),
            deleted,
        );
    }
    let mut progress = Progress::new(all);
    let mut seen: HashSet<String> = HashSet::new();
    let mut after = 0u64;
    loop {
        let rows = src.page(after).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        summary.read += rows.len();
        let mut keyed = Vec::with_capacity(rows.len());
        for r in rows {
            let (Ok(question), Ok(answer), Ok(model)) = (r.question, r.answer, r.model) else {
                summary.skip("question, answer or model is NULL or not UTF-8");
                continue;
            };
            if answer.trim().is_empty() {
                summary.skip("empty answer");
                continue;
            }
            let msgs = match parse_question(&question) {
                Ok(m) => m,
                Err(why) => {
                    summary.skip(why);
                    continue;
                }
            };
            let key = match api_key(policy, &model, &msgs, None) {
                Ok(k) => k,
                Err(e) => {
                    summary.skip(&format!("not a cacheable request: {e}"));
                    continue;
                }
            };
            if !seen.insert(key.exact_hash.clone()) {
                summary.replaced += 1;
            }
            keyed.push((key, answer, model));
        }
        let texts: Vec<String> = keyed
            .iter()
            .filter(|(k, _, _)| k.semantic)
            .map(|(k, _, _)| k.embed_text.clone())
            .collect();
        let mut vectors = cache
            .embed_many(&texts, embed_batch)
            .await
            .map_err(|e| {
                format!("embedding failed, the rows after id {after} were not imported: {e}")
            })?
            .into_iter();
        let now = crate::clock::now_ms();
        let entries: Vec<NewEntry> = keyed
            .iter()
            .map(|(k, answer, model)| {
                let embedding = if k.semantic { vectors.next() } else { None };
                api_entry(tenant, policy, k, model, answer, embedding, now)
            })
            .collect();
        let n = entries.len();
        if n > 0 {
            cache.insert_now(entries).await.map_err(|e| {
                format!("the store failed, the rows after id {after} were not imported: {e}")
            })?;
        }
        summary.imported += n;
        progress.show(summary.read + deleted, &summary, false);
    }
    progress.show(summary.read + deleted, &summary, true);
    Ok(summary)
}

/// Opens the ModelCache database at `url`, then the configured store and
/// embedding model; imports; closes (which saves the vector index).
/// Blocking parts run off the runtime.
pub async fn import(
    settings: Arc<Settings>,
    tenant: String,
    url: String,
) -> Result<Summary, String> {
    let src = Source::open(&url).await?;
    let t = settings
        .tenants
        .iter()
        .find(|t| t.name == tenant)
        .ok_or_else(|| format!("no tenant {tenant:?} in the config"))?
        .clone();
    if t.policy.mode == crate::config::CacheMode::Off {
        return Err(format!(
            "tenant {tenant} has caching off (cache mode off): nothing would serve the answers"
        ));
    }
    let s = settings.clone();
    let cache = tokio::task::spawn_blocking(move || -> Result<Cache, String> {
        let store = crate::store::open(&s.storage).map_err(|e| format!("{e:#}"))?;
        let factory = crate::embed::configured(&s.embedding);
        let service = crate::embed::EmbedService::start(
            factory,
            crate::embed::EmbedLimits::of(&s.embedding),
            None,
        )
        .map_err(|e| e.to_string())?;
        let place = crate::cache::IndexPlace::configured(
            &s.index,
            Some(s.storage.data_dir.join("index")),
            s.storage.index_quantization,
            service.dims(),
        )
        .map_err(|e| e.to_string())?;
        Cache::open(
            s.cache.clone(),
            store,
            service,
            Arc::new(crate::metrics::Metrics::new().map_err(|e| e.to_string())?),
            place,
            &s.tenants.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let cache = Arc::new(cache);
    let result = run(
        &cache,
        &t.name,
        &t.policy,
        src,
        settings.embedding.max_batch.max(1),
    )
    .await;
    cache.flush(Duration::from_secs(30)).await;
    let c = cache.clone();
    let _ = tokio::task::spawn_blocking(move || c.close()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_in_every_format_modelcache_wrote() {
        let m = |r: &str, c: &str| json!({"role": r, "content": c});
        assert_eq!(
            parse_question("user###How do I sort a list?").unwrap(),
            vec![m("user", "How do I sort a list?")]
        );
        assert_eq!(
            parse_question("system###Be brief.|||user###hi|||assistant###hello|||user###bye")
                .unwrap(),
            vec![
                m("system", "Be brief."),
                m("user", "hi"),
                m("assistant", "hello"),
                m("user", "bye")
            ]
        );
        assert_eq!(
            parse_question(r#"[{"role": "user", "content": "What is Rust?"}]"#).unwrap(),
            vec![m("user", "What is Rust?")]
        );
        // The bare question of the oldest versions, even with a markdown
        // heading that looks like a separator.
        assert_eq!(
            parse_question("What is a monad?").unwrap(),
            vec![m("user", "What is a monad?")]
        );
        assert_eq!(
            parse_question("### Title\nExplain ### in markdown").unwrap(),
            vec![m("user", "### Title\nExplain ### in markdown")]
        );
        assert!(parse_question("  ").is_err());
        assert!(parse_question("[not json").is_err());
        assert!(parse_question("[]").is_err());
        assert!(parse_question(r#"[{"content": "no role"}]"#).is_err());
    }

    #[test]
    fn the_summary_says_what_was_skipped_and_why() {
        let mut s = Summary {
            read: 5,
            imported: 3,
            replaced: 1,
            ..Summary::default()
        };
        s.skip("empty answer");
        s.skip("empty answer");
        let r = s.report("default");
        assert!(r.starts_with("read 5 ModelCache rows; imported 3 answers into tenant default"));
        assert!(r.contains("1 repeated an earlier row's question and model"));
        assert!(r.contains("skipped 2\n  skipped 2: empty answer"), "{r}");
    }
}
