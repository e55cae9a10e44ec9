//! The PostgreSQL store under a real gateway, against the real PostgreSQL that
//! `make test` and `.ci/run` start (`scripts/postgres-up.sh`): misses are
//! stored there, hits survive a restart, a delete through the admin API
//! reaches it, and a second gateway started on the same database serves what
//! the first one stored; and two running replicas see each other's writes and
//! deletes within a second, through the change log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Waits (up to 1 s) until a dry-run lookup of `q` on `app` gives `verdict`;
/// returns how long it took.
async fn until_verdict(app: &modelcache::app::RunningApp, q: &str, verdict: &str) -> Duration {
    until_verdict_at(app.admin_addr, q, verdict, Duration::from_secs(1)).await
}

/// Waits until the dry run of `q` on the admin listener at `admin` gives
/// `verdict`, for at most `within`; returns how long it took.
async fn until_verdict_at(
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

#[tokio::test]
async fn running_replicas_see_each_others_writes_and_deletes_within_a_second() {
    let _turn = TURN.lock().await;
    let (up, _dirs, a, b) = two_replicas("rep").await;
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

#[tokio::test]
async fn replicas_that_cannot_listen_follow_by_polling() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let schema = format!("poll_{:016x}", rand::random::<u64>());
    let polling = |dir: &std::path::Path| {
        let mut s = pg_settings(&up, dir, &schema);
        if let modelcache::config::StorageBackend::Postgres { notify, .. } = &mut s.storage.backend
        {
            *notify = false;
        }
        s
    };
    let a = Gateway::new(polling(da.path())).start().await;
    let b = Gateway::new(polling(db.path())).start().await;
    verify_key(&a, &[]).await;
    Call::ask("What colour is the sky at noon").send(&a).await;
    let took = until_verdict(&b, "What colour is the sky at noon", "hit").await;
    eprintln!("polling only: a write on A became a hit on B after {took:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn two_replicas_writing_the_same_question_make_one_entry() {
    let _turn = TURN.lock().await;
    let (_up, _dirs, a, b) = two_replicas("dup").await;
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

#[tokio::test]
async fn a_wrong_hit_reported_on_one_replica_stops_it_on_the_other() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let schema = format!("neg_{:016x}", rand::random::<u64>());
    // The hashing embedder's similarities are word overlaps: a low threshold
    // and no verifier let a near-duplicate hit (as in tests/feedback.rs).
    let loose = |dir: &std::path::Path| {
        let mut s = pg_settings(&up, dir, &schema);
        policy(&mut s, |p| {
            p.threshold = 0.7;
            p.verifier.enabled = false;
        });
        s
    };
    let a = Gateway::new(loose(da.path())).start().await;
    let b = Gateway::new(loose(db.path())).start().await;
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

/// `config.toml` on PostgreSQL (`schema`), the upstream at `up`.
fn pg_config(dir: &std::path::Path, schema: &str) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(repo_root().join("config.toml")).unwrap();
    let line = "backend = \"sqlite\"";
    assert!(shipped.contains(line));
    let toml = shipped.replacen(
        line,
        &format!("backend = \"postgres\"\nurl_env = \"PG_URL\"\nschema = \"{schema}\""),
        1,
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Waits (up to `within`) until a dry-run lookup of `q` on the gateway
/// process `run` gives `verdict`.
#[tokio::test]
async fn a_replica_killed_and_restarted_while_another_writes_serves_everything_written() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let schema = format!("kill_{:016x}", rand::random::<u64>());
    let config = pg_config(da.path(), &schema);
    let pg = std::env::var("MODELCACHE_TEST_POSTGRES_URL").unwrap();
    let url = up.url();
    let env = [
        ("MODELCACHE_UPSTREAM_URL", url.as_str()),
        ("MODELCACHE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PG_URL", pg.as_str()),
    ];
    let a = Binary::serve(&config, da.path()).envs(&env).start().await;
    let b = Binary::serve(&config, db.path()).envs(&env).start().await;
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
    let b = Binary::serve(&config, db.path()).envs(&env).start().await;
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
    assert!(log.contains("vector index"), "{log}");
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
    let b = Binary::serve(&config, db.path()).envs(&env).start().await;
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
    assert!(
        opened.contains("rebuilt=false") && opened.contains("tail=2 "),
        "snapshot plus a tail of two changes: {opened}"
    );
    a.stop().await;
}

/// The tests of this file share one PostgreSQL cluster, and one of them stops
/// it: they take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster(action: &str) {
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

#[tokio::test]
async fn serving_goes_on_while_postgres_is_down_and_resumes_by_itself() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("down_{:016x}", rand::random::<u64>());
    let app = Gateway::new(pg_settings(&up, dir.path(), &schema))
        .start()
        .await;
    verify_key(&app, &[]).await;
    Call::ask("cached before the outage").send(&app).await;
    settle(&app).await;
    assert_eq!(
        Call::ask("cached before the outage")
            .send(&app)
            .await
            .cache(),
        "hit"
    );

    cluster("stop");
    // Started again whatever happens below, so that no other test finds it down.
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ = std::process::Command::new(repo_root().join("scripts/postgres-up.sh")).output();
        }
    }
    let restart = Restart;
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

    cluster("start");
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
async fn stored(app: &modelcache::app::RunningApp, q: &str) -> bool {
    for _ in 0..50 {
        settle(app).await;
        if dry_run(app, q).await["verdict"] == "hit" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) every PostgreSQL process: a database
/// that hangs rather than refuses connections.
fn freeze(on: bool) {
    let out = std::process::Command::new("pkill")
        .args([if on { "-STOP" } else { "-CONT" }, "-u", "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pkill: {out:?}");
}

#[tokio::test]
async fn a_hung_database_turns_lookups_into_misses_and_nothing_stalls() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("hung_{:016x}", rand::random::<u64>());
    let app = Gateway::new(pg_settings(&up, dir.path(), &schema))
        .start()
        .await;
    verify_key(&app, &[]).await;
    Call::ask("cached before the hang").send(&app).await;
    settle(&app).await;
    assert_eq!(
        Call::ask("cached before the hang").send(&app).await.cache(),
        "hit"
    );

    freeze(true);
    struct Thaw;
    impl Drop for Thaw {
        fn drop(&mut self) {
            freeze(false);
        }
    }
    let thaw = Thaw;
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
async fn two_replicas(
    prefix: &str,
) -> (
    Mock,
    [tempfile::TempDir; 2],
    modelcache::app::RunningApp,
    modelcache::app::RunningApp,
) {
    let up = mock(llm()).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let schema = format!("{prefix}_{:016x}", rand::random::<u64>());
    let a = Gateway::new(pg_settings(&up, dirs[0].path(), &schema))
        .start()
        .await;
    let b = Gateway::new(pg_settings(&up, dirs[1].path(), &schema))
        .start()
        .await;
    verify_key(&a, &[]).await;
    verify_key(&b, &[]).await;
    (up, dirs, a, b)
}

fn pg_settings(up: &Mock, dir: &std::path::Path, schema: &str) -> modelcache::config::Settings {
    let url = std::env::var("MODELCACHE_TEST_POSTGRES_URL").expect(
        "MODELCACHE_TEST_POSTGRES_URL is not set: run `make test`, which starts PostgreSQL with scripts/postgres-up.sh",
    );
    let toml =
        format!("[storage]\nbackend = \"postgres\"\nurl_env = \"PG_URL\"\nschema = \"{schema}\"\n");
    let mut s = settings_from(&toml, dir, &[("PG_URL", url.as_str())]);
    upstreams(&mut s, |u| u.url = up.url().parse().unwrap());
    s
}

#[tokio::test]
async fn a_gateway_on_postgres_stores_serves_and_deletes() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("gw_{:016x}", rand::random::<u64>());
    let app = Gateway::new(pg_settings(&up, dir.path(), &schema))
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
    let b = Gateway::new(pg_settings(&up, dir2.path(), &schema))
        .start()
        .await;
    verify_key(&b, &[]).await;
    assert_eq!(
        Call::ask("Name three prime numbers").send(&b).await.cache(),
        "hit"
    );
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
    let c = Gateway::new(pg_settings(&up, dir2.path(), &schema))
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

#[test]
fn the_config_names_what_postgres_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for (text, needle) in [
        ("[storage]\nbackend = \"postgres\"\n", "storage.url"),
        (
            "[storage]\nbackend = \"postgres\"\nurl_env = \"NO_SUCH_VAR_HERE\"\n",
            "NO_SUCH_VAR_HERE",
        ),
        (
            "[storage]\nbackend = \"postgres\"\nurl = \"mysql://x\"\n",
            "postgres://",
        ),
        (
            "[storage]\nbackend = \"mongo\"\n",
            "sqlite, postgres or mysql",
        ),
        (
            "[storage]\nurl = \"postgres://x\"\n",
            "only used with backend",
        ),
        ("[storage]\nnotify = false\n", "only used with backend"),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[tokio::test]
async fn a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other() {
    let _turn = TURN.lock().await;
    let (up, _dirs, a, b) = two_replicas("rep").await;
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
