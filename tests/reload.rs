//! The real binary with tenants: SIGHUP reloads policies while requests in
//! flight complete, an invalid file is rejected, replace-mode secrets never
//! reach the upstream, the logs or the store, and `check-config` names every
//! tenant error.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use serde_json::json;

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Streams slowly for questions that mention "slow", answers at once otherwise.
fn mixed() -> Handler {
    let (fast, slow) = (llm(), slow_stream(Duration::from_millis(150)));
    Arc::new(move |seen: &Seen, n: usize| {
        if question(seen).contains("slow") {
            slow(seen, n)
        } else {
            fast(seen, n)
        }
    })
}

#[tokio::test]
async fn sighup_applies_a_new_policy_while_requests_in_flight_complete() {
    let up = mock(mixed()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let with_mode = |mode: &str| {
        format!(
            "[upstream]\nurl = \"{}\"\n[[tenants]]\nname = \"team\"\n[tenants.cache]\nmode = \"{mode}\"\n",
            up.url()
        )
    };
    std::fs::write(&config, with_mode("read_write")).unwrap();
    let gw = Binary::serve(&config, dir.path()).start().await;
    let q = ask("What changes on reload?");
    Call::chat(q.clone()).send(&gw).await;
    until("the answer to be cached", async || {
        Call::chat(q.clone()).send(&gw).await.cache() == "hit"
    })
    .await;
    let calls = up.calls();

    // A stream of about two seconds is in flight across both reloads.
    let mut slow = ask("Tell me a slow story");
    slow["stream"] = json!(true);
    let proxy = gw.proxy;
    let in_flight = tokio::spawn(async move { Call::chat(slow).send(proxy).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // An invalid file is rejected; the running policy stays.
    std::fs::write(
        &config,
        "[[tenants]]\nname = \"team\"\ncache = { mode = \"sometimes\" }\n",
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    until("the rejection in the log", async || {
        gw.log().contains("reload rejected")
    })
    .await;
    assert!(
        gw.log().contains("tenants[0].cache.mode"),
        "the log names the bad key"
    );
    assert_eq!(Call::chat(q.clone()).send(&gw).await.cache(), "hit");
    assert_eq!(up.calls(), calls + 1, "only the stream went upstream");

    // A valid file applies: mode off makes the tenant a plain proxy.
    std::fs::write(&config, with_mode("off")).unwrap();
    gw.signal(libc::SIGHUP);
    until("the new policy", async || {
        Call::chat(q.clone()).send(&gw).await.cache() == "bypass"
    })
    .await;
    assert!(gw.log().contains("configuration reloaded"));
    assert!(!in_flight.is_finished(), "the stream spans the reloads");
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200);
    assert!(got.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(
        content_of(&got),
        answer_for("Tell me a slow story", calls + 1)
    );
    gw.stop().await;
}

#[tokio::test]
async fn replace_mode_secrets_stay_out_of_the_upstream_the_logs_and_the_store() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[tenants]]
name = "virtual"
auth = "replace"
keys_env = ["TEAM_GATEWAY_KEY"]
[tenants.upstream]
url = "{}"
api_key_env = "TEAM_PROVIDER_KEY"
"#,
            up.url()
        ),
    )
    .unwrap();
    let (caller, provider, stranger) = (
        "mc-caller-7f3a9c51e2",
        "sk-provider-0b8d44aa91",
        "sk-stranger-5c2e7719fd",
    );
    let gw = Binary::serve(&config, dir.path())
        .envs(&[
            ("TEAM_GATEWAY_KEY", caller),
            ("TEAM_PROVIDER_KEY", provider),
        ])
        .start()
        .await;
    let q = ask("Is my key safe with you?");
    let first = Call::chat(q.clone()).key(caller).send(&gw).await;
    assert_eq!(first.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], format!("Bearer {provider}"));
    assert!(!format!("{:?}{:?}", seen.headers, seen.body).contains(caller));
    until("the hit", async || {
        Call::chat(q.clone()).key(caller).send(&gw).await.cache() == "hit"
    })
    .await;
    // (Polling for the hit may have sent a request or two before the write landed.)
    let calls = up.calls();
    let rejected = Call::chat(q.clone()).key(stranger).send(&gw).await;
    assert_eq!(rejected.status, 401);
    assert_eq!(up.calls(), calls, "the stranger never reaches the upstream");
    let log = gw.stop().await;
    assert!(log.contains("DEBUG"), "debug logging was on");
    for secret in [caller, provider, stranger] {
        assert!(!log.contains(secret), "a key reached the log");
        assert_no_file_contains(&dir.path().join("data"), secret);
    }
}

#[test]
fn check_config_names_every_tenant_error_and_summarises_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[auth]
unknown_keys = "maybe"
[[tenants]]
name = "a"
keys_env = ["NOT_SET_ANYWHERE"]
[[tenants]]
name = "b"
auth = "replace"
match_models = ["gpt-*"]
cache = { ttl = "forever" }
"#,
    )
    .unwrap();
    let out = check_config(&bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "auth.unknown_keys",
        "tenants[0].keys_env[0]: environment variable NOT_SET_ANYWHERE is not set",
        "tenants[1].upstream.api_key_env",
        "tenants[1].auth",
        "tenants[1].cache.ttl",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[tenants]]\nname = \"search\"\nkeys_env = [\"SEARCH_KEY\"]\n[[tenants]]\nname = \"rest\"\n",
    )
    .unwrap();
    let out = check_config(&good, &[("SEARCH_KEY", "sk-search-secret-123")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tenant search: matched by 1 key(s)"),
        "{text}"
    );
    assert!(
        text.contains("tenant rest: matched by every caller"),
        "{text}"
    );
    assert!(!text.contains("sk-search-secret-123"));
}
