//! The MySQL store under real gateways, against the real MariaDB that `make
//! test` and `.ci/run` start (`scripts/mariadb-up.sh`): the replica tests
//! every shared store passes (`tests/common/replicas.rs`: writes, deletes,
//! flushes and reported wrong answers reach the other replica within a
//! second by polling the change log, a killed replica catches up, an outage
//! or a hang loses nothing), and the config a MySQL store needs.

mod common;

use common::replicas::{self, Db};
use common::*;

const MYSQL: Db = Db {
    backend: "mysql",
    url_var: "MODELCACHE_TEST_MYSQL_URL",
    // NOTE: the test user may create databases named `mctest_…` only.
    prefix: "mctest_",
    stop: || replicas::script("mariadb-up.sh", &["stop"]),
    start: || replicas::script("mariadb-up.sh", &[]),
    freeze: |on| replicas::signal_all(on, &["-x", "mariadbd"]),
};

#[tokio::test]
async fn running_replicas_see_each_others_writes_and_deletes_within_a_second() {
    replicas::running_replicas_see_each_others_writes_and_deletes_within_a_second(&MYSQL).await;
}

#[tokio::test]
async fn two_replicas_writing_the_same_question_make_one_entry() {
    replicas::two_replicas_writing_the_same_question_make_one_entry(&MYSQL).await;
}

#[tokio::test]
async fn a_wrong_hit_reported_on_one_replica_stops_it_on_the_other() {
    replicas::a_wrong_hit_reported_on_one_replica_stops_it_on_the_other(&MYSQL).await;
}

#[tokio::test]
async fn a_replica_killed_and_restarted_while_another_writes_serves_everything_written() {
    replicas::a_replica_killed_and_restarted_while_another_writes_serves_everything_written(&MYSQL)
        .await;
}

#[tokio::test]
async fn serving_goes_on_while_the_database_is_down_and_resumes_by_itself() {
    replicas::serving_goes_on_while_the_database_is_down_and_resumes_by_itself(&MYSQL).await;
}

#[tokio::test]
async fn a_hung_database_turns_lookups_into_misses_and_nothing_stalls() {
    replicas::a_hung_database_turns_lookups_into_misses_and_nothing_stalls(&MYSQL).await;
}

#[tokio::test]
async fn a_gateway_on_the_database_stores_serves_and_deletes() {
    replicas::a_gateway_on_the_database_stores_serves_and_deletes(&MYSQL).await;
}

#[tokio::test]
async fn a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other() {
    replicas::a_responses_id_minted_on_one_replica_is_fetched_and_chained_on_the_other(&MYSQL)
        .await;
}

#[test]
fn the_config_names_what_mysql_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for (text, needle) in [
        ("[storage]\nbackend = \"mysql\"\n", "storage.url"),
        (
            "[storage]\nbackend = \"mysql\"\nurl_env = \"NO_SUCH_VAR_HERE\"\n",
            "NO_SUCH_VAR_HERE",
        ),
        (
            "[storage]\nbackend = \"mysql\"\nurl = \"postgres://x\"\n",
            "mysql://",
        ),
        (
            "[storage]\nbackend = \"mysql\"\nurl = \"mysql://x/y\"\nnotify = false\n",
            "storage.notify",
        ),
        (
            "[storage]\nbackend = \"mysql\"\nurl = \"mysql://x/y\"\npoll_interval = \"soon\"\n",
            "storage.poll_interval",
        ),
        (
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://x/y\"\npoll_interval = \"1s\"\n",
            "storage.poll_interval",
        ),
        (
            "[storage]\npoll_interval = \"1s\"\n",
            "only used with backend",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // A good one passes, its password never printed.
    std::fs::write(
        &path,
        "[storage]\nbackend = \"mysql\"\nurl_env = \"MY_URL\"\npoll_interval = \"50ms\"\n",
    )
    .unwrap();
    let out = check_config(&path, &[("MY_URL", "mysql://u:s3cret-pw@db:3306/cache")]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("s3cret-pw"), "{all}");
}
