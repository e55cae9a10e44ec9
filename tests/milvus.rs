//! Milvus as the vector index replicas share, under real gateways, against
//! the real PostgreSQL and Milvus (PyPI's `milvus` 2.3.5) that `make test`
//! and `.ci/run` start (`scripts/postgres-up.sh`, `scripts/milvus-up.sh`):
//! the replica tests every shared store passes (`tests/common/replicas.rs`),
//! here with both PostgreSQL and Milvus stopped or hung where they stop the
//! database, and what is Milvus's own: semantic hits wait out a Milvus
//! outage and come back by themselves, and a hung Milvus costs a miss.

mod common;

use std::time::{Duration, Instant};

use common::replicas::{self, Db, TURN};
use common::*;
use modelcache::index::milvus::VISIBLE_WITHIN;

fn milvus(action: &[&str]) {
    replicas::script("milvus-up.sh", action);
}

/// Starts Milvus again when dropped, whatever the test did meanwhile, so
/// that no other test finds it down.
struct MilvusBack;

impl Drop for MilvusBack {
    fn drop(&mut self) {
        milvus(&[]);
    }
}

const PG_MILVUS: Db = Db {
    backend: "postgres",
    url_var: "MODELCACHE_TEST_POSTGRES_URL",
    prefix: "",
    stop: || {
        replicas::pg_cluster("stop");
        milvus(&["stop"]);
    },
    start: || {
        replicas::script("postgres-up.sh", &[]);
        milvus(&[]);
    },
    freeze: |on| {
        replicas::signal_all(on, &["-u", "postgres"]);
        replicas::signal_all(on, &["-f", "milvus run standalone"]);
    },
    milvus: true,
};

#[tokio::test]
async fn running_replicas_see_each_others_writes_and_deletes_within_a_second() {
    replicas::running_replicas_see_each_others_writes_and_deletes_within_a_second(&PG_MILVUS).await;
}

#[tokio::test]
async fn two_replicas_writing_the_same_question_make_one_entry() {
    replicas::two_replicas_writing_the_same_question_make_one_entry(&PG_MILVUS).await;
}

#[tokio::test]
async fn a_wrong_hit_reported_on_one_replica_stops_it_on_the_other() {
    replicas::a_wrong_hit_reported_on_one_replica_stops_it_on_the_other(&PG_MILVUS).await;
}

#[tokio::test]
async fn a_replica_killed_and_restarted_while_another_writes_serves_everything_written() {
    replicas::a_replica_killed_and_restarted_while_another_writes_serves_everything_written(
        &PG_MILVUS,
    )
    .await;
}

#[tokio::test]
async fn serving_goes_on_while_the_database_is_down_and_resumes_by_itself() {
    replicas::serving_goes_on_while_the_database_is_down_and_resumes_by_itself(&PG_MILVUS).await;
}

#[tokio::test]
async fn a_hung_database_turns_lookups_into_misses_and_nothing_stalls() {
    replicas::a_hung_database_turns_lookups_into_misses_and_nothing_stalls(&PG_MILVUS).await;
}

#[tokio::test]
async fn a_gateway_on_the_database_stores_serves_and_deletes() {
    replicas::a_gateway_on_the_database_stores_serves_and_deletes(&PG_MILVUS).await;
}

#[tokio::test]
async fn a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other() {
    replicas::a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other(&PG_MILVUS)
        .await;
}

/// One gateway on PostgreSQL + Milvus (on a fresh schema, which it
/// returns), the caller's key verified.
async fn gateway(what: &str) -> (Mock, tempfile::TempDir, modelcache::app::RunningApp, String) {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = PG_MILVUS.schema(what);
    let app = Gateway::new(PG_MILVUS.settings(&up, dir.path(), &schema))
        .start()
        .await;
    verify_key(&app, &[]).await;
    (up, dir, app, schema)
}

/// Waits up to `within` until the dry run of `q` on `app` gives `verdict`.
async fn until(app: &modelcache::app::RunningApp, q: &str, verdict: &str, within: Duration) {
    replicas::until_verdict_at(app.admin_addr, q, verdict, within).await;
}

#[tokio::test]
async fn semantic_hits_wait_out_a_milvus_outage_and_come_back_by_themselves() {
    let _turn = TURN.lock().await;
    let (up, _dir, app, schema) = gateway("mvdown").await;
    Call::ask("How tall is the Eiffel Tower").send(&app).await;
    until(
        &app,
        "the Eiffel Tower: how tall",
        "hit",
        Duration::from_secs(5),
    )
    .await;
    // Past the overlay's window: what is searched now is Milvus.
    tokio::time::sleep(VISIBLE_WITHIN + Duration::from_secs(1)).await;

    milvus(&["stop"]);
    let restart = MilvusBack;
    // Every request succeeds: an exact repeat still hits (the store has
    // it), a reworded one cannot be searched and is forwarded.
    let got = Call::ask("How tall is the Eiffel Tower").send(&app).await;
    assert_eq!((got.status, got.cache()), (200, "hit".to_string()));
    let calls = up.calls();
    let got = Call::ask("the Eiffel Tower: how tall").send(&app).await;
    assert_eq!((got.status, got.cache()), (200, "miss".to_string()));
    assert_eq!(up.calls(), calls + 1);
    for i in 0..3 {
        let got = Call::ask(&format!("How long is river number {i} of Spain"))
            .send(&app)
            .await;
        assert_eq!(got.status, 200);
    }
    settle(&app).await;
    let m = metrics(&app).await;
    assert!(metric_sum(&m, "modelcache_cache_errors_total", &["stage=\"ann\""]) >= 1.0);
    assert!(
        metric_sum(&m, "modelcache_index_pending", &[]) >= 3.0,
        "the three answers wait for Milvus"
    );

    milvus(&[]);
    drop(restart);
    // What was asked meanwhile waited in the index queue and is written to
    // Milvus now: the queue empties by itself, and a gateway started
    // afterwards (nothing of its own in memory) finds it reworded there.
    let t0 = Instant::now();
    while metric_sum(&metrics(&app).await, "modelcache_index_pending", &[]) > 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the queued index writes were not written after Milvus came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir2 = tempfile::tempdir().unwrap();
    let b = Gateway::new(PG_MILVUS.settings(&up, dir2.path(), &schema))
        .start()
        .await;
    verify_key(&b, &[]).await;
    let calls = up.calls();
    for i in 0..3 {
        until(
            &b,
            &format!("river number {i} of Spain: how long is it"),
            "hit",
            Duration::from_secs(5),
        )
        .await;
    }
    let got = Call::ask("river number 1 of Spain: how long is it")
        .send(&b)
        .await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(up.calls(), calls);
    b.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_hung_milvus_costs_a_miss_within_its_timeout_and_nothing_stalls() {
    let _turn = TURN.lock().await;
    let (_up, _dir, app, _) = gateway("mvhung").await;
    Call::ask("How heavy is a blue whale").send(&app).await;
    until(
        &app,
        "a blue whale: how heavy",
        "hit",
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(VISIBLE_WITHIN + Duration::from_secs(1)).await;

    replicas::signal_all(true, &["-f", "milvus run standalone"]);
    struct Thaw;
    impl Drop for Thaw {
        fn drop(&mut self) {
            replicas::signal_all(false, &["-f", "milvus run standalone"]);
        }
    }
    let thaw = Thaw;
    for i in 0..3 {
        let t0 = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            Call::ask(&format!("a blue whale: how heavy ({i})")).send(&app),
        )
        .await
        .expect("a request stalled on the hung Milvus");
        assert_eq!(got.status, 200);
        eprintln!(
            "a lookup while Milvus hangs took {:?} ({})",
            t0.elapsed(),
            got.cache()
        );
        // An exact repeat needs no search.
        let got = Call::ask("How heavy is a blue whale").send(&app).await;
        assert_eq!((got.status, got.cache()), (200, "hit".to_string()));
    }
    drop(thaw);
    until(
        &app,
        "a blue whale: how heavy",
        "hit",
        Duration::from_secs(10),
    )
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_gateway_started_while_milvus_is_down_creates_and_searches_it_once_back() {
    let _turn = TURN.lock().await;
    milvus(&["stop"]);
    let restart = MilvusBack;
    // Milvus is away at start: the gateway starts anyway, and serves.
    let (up, _dir, a, schema) = gateway("mvlate").await;
    let got = Call::ask("How deep is the Mariana Trench").send(&a).await;
    assert_eq!((got.status, got.cache()), (200, "miss".to_string()));
    settle(&a).await;
    milvus(&[]);
    drop(restart);
    // Its collection is created and its queued write lands: a gateway
    // started now finds the question reworded in Milvus.
    let dir2 = tempfile::tempdir().unwrap();
    let b = Gateway::new(PG_MILVUS.settings(&up, dir2.path(), &schema))
        .start()
        .await;
    verify_key(&b, &[]).await;
    until(
        &b,
        "the Mariana Trench: how deep is it",
        "hit",
        Duration::from_secs(60),
    )
    .await;
    // And the first gateway searches Milvus too, past its overlay's window.
    Call::ask("How old is the Great Wall of China")
        .send(&b)
        .await;
    settle(&b).await;
    tokio::time::sleep(VISIBLE_WITHIN + Duration::from_secs(1)).await;
    let calls = up.calls();
    until(
        &a,
        "the Great Wall of China: how old is it",
        "hit",
        Duration::from_secs(10),
    )
    .await;
    let got = Call::ask("the Great Wall of China: how old is it")
        .send(&a)
        .await;
    assert_eq!(got.cache(), "hit");
    assert_eq!(up.calls(), calls);
    a.shutdown().await;
    b.shutdown().await;
}
