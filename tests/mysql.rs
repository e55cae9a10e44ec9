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
    milvus: false,
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

/// ModelCache's answer table, as its `create_table.sql` makes it, with the
/// `is_deleted` flag of its later versions.
const MODELCACHE_TABLE: &str = "CREATE TABLE modelcache_llm_answer (
  id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  gmt_create timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  gmt_modified timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  question text NOT NULL,
  answer text NOT NULL,
  answer_type int(11) NOT NULL,
  hit_count int(11) NOT NULL DEFAULT '0',
  model varchar(1000) NOT NULL,
  embedding_data blob NOT NULL,
  is_deleted tinyint(4) NOT NULL DEFAULT '0',
  PRIMARY KEY(id)
) AUTO_INCREMENT = 1 DEFAULT CHARSET = utf8mb4";

/// A ModelCache database filled with rows in every format it wrote, and
/// rows that cannot be imported; its URL.
async fn modelcache_database() -> String {
    use mysql_async::prelude::Queryable;
    let db = MYSQL.schema("mc");
    let base = MYSQL.url();
    let mut c = mysql_async::Conn::from_url(base.as_str()).await.unwrap();
    c.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
    c.query_drop(format!("USE {db}")).await.unwrap();
    c.query_drop(MODELCACHE_TABLE).await.unwrap();
    let rows: [(&str, &str, &str, i32); 7] = [
        // role###content, ModelCache's multi-turn text.
        (
            "user###How do I reverse a list in Python?",
            "Use reversed() or slicing.",
            "codefuse",
            0,
        ),
        // A JSON message list, with a system prompt.
        (
            r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]"#,
            "Paris.",
            "codefuse",
            0,
        ),
        // The bare question of the oldest versions, another model.
        (
            "What is the boiling point of water at sea level?",
            "100 degrees Celsius.",
            "other-model",
            0,
        ),
        ("user###Tell me nothing", "", "codefuse", 0),
        ("[not a list", "answer", "codefuse", 0),
        // The same question and model again: the later answer is kept.
        (
            "user###How do I reverse a list in Python?",
            "Call list.reverse() to reverse in place.",
            "codefuse",
            0,
        ),
        ("user###A deleted question", "gone", "codefuse", 1),
    ];
    for (q, a, m, deleted) in rows {
        c.exec_drop(
            "INSERT INTO modelcache_llm_answer (question, answer, answer_type, model, embedding_data, is_deleted) VALUES (?, ?, 0, ?, ?, ?)",
            (q, a, m, vec![0u8; 16], deleted),
        )
        .await
        .unwrap();
    }
    c.disconnect().await.unwrap();
    let (head, _) = base.rsplit_once('/').unwrap();
    format!("{head}/{db}")
}

#[tokio::test]
async fn answers_imported_from_a_modelcache_database_are_served() {
    let source = modelcache_database().await;
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo_root().join("config.toml")).unwrap();
    let line = "data_dir = \"./data\"";
    assert!(shipped.contains(line));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        shipped.replacen(
            line,
            &format!("data_dir = \"{}\"", dir.path().join("data").display()),
            1,
        ),
    )
    .unwrap();

    let out = std::process::Command::new(bin())
        .current_dir(repo_root())
        .args(["import", "--from-modelcache", &source, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("read 6 ModelCache rows; imported 4 answers into tenant default"),
        "{stdout}"
    );
    assert!(stdout.contains("1 repeated an earlier row's question and model"));
    for why in [
        "skipped 3",
        "skipped 1: empty answer",
        "skipped 1: marked deleted in ModelCache",
        "skipped 1: question starts like a JSON list but is not one",
    ] {
        assert!(stdout.contains(why), "{why}: {stdout}");
    }
    assert!(stderr.contains("7/7 rows"), "a progress line: {stderr}");

    // The gateway on that data folder serves them: to chat requests of the
    // same model, exactly and by meaning, and to ModelCache's API.
    let up = mock(llm()).await;
    let url = up.url();
    let gw = Binary::serve(&config, dir.path())
        .envs(&[
            ("MODELCACHE_UPSTREAM_URL", url.as_str()),
            ("MODELCACHE_ADMIN_TOKEN", ADMIN_TOKEN),
        ])
        .start()
        .await;
    verify_key(&gw, &[]).await;
    let calls = up.calls();
    let chat = |model: &str, msgs: serde_json::Value| {
        Call::chat(serde_json::json!({"model": model, "messages": msgs}))
    };
    let got = chat(
        "codefuse",
        serde_json::json!([{"role": "user", "content": "How do I reverse a list in Python"}]),
    )
    .send(&gw)
    .await;
    assert_eq!(got.cache(), "hit", "{}", got.text());
    assert_eq!(content_of(&got), "Call list.reverse() to reverse in place.");
    let got = chat(
        "codefuse",
        serde_json::json!([{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "What is the capital of France?"}]),
    )
    .send(&gw)
    .await;
    assert_eq!(
        (got.cache(), content_of(&got)),
        ("hit".into(), "Paris.".into())
    );
    let got = modelcache_call(
        &gw,
        serde_json::json!({"type": "query", "scope": {"model": "other-model"},
            "query": [{"role": "user", "content": "What is the boiling point of water at sea level?"}]}),
        &[],
    )
    .await;
    assert_eq!(got.json()["cacheHit"], true, "{}", got.text());
    // Another model is another partition: nothing imported answers it.
    let got = chat(
        "gpt-test",
        serde_json::json!([{"role": "user", "content": "What is the capital of France?"}]),
    )
    .send(&gw)
    .await;
    assert_eq!(got.cache(), "miss");
    assert_eq!(
        up.calls(),
        calls + 1,
        "only the other model's question went upstream"
    );
    gw.stop().await;
}

#[test]
fn an_import_from_a_database_that_is_not_modelcache_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .current_dir(repo_root())
        .args(["import", "--from-modelcache", &MYSQL.url(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no table modelcache_llm_answer"),
        "{stderr}"
    );
}
