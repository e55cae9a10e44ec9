//! The PostgreSQL store under real gateways, against the real PostgreSQL that
//! `make test` and `.ci/run` start (`scripts/postgres-up.sh`): the replica
//! tests every shared store passes (`tests/common/replicas.rs`: writes,
//! deletes, flushes and reported wrong answers reach the other replica within
//! a second, a killed replica catches up, an outage or a hang loses nothing),
//! and what is PostgreSQL's own: replicas that cannot LISTEN, the config.

mod common;

use common::replicas::{self, until_verdict, Db, TURN};
use common::*;

const PG: Db = Db {
    backend: "postgres",
    url_var: "MODELCACHE_TEST_POSTGRES_URL",
    prefix: "",
    stop: || replicas::pg_cluster("stop"),
    start: || replicas::script("postgres-up.sh", &[]),
    freeze: |on| replicas::signal_all(on, &["-u", "postgres"]),
    milvus: false,
};

#[tokio::test]
async fn running_replicas_see_each_others_writes_and_deletes_within_a_second() {
    replicas::running_replicas_see_each_others_writes_and_deletes_within_a_second(&PG).await;
}

#[tokio::test]
async fn two_replicas_writing_the_same_question_make_one_entry() {
    replicas::two_replicas_writing_the_same_question_make_one_entry(&PG).await;
}

#[tokio::test]
async fn a_wrong_hit_reported_on_one_replica_stops_it_on_the_other() {
    replicas::a_wrong_hit_reported_on_one_replica_stops_it_on_the_other(&PG).await;
}

#[tokio::test]
async fn a_replica_killed_and_restarted_while_another_writes_serves_everything_written() {
    replicas::a_replica_killed_and_restarted_while_another_writes_serves_everything_written(&PG)
        .await;
}

#[tokio::test]
async fn serving_goes_on_while_the_database_is_down_and_resumes_by_itself() {
    replicas::serving_goes_on_while_the_database_is_down_and_resumes_by_itself(&PG).await;
}

#[tokio::test]
async fn a_hung_database_turns_lookups_into_misses_and_nothing_stalls() {
    replicas::a_hung_database_turns_lookups_into_misses_and_nothing_stalls(&PG).await;
}

#[tokio::test]
async fn a_gateway_on_the_database_stores_serves_and_deletes() {
    replicas::a_gateway_on_the_database_stores_serves_and_deletes(&PG).await;
}

#[tokio::test]
async fn replicas_that_cannot_listen_follow_by_polling() {
    let _turn = TURN.lock().await;
    let up = mock(llm()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let schema = PG.schema("poll");
    let polling = |dir: &std::path::Path| {
        let mut s = PG.settings(&up, dir, &schema);
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
    replicas::a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other(&PG).await;
}
