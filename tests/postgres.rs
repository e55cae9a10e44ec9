//! The PostgreSQL store under a real gateway, against the real PostgreSQL that
//! `make test` and `.ci/run` start (`scripts/postgres-up.sh`): misses are
//! stored there, hits survive a restart, a delete through the admin API
//! reaches it, and a second gateway started on the same database serves what
//! the first one stored. Live catch-up of running replicas is not built yet.

mod common;

use common::*;
use serde_json::Value;

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
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("gw_{:016x}", rand::random::<u64>());
    let app = gateway(pg_settings(&up, dir.path(), &schema)).await;
    verify_key(app.proxy_addr, &[]).await;
    chat(app.proxy_addr, ask("Name three prime numbers")).await;
    chat(app.proxy_addr, ask("Name three noble gases")).await;
    settle(&app).await;
    let hit = chat(app.proxy_addr, ask("three prime numbers name")).await;
    assert_eq!(hit.cache(), "hit");
    let id: i64 = hit.header("x-modelcache-entry").parse().unwrap();
    app.shutdown().await;
    // Nothing of the entries is in the data folder: they are in PostgreSQL.
    assert!(!dir.path().join("data/modelcache.db").exists());

    // Another gateway on the same database (a fresh data folder, so no index
    // snapshot either) serves both, exactly and by meaning.
    let dir2 = tempfile::tempdir().unwrap();
    let calls = up.calls();
    let b = gateway(pg_settings(&up, dir2.path(), &schema)).await;
    verify_key(b.proxy_addr, &[]).await;
    assert_eq!(
        chat(b.proxy_addr, ask("Name three prime numbers"))
            .await
            .cache(),
        "hit"
    );
    assert_eq!(
        chat(b.proxy_addr, ask("noble gases: name three"))
            .await
            .cache(),
        "hit"
    );
    assert_eq!(up.calls(), calls + 1, "only the key check went upstream");
    // A delete through the admin API reaches the database.
    let got = admin(&b, "DELETE", &format!("/admin/entries/{id}"), Value::Null).await;
    assert_eq!(got.status, 200, "{}", got.text());
    b.shutdown().await;
    let c = gateway(pg_settings(&up, dir2.path(), &schema)).await;
    verify_key(c.proxy_addr, &[]).await;
    assert_eq!(
        chat(c.proxy_addr, ask("Name three prime numbers"))
            .await
            .cache(),
        "miss"
    );
    assert_eq!(
        chat(c.proxy_addr, ask("Name three noble gases"))
            .await
            .cache(),
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
        ("[storage]\nbackend = \"mongo\"\n", "sqlite or postgres"),
        (
            "[storage]\nurl = \"postgres://x\"\n",
            "only used with backend",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = check_config(&path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
