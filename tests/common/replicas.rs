//! The replica tests every shared store passes (PostgreSQL, MySQL, and
//! PostgreSQL with the vectors in Milvus): two
//! gateways on one database see each other's writes, deletes, flushes and
//! reported wrong answers within a second; a replica killed and restarted
//! catches up; the database stopped, or hung, mid-traffic leaves every
//! request succeeding and writes resuming by themselves. Each backend's test
//! file runs them with its [`Db`]: `tests/postgres.rs`, `tests/mysql.rs`,
//! `tests/milvus.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// A shared database the tests run against, started by `make test`.
pub struct Db {
    /// `[storage] backend`.
    pub backend: &'static str,
    /// The variable holding its URL (`make test` and `.ci/run` set it).
    pub url_var: &'static str,
    /// Prefix of the schemas (PostgreSQL) or databases (MySQL) the tests
    /// make, one per test (the test user may create those).
    pub prefix: &'static str,
    /// Stops the server (an outage).
    pub stop: fn(),
    /// Starts it again (idempotent).
    pub start: fn(),
    /// Freezes (true) or thaws (false) every process of the server: a
    /// database that hangs rather than refuses.
    pub freeze: fn(bool),
    /// The vector index is a Milvus collection the replicas share (its URL
    /// in `MODELCACHE_TEST_MILVUS_URL`), not usearch in each one's memory.
    pub milvus: bool,
}

/// The variable holding the test Milvus's URL (`make test` sets it).
pub const MILVUS_URL_VAR: &str = "MODELCACHE_TEST_MILVUS_URL";

impl Db {
    /// The test database's URL.
    pub fn url(&self) -> String {
        std::env::var(self.url_var).unwrap_or_else(|_| {
            panic!(
                "{} is not set: run `make test`, which starts the database (scripts/)",
                self.url_var
            )
        })
    }

    /// A fresh schema (or database) name.
    pub fn schema(&self, what: &str) -> String {
        format!("{}{what}_{:016x}", self.prefix, rand::random::<u64>())
    }

    /// `[storage]` on this database, in `schema`, and `[index]`.
    pub fn storage_toml(&self, schema: &str) -> String {
        format!(
            "[storage]\nbackend = \"{}\"\nurl_env = \"DB_URL\"\nschema = \"{schema}\"\n{}",
            self.backend,
            self.index_toml(schema)
        )
    }

    /// `[index]`: Milvus, in a collection named after `schema`, or nothing
    /// (usearch, the default).
    pub fn index_toml(&self, schema: &str) -> String {
        if self.milvus {
            format!("[index]\nbackend = \"milvus\"\nurl_env = \"MILVUS_URL\"\ncollection = \"mc_{schema}\"\n")
        } else {
            String::new()
        }
    }

    /// The environment the configuration reads: the database's URL, and
    /// Milvus's.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("DB_URL", self.url())];
        if self.milvus {
            let url = std::env::var(MILVUS_URL_VAR).unwrap_or_else(|_| {
                panic!("{MILVUS_URL_VAR} is not set: run `make test`, which starts Milvus (scripts/milvus-up.sh)")
            });
            env.push(("MILVUS_URL", url));
        }
        env
    }

    /// In-process settings on this database, the upstream at `up`.
    pub fn settings(
        &self,
        up: &Mock,
        dir: &std::path::Path,
        schema: &str,
    ) -> modelcache::config::Settings {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut s = settings_from(&self.storage_toml(schema), dir, &env);
        upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
        s
    }

    /// The shipped `config.toml` on this database (`schema`), for the binary.
    pub fn config_file(&self, dir: &std::path::Path, schema: &str) -> std::path::PathBuf {
        let shipped = std::fs::read_to_string(repo_root().join("config.toml")).unwrap();
        let line = "backend = \"sqlite\"";
        assert!(shipped.contains(line));
        let mut toml = shipped.replacen(
            line,
            &format!(
                "backend = \"{}\"\nurl_env = \"DB_URL\"\nschema = \"{schema}\"",
                self.backend
            ),
            1,
        );
        if self.milvus {
            let index = "[index]\nbackend = \"usearch\"\n";
            assert!(toml.contains(index), "config.toml has no [index] section");
            toml = toml.replacen(index, &self.index_toml(schema), 1);
        }
        let path = dir.join("config.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }
}

/// Runs a script of `scripts/` (a database's start or stop) and fails the
/// test if it fails.
pub fn script(name: &str, args: &[&str]) {
    let out = std::process::Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_ctlcluster` on the machine's (first) cluster.
pub fn pg_cluster(action: &str) {
    let list = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&list.stdout).to_string();
    let mut f = line.split_whitespace();
    let (ver, name) = (f.next().unwrap().to_string(), f.next().unwrap().to_string());
    let mut cmd = std::process::Command::new("pg_ctlcluster");
    cmd.args([ver.as_str(), name.as_str(), action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pg_ctlcluster {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends SIGSTOP (`on`) or SIGCONT to every process `pkill` selects with
/// `select` (e.g. `["-u", "postgres"]`).
pub fn signal_all(on: bool, select: &[&str]) {
    let out = std::process::Command::new("pkill")
        .arg(if on { "-STOP" } else { "-CONT" })
        .args(select)
        .output()
        .unwrap();
    assert!(out.status.success(), "pkill: {out:?}");
}

/// The tests of one file share one database server, and some stop it: they
/// take turns.
pub static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits (up to 1 s) until a dry-run lookup of `q` on `app` gives `verdict`;
/// returns how long it took.
pub async fn until_verdict(app: &modelcache::app::RunningApp, q: &str, verdict: &str) -> Duration {
    until_verdict_at(app.admin_addr, q, verdict, Duration::from_secs(1)).await
}

/// Waits until the dry run of `q` on the admin listener at `admin` gives
/// `verdict`, for at most `within`; returns how long it took.
pub async fn until_verdict_at(
    admin: std::net::SocketAddr,
    q: &str,
    verdict: &str,
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let v = dry_run(admin, q).await;
        if v["verdict"] == verdict {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{q}: still not {verdict} after {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn running_replicas_see_each_others_writes_and_deletes_within_a_second(db: &Db) {
    let _turn = TURN.lock().await;
    let (up, _dirs, a, b) = two_replicas(db, "rep").await;
    let calls = up.calls();
    // Cached through A: B serves it, exactly and by meaning, within 1 s.
    let q = "How far is the Moon from the Earth";
    assert_eq!(Call::ask(q).send(&a).await.cache(), "miss");
    let took = until_verdict(&b, "the Moon from the Earth: how far", "hit").await;
    eprintln!("a write on A became a hit on B after {took:?}");
    assert_eq!(Call::ask(q).send(&b).await.cache(), "hit");
    assert_eq!(
        Call::ask("the Moon from the Earth: how far")
            .send(&b)
            .await
            .cache(),
        "hit"
    );
    assert_eq!(up.calls(), calls + 1, "the upstream was called once, by A");
    // Deleted through B's admin API: A stops serving it within 1 s.
    let entry = Call::ask(q).send(&a).await.header("x-modelcache-entry");
    let got = admin(
        &b,
        "DELETE",
        &format!("/admin/entries/{entry}"),
        Value::Null,
    )
    .await;
    assert_eq!(got.status, 200);
    until_verdict(&a, q, "miss").await;
    // Flushed through A: B stops within 1 s.
    Call::ask("Name a prime number").send(&b).await;
    until_verdict(&a, "Name a prime number", "hit").await;
    let got = admin(&a, "POST", "/admin/flush", json!({"tenant": "default"})).await;
    assert_eq!(got.status, 200);
    until_verdict(&b, "Name a prime number", "miss").await;
    a.shutdown().await;
    b.shutdown().await;
}

pub async fn two_replicas_writing_the_same_question_make_one_entry(db: &Db) {
    let _turn = TURN.lock().await;
    let (_up, _dirs, a, b) = two_replicas(db, "dup").await;
    let q = ask("What is the tallest mountain on Earth?");
    let (x, y) = tokio::join!(
        Call::chat(q.clone()).send(&a),
        Call::chat(q.clone()).send(&b)
    );
    assert_eq!((x.status, y.status), (200, 200));
    settle(&a).await;
    settle(&b).await;
    let v = admin(&a, "GET", "/admin/entries?q=tallest", Value::Null)
        .await
        .json();
    assert_eq!(v["entries"].as_array().unwrap().len(), 1, "{v}");
    a.shutdown().await;
    b.shutdown().await;
}

pub async fn a_wrong_hit_reported_on_one_replica_stops_it_on_the_other(db: &Db) {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let (da, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let schema = db.schema("neg");
    // The hashing embedder's similarities are word overlaps: a low threshold
    // and no verifier let a near-duplicate hit (as in tests/feedback.rs).
    let loose = |dir: &std::path::Path| {
        let mut s = db.settings(&up, dir, &schema);
        policy(&mut s, |p| {
            p.threshold = 0.7;
            p.verifier.enabled = false;
        });
        s
    };
    let a = Gateway::new(loose(da.path())).start().await;
    let b = Gateway::new(loose(dir_b.path())).start().await;
    verify_key(&a, &[]).await;
    verify_key(&b, &[]).await;
    let q = "alpha beta gamma delta";
    Call::ask(q).send(&a).await;
    let probe = "alpha beta gamma delta epsilon";
    until_verdict(&a, probe, "hit").await;
    until_verdict(&b, probe, "hit").await;
    // B serves the probe, and its caller reports the answer wrong on B.
    let got = Call::ask(probe).send(&b).await;
    assert_eq!(got.cache(), "hit");
    let fb = admin(
        &b,
        "POST",
        "/admin/feedback",
        json!({
            "entry_id": got.header("x-modelcache-entry").parse::<i64>().unwrap(),
            "request_id": got.header("x-modelcache-request-id"),
            "correct": false,
        }),
    )
    .await;
    assert_eq!(fb.status, 200, "{}", fb.text());
    // A stops serving that neighbourhood within 1 s; the question itself
    // still hits on both.
    let took = until_verdict(&a, probe, "miss").await;
    eprintln!("a report on B reached A after {took:?}");
    until_verdict(&a, q, "hit").await;
    until_verdict(&b, probe, "miss").await;
    a.shutdown().await;
    b.shutdown().await;
}

pub async fn a_replica_killed_and_restarted_while_another_writes_serves_everything_written(
    db: &Db,
) {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let (da, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let schema = db.schema("kill");
    let config = db.config_file(da.path(), &schema);
    let url = up.url();
    let db_env = db.env();
    let mut env = vec![
        ("MODELCACHE_UPSTREAM_URL", url.as_str()),
        ("MODELCACHE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    env.extend(db_env.iter().map(|(k, v)| (*k, v.as_str())));
    let a = Binary::serve(&config, da.path()).envs(&env).start().await;
    let b = Binary::serve(&config, dir_b.path())
        .envs(&env)
        .start()
        .await;
    let question = |i: usize| format!("What is fact number {i} about the city of Lisbon?");
    for i in 0..3 {
        assert_eq!(Call::ask(&question(i)).send(&a).await.status, 200);
    }
    for i in 0..3 {
        until_verdict_at(b.admin, &question(i), "hit", Duration::from_secs(5)).await;
    }

    // B dies without a word; A keeps writing while B is down and while it
    // starts again.
    b.signal(libc::SIGKILL);
    let a_proxy = a.proxy;
    let writer = tokio::spawn(async move {
        for i in 3..40 {
            assert_eq!(Call::ask(&question(i)).send(a_proxy).await.status, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = Binary::serve(&config, dir_b.path())
        .envs(&env)
        .start()
        .await;
    writer.await.unwrap();
    // A fresh process proves the caller's key upstream once.
    verify_key(&b, &[]).await;
    let calls = up.calls();
    for i in 0..40 {
        until_verdict_at(a.admin, &question(i), "hit", Duration::from_secs(5)).await;
        until_verdict_at(b.admin, &question(i), "hit", Duration::from_secs(5)).await;
        let got = Call::ask(&question(i)).send(&b).await;
        assert_eq!(got.cache(), "hit", "question {i} on B");
        assert!(
            content_of(&got).ends_with(&format!("to: {}", question(i))),
            "B serves A's answer to question {i}"
        );
    }
    assert_eq!(up.calls(), calls, "B answered all forty from the cache");

    // A clean restart of B opens its index snapshot plus the change-log
    // tail (no rebuild): what A wrote and deleted meanwhile is in step.
    let log = b.stop().await;
    assert!(db.milvus || log.contains("vector index"), "{log}");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let h = [("authorization", auth.as_str())];
    let gone = Call::ask(&question(0))
        .send(&a)
        .await
        .header("x-modelcache-entry");
    let got = Call::new("DELETE", &format!("/admin/entries/{gone}"))
        .headers(&h)
        .send(a.admin)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        Call::ask("A new question about Porto")
            .send(&a)
            .await
            .status,
        200
    );
    until_verdict_at(
        a.admin,
        "A new question about Porto",
        "hit",
        Duration::from_secs(5),
    )
    .await;
    let b = Binary::serve(&config, dir_b.path())
        .envs(&env)
        .start()
        .await;
    until_verdict_at(
        b.admin,
        "A new question about Porto",
        "hit",
        Duration::from_secs(5),
    )
    .await;
    until_verdict_at(b.admin, &question(0), "miss", Duration::from_secs(5)).await;
    until_verdict_at(b.admin, &question(1), "hit", Duration::from_secs(5)).await;
    let log = b.stop().await;
    let opened = log
        .lines()
        .filter(|l| l.contains("vector index open"))
        .collect::<Vec<_>>()
        .join("\n");
    if db.milvus {
        // Nothing to open or rebuild: the vectors are Milvus's.
        assert!(opened.is_empty(), "no index of its own: {opened}");
    } else {
        assert!(
            opened.contains("rebuilt=false") && opened.contains("tail=2 "),
            "snapshot plus a tail of two changes: {opened}"
        );
    }
    a.stop().await;
}

/// The `llm()` mock and a gateway on a fresh schema (named from `what`),
/// the caller's key verified and `q` cached.
async fn one_cached(
    db: &Db,
    what: &str,
    q: &str,
) -> (Mock, tempfile::TempDir, modelcache::app::RunningApp) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = db.schema(what);
    let app = Gateway::new(db.settings(&up, dir.path(), &schema))
        .start()
        .await;
    verify_key(&app, &[]).await;
    Call::ask(q).send(&app).await;
    settle(&app).await;
    (up, dir, app)
}

pub async fn serving_goes_on_while_the_database_is_down_and_resumes_by_itself(db: &Db) {
    let _turn = TURN.lock().await;
    let (up, _dir, app) = one_cached(db, "down", "cached before the outage").await;
    assert_eq!(
        Call::ask("cached before the outage")
            .send(&app)
            .await
            .cache(),
        "hit"
    );

    (db.stop)();
    // Started again whatever happens below, so that no other test finds it down.
    struct Restart(fn());
    impl Drop for Restart {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let restart = Restart(db.start);
    // Every request succeeds: hits from memory, misses forwarded.
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(
            Call::ask("cached before the outage")
                .send(&app)
                .await
                .status,
        );
        statuses.push(
            Call::ask(&format!("asked during the outage {i}"))
                .send(&app)
                .await
                .status,
        );
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        Call::ask("cached before the outage")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    let m = metrics(&app).await;
    assert!(metric_sum(&m, "modelcache_writeback_total", &["outcome=\"failed\""]) >= 1.0);

    assert!(metric_sum(&m, "modelcache_writeback_deferred", &[]) >= 1.0);

    (db.start)();
    drop(restart);
    // What was asked during the outage waited in memory and is written now:
    // it hits, and the upstream is not asked again.
    let calls = up.calls();
    for i in 0..5 {
        let q = format!("asked during the outage {i}");
        assert!(
            stored(&app, &q).await,
            "{q}: not written after PostgreSQL came back"
        );
        assert_eq!(Call::ask(&q).send(&app).await.cache(), "hit");
    }
    assert_eq!(up.calls(), calls);
    // Writes resume by themselves (the store reconnects).
    let q = "asked after the outage";
    let mut stored = false;
    for _ in 0..50 {
        Call::ask(q).send(&app).await;
        settle(&app).await;
        if Call::ask(q).send(&app).await.cache() == "hit" {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "writes did not resume after PostgreSQL came back");
    app.shutdown().await;
}

/// Whether `q` hits on `app` (a dry run) within 5 s, settling writes between
/// tries: for answers written once the database is back.
pub async fn stored(app: &modelcache::app::RunningApp, q: &str) -> bool {
    for _ in 0..50 {
        settle(app).await;
        if dry_run(app, q).await["verdict"] == "hit" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn a_hung_database_turns_lookups_into_misses_and_nothing_stalls(db: &Db) {
    let _turn = TURN.lock().await;
    let (_up, _dir, app) = one_cached(db, "hung", "cached before the hang").await;
    assert_eq!(
        Call::ask("cached before the hang").send(&app).await.cache(),
        "hit"
    );

    (db.freeze)(true);
    struct Thaw(fn(bool));
    impl Drop for Thaw {
        fn drop(&mut self) {
            (self.0)(false);
        }
    }
    let thaw = Thaw(db.freeze);
    // The database answers nothing: hits still come from memory, and a
    // question that needs the store is forwarded after the lookup's bound
    // rather than waiting on the database.
    for i in 0..3 {
        let t0 = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            Call::ask(&format!("asked while the database hangs {i}")).send(&app),
        )
        .await
        .expect("a request stalled on the hung database");
        assert_eq!(got.status, 200);
        eprintln!("a miss while the database hangs took {:?}", t0.elapsed());
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            Call::ask("cached before the hang").send(&app),
        )
        .await
        .expect("a hit stalled on the hung database");
        assert_eq!((got.status, got.cache()), (200, "hit".to_string()));
    }
    drop(thaw);
    // Thawed: what was asked meanwhile is stored, and hits.
    let q = "asked while the database hangs 0";
    assert!(
        stored(&app, q).await,
        "not stored after the database thawed"
    );
    app.shutdown().await;
}

/// The `llm()` mock and two gateways on one fresh schema (named from
/// `prefix`), each caller's key verified on both.
pub async fn two_replicas(
    db: &Db,
    prefix: &str,
) -> (
    Mock,
    [tempfile::TempDir; 2],
    modelcache::app::RunningApp,
    modelcache::app::RunningApp,
) {
    let up = mock(llm()).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let schema = db.schema(prefix);
    let a = Gateway::new(db.settings(&up, dirs[0].path(), &schema))
        .start()
        .await;
    let b = Gateway::new(db.settings(&up, dirs[1].path(), &schema))
        .start()
        .await;
    verify_key(&a, &[]).await;
    verify_key(&b, &[]).await;
    (up, dirs, a, b)
}

pub async fn a_gateway_on_the_database_stores_serves_and_deletes(db: &Db) {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = db.schema("gw");
    let app = Gateway::new(db.settings(&up, dir.path(), &schema))
        .start()
        .await;
    verify_key(&app, &[]).await;
    Call::ask("Name three prime numbers").send(&app).await;
    Call::ask("Name three noble gases").send(&app).await;
    settle(&app).await;
    let hit = Call::ask("three prime numbers name").send(&app).await;
    assert_eq!(hit.cache(), "hit");
    let id: i64 = hit.header("x-modelcache-entry").parse().unwrap();
    app.shutdown().await;
    // Nothing of the entries is in the data folder: they are in PostgreSQL.
    assert!(!dir.path().join("data/modelcache.db").exists());

    // Another gateway on the same database (a fresh data folder, so no index
    // snapshot either) serves both, exactly and by meaning.
    let dir2 = tempfile::tempdir().unwrap();
    let calls = up.calls();
    let b = Gateway::new(db.settings(&up, dir2.path(), &schema))
        .start()
        .await;
    verify_key(&b, &[]).await;
    assert_eq!(
        Call::ask("Name three prime numbers").send(&b).await.cache(),
        "hit"
    );
    // NOTE: a shared index (Milvus) shows a row a moment (a few hundred ms) after
    // it takes it, and the first gateway wrote it just before it stopped.
    until_verdict_at(
        b.admin_addr,
        "noble gases: name three",
        "hit",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        Call::ask("noble gases: name three").send(&b).await.cache(),
        "hit"
    );
    // NOTE: the key was verified through the first gateway, and the store
    // keeps that: its warm-up question is a hit too, so nothing goes up.
    assert_eq!(up.calls(), calls, "nothing went upstream");
    // A delete through the admin API reaches the database.
    let got = admin(&b, "DELETE", &format!("/admin/entries/{id}"), Value::Null).await;
    assert_eq!(got.status, 200, "{}", got.text());
    b.shutdown().await;
    let c = Gateway::new(db.settings(&up, dir2.path(), &schema))
        .start()
        .await;
    verify_key(&c, &[]).await;
    assert_eq!(
        Call::ask("Name three prime numbers").send(&c).await.cache(),
        "miss"
    );
    assert_eq!(
        Call::ask("Name three noble gases").send(&c).await.cache(),
        "hit"
    );
    c.shutdown().await;
}

pub async fn a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other(db: &Db) {
    let _turn = TURN.lock().await;
    let (up, _dirs, a, b) = two_replicas(db, "rep").await;
    let q = json!({"model": "gpt-test", "input": "What is the capital of France?"});
    assert_eq!(Call::responses(&q).send(&a).await.cache(), "miss");
    settle(&a).await;
    let hit = Call::responses(&q).send(&a).await;
    assert_eq!(hit.cache(), "hit");
    let id = hit.json()["id"].as_str().unwrap().to_string();
    settle(&a).await;
    // B never served it, yet answers for it within a second.
    let started = std::time::Instant::now();
    let path = format!("/v1/responses/{id}");
    loop {
        let got = Call::get(&path).send(&b).await;
        if got.status == 200 {
            assert_eq!(got.json()["id"], id.as_str());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B never held {id}: {}",
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "a response minted on A was readable on B after {:?}",
        started.elapsed()
    );
    let calls = up.calls();
    let next =
        json!({"model": "gpt-test", "input": "And its population?", "previous_response_id": id});
    let chained = Call::responses(&next).send(&b).await;
    assert_eq!(chained.status, 200, "{}", chained.text());
    assert_eq!(up.calls(), calls + 1);
    let seen: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert!(seen.get("previous_response_id").is_none());
    assert_eq!(seen["input"].as_array().unwrap().len(), 3);
    a.shutdown().await;
    b.shutdown().await;
}
