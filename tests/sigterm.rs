//! The real binary: flags override the config, SIGTERM drains in-flight
//! requests and then exits, and `check-config` names bad keys.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::json;

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish_then_exits() {
    let up = mock(slow_stream(Duration::from_millis(100))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .current_dir(repo_root())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream", &up.url(), "--data-dir"])
        .arg(dir.path())
        .env("MODELCACHE_CACHE_THRESHOLD", "0.95")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (proxy, _admin) = listening(&mut child).await;
    // A stream that takes over a second is in flight when SIGTERM arrives.
    let mut req = ask("Tell me about graceful shutdown");
    req["stream"] = json!(true);
    let in_flight = tokio::spawn(async move { Call::chat(req).send(proxy).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused while the stream drains.
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "the listener must be closed"
    );
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200);
    assert!(
        got.text().ends_with("data: [DONE]\n\n"),
        "the in-flight stream completes"
    );
    assert_eq!(
        content_of(&got),
        answer_for("Tell me about graceful shutdown", 1)
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");

    // The drained answer was stored before exit: a restart serves it.
    let app = Gateway::new(settings(&up.url(), dir.path()))
        .real_model()
        .start()
        .await;
    verify_key(&app, &[]).await;
    assert_eq!(
        Call::ask("Tell me about graceful shutdown")
            .send(&app)
            .await
            .cache(),
        "hit"
    );
    assert_eq!(up.calls(), 2, "the stream and the warm-up");
    app.shutdown().await;
}

#[test]
fn check_config_names_bad_keys_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cache]\nthreshhold = 0.9\n").unwrap();
    let out = check_config(&bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache") && err.contains("threshhold"), "{err}");

    let shipped = repo_root().join("config.toml");
    let ok = check_config(&shipped, &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad_env = check_config(&shipped, &[("MODELCACHE_UPSTREAM_URL", "ftp://nope")]);
    assert_eq!(bad_env.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_env.stderr).contains("upstream.url"));
}
