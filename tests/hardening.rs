//! One caller must never take the gateway down: connections that send half a
//! request are closed after the read timeouts, the admin listener keeps
//! answering when the proxy has used every descriptor it may, and one huge
//! chat message neither exhausts memory nor holds the embedding thread.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;

/// Reads from `s` until the peer closes it, for at most `within`; what it
/// sent, or None if it was still open then.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(_) => return None,
        }
    }
}

/// Three kinds of half-sent requests: nothing at all, part of the headers,
/// and all the headers with part of the body.
fn half_sent(addr: SocketAddr, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    match i % 3 {
        0 => {}
        1 => s
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
            .unwrap(),
        _ => s
            .write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
            )
            .unwrap(),
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_connections_are_closed_after_the_read_timeouts() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&up.url(), dir.path());
    s.server.header_read_timeout = Duration::from_secs(1);
    s.server.body_read_timeout = Duration::from_secs(1);
    let app = Gateway::new(s).start().await;
    let addr = app.proxy_addr;

    let conns = tokio::task::spawn_blocking(move || {
        (0..300).map(|i| half_sent(addr, i)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Everyone else is served meanwhile.
    let got = Call::ask("Is anyone else served?").send(&app).await;
    assert_eq!(got.status, 200);
    let health = Call::get("/healthz").send(app.admin_addr).await;
    assert_eq!(health.status, 200);

    let outcomes = tokio::task::spawn_blocking(move || {
        conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| (i, read_until_closed(&mut c, Duration::from_secs(15))))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (i, got) in outcomes {
        let got = got.unwrap_or_else(|| panic!("connection {i} is still open after 15 s"));
        if i % 3 == 2 {
            // The body stalled: the gateway says so in OpenAI's error shape.
            assert!(got.starts_with("HTTP/1.1 408"), "connection {i}: {got}");
            assert!(got.contains("modelcache_request_timeout"), "{got}");
        }
    }
    // Nothing half-sent reached the upstream.
    assert_eq!(up.calls(), 1);
    app.shutdown().await;
}

/// Starts the binary with `config` and at most `nofile` open files (soft and
/// hard), so that it cannot raise its own limit.
async fn serve_limited(config: &Path, dir: &Path, nofile: u64) -> Running {
    Binary::serve(config, dir)
        .rust_log("info")
        .configure(move |cmd| {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
        .start()
        .await
}

/// CPU seconds (user and system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_time(pid).unwrap().as_secs_f64()
}

/// Resident memory of the process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    proc_status(pid, "VmRSS").unwrap() as f64 / 1024.0
}

fn config_for(upstream: &str, dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"2s\"\n{extra}\n\
             [upstream]\nurl = \"{upstream}\"\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_at_the_descriptor_limit_without_a_busy_loop() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&up.url(), dir.path(), "");
    let gw = serve_limited(&config, dir.path(), 256).await;
    let pid = gw.child.id();
    let proxy = gw.proxy;

    // Far more half-sent connections than the process has descriptors.
    let conns = tokio::task::spawn_blocking(move || {
        (0..400)
            .map(|i| half_sent(proxy, 1 + i % 2))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = cpu_seconds(pid);
    let wall = Instant::now();
    for _ in 0..5 {
        let health = Call::get("/healthz").send(gw.admin).await;
        assert_eq!(health.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let busy = (cpu_seconds(pid) - cpu_before) / wall.elapsed().as_secs_f64();
    // NOTE: a loop retrying a failed accept burns a whole core (1.0); the
    // gateway holding connections and closing them on their timeouts uses
    // a few percent.
    assert!(
        busy < 0.5,
        "the gateway used {busy:.2} of a core while held"
    );

    // Once the half-sent connections time out, the proxy serves again.
    let got = Call::ask("Served after the flood?").send(&gw).await;
    assert_eq!(got.status, 200);
    drop(conns);
    let log = gw.stop().await;
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_message_neither_exhausts_memory_nor_is_cached_wrong() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&up.url(), dir.path(), "");
    let gw = serve_limited(&config, dir.path(), 4096).await;
    let pid = gw.child.id();

    // Warm up: the model's first runs grow its arena.
    for q in ["What is a semantic cache?", "How do I sort a list in Go?"] {
        assert_eq!(Call::ask(q).send(&gw).await.status, 200);
    }
    let idle = rss_mib(pid);
    let words = |n: usize| {
        (0..n)
            .map(|i| ["lorem", "ipsum", "dolor", "sit", "amet"][i % 5])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let two_mib = "lorem ipsum ".repeat(2 * 1024 * 1024 / 12);
    let bodies = [
        words(1_000),
        words(3_000),
        words(8_000),
        words(20_000),
        two_mib.clone(),
        // One 2 MiB "word": no spaces to count.
        "x".repeat(2 * 1024 * 1024),
    ];
    let mut peak = idle;
    for (i, text) in bodies.iter().enumerate() {
        let got = Call::ask(text).send(&gw).await;
        assert_eq!(got.status, 200, "message {i}");
        assert_eq!(got.cache(), "miss", "message {i}");
        peak = peak.max(rss_mib(pid));
    }
    // NOTE: the peak includes the long-text lane's copy of the model (about
    // 170 MiB, loaded by the first long message); the gateway grew
    // by gigabytes here.
    assert!(
        peak - idle < 400.0,
        "RSS grew from {idle:.0} MiB to {peak:.0} MiB"
    );
    // Each was forwarded once; an exact repeat of the longest is a hit.
    assert_eq!(up.calls(), 2 + bodies.len());
    let mut hit = None;
    for _ in 0..50 {
        let got = Call::ask(&two_mib).send(&gw).await;
        if got.cache() == "hit" {
            hit = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = hit.expect("the 2 MiB message was never served from the cache");
    assert_eq!(hit.header("x-modelcache-similarity"), "1.0000");
    let log = gw.stop().await;
    assert!(!log.contains("panicked"), "{log}");
}

/// The default mock, answering after `pause`.
fn slow_llm(pause: Duration) -> Handler {
    let inner = llm();
    std::sync::Arc::new(move |seen: &Seen, n: usize| Reply::Delay(pause, Box::new(inner(seen, n))))
}

fn streamed(q: &str) -> serde_json::Value {
    let mut b = ask(q);
    b["stream"] = serde_json::json!(true);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_identical_misses_make_one_upstream_call() {
    let up = mock(slow_llm(Duration::from_millis(600))).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    // NOTE: only a key the upstream has accepted may be served what another
    // request fetched (Verified keys); this caller has no key, which counts.
    verify_key(&app, &[]).await;
    let q = "Ten at once: what does single flight mean?";
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let addr = app.proxy_addr;
            // Half of them stream: a follower replays in its own format.
            let body = if i % 2 == 0 { ask(q) } else { streamed(q) };
            tokio::spawn(async move { Call::chat(body).send(addr).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(up.calls(), 2, "one upstream call for ten identical misses");
    let want = answer_for(q, 2);
    for (i, got) in results.iter().enumerate() {
        assert_eq!(got.status, 200, "request {i}");
        assert_eq!(content_of(got), want, "request {i}");
    }
    let misses = results.iter().filter(|g| g.cache() == "miss").count();
    assert_eq!(misses, 1, "the leader is the one miss");
    assert!(results
        .iter()
        .filter(|g| g.cache() == "hit")
        .all(|g| g.header("cache-status").contains("hit")));
    // And the answer was cached as usual.
    settle(&app).await;
    let again = Call::ask(q).send(&app).await;
    assert_eq!(again.cache(), "hit");
    assert_eq!(up.calls(), 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_failed_leader_are_forwarded_on_their_own() {
    // The second call (the first after the key's warm-up) fails after a
    // pause; every other succeeds.
    let inner = llm();
    let handler: Handler = std::sync::Arc::new(move |seen: &Seen, n: usize| {
        if n == 2 {
            Reply::Delay(
                Duration::from_millis(400),
                Box::new(Reply::Full(
                    500,
                    vec![("content-type", "application/json".into())],
                    Bytes::from_static(b"{\"error\":{\"message\":\"boom\"}}"),
                )),
            )
        } else {
            inner(seen, n)
        }
    });
    let up = mock(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &[]).await;
    let q = "Is a failed leader's error shared?";
    let leader = {
        let addr = app.proxy_addr;
        tokio::spawn(async move { Call::ask(q).send(addr).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers: Vec<_> = (0..4)
        .map(|_| {
            let addr = app.proxy_addr;
            tokio::spawn(async move { Call::ask(q).send(addr).await })
        })
        .collect();
    assert_eq!(
        leader.await.unwrap().status,
        500,
        "the leader's error is its own"
    );
    for f in followers {
        let got = f.await.unwrap();
        // Never the leader's error: each asked the upstream itself (or
        // followed a later leader that succeeded).
        assert_eq!(got.status, 200);
        assert!(content_of(&got).starts_with("Answer #"), "{}", got.text());
    }
    // The leader's call, then each follower's own.
    assert_eq!(up.calls(), 2 + 4);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_key_survives_a_restart() {
    let up = mock(llm()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = [("authorization", "Bearer sk-verified-before")];
    let q = "Does a verified key outlive the process?";
    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    verify_key(&app, &key).await;
    assert_eq!(Call::ask(q).headers(&key).send(&app).await.cache(), "miss");
    settle(&app).await;
    app.shutdown().await;
    let calls = up.calls();

    let app = Gateway::new(settings(&up.url(), dir.path())).start().await;
    let got = Call::ask(q).headers(&key).send(&app).await;
    assert_eq!(got.cache(), "hit", "{}", got.header("cache-status"));
    assert_eq!(up.calls(), calls, "served without asking the upstream");
    // Another key is still unverified after the restart.
    let other = Call::ask(q)
        .header("authorization", "Bearer sk-never-seen")
        .send(&app)
        .await;
    assert_eq!(
        other.header("cache-status"),
        "modelcache; fwd=request; detail=unverified-key"
    );
    // The store holds no key, nor its plain hash.
    app.shutdown().await;
    assert_no_file_contains(dir.path(), "sk-verified-before");
    let plain = hex::encode(modelcache::config::key_hash("sk-verified-before"));
    let db = std::fs::read(dir.path().join("modelcache.db")).unwrap();
    let raw = modelcache::config::key_hash("sk-verified-before");
    assert!(
        !db.windows(32).any(|w| w == raw),
        "the key's SHA-256 is stored"
    );
    assert!(!String::from_utf8_lossy(&db).contains(&plain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_honours_a_key_verified_on_the_first() {
    let up = mock(llm()).await;
    let store: std::sync::Arc<dyn modelcache::store::Store> =
        std::sync::Arc::new(modelcache::store::memory::MemoryStore::default());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::new(settings(&up.url(), da.path()))
        .store(store.clone())
        .start()
        .await;
    let b = Gateway::new(settings(&up.url(), db.path()))
        .store(store.clone())
        .start()
        .await;
    let key = [("authorization", "Bearer sk-shared-by-replicas")];
    let q = "Is a key verified on one replica verified on all?";
    verify_key(&a, &key).await;
    assert_eq!(Call::ask(q).headers(&key).send(&a).await.cache(), "miss");
    settle(&a).await;
    let calls = up.calls();
    let got = Call::ask(q).headers(&key).send(&b).await;
    assert_eq!(got.cache(), "hit", "{}", got.header("cache-status"));
    assert_eq!(up.calls(), calls);
    a.shutdown().await;
    b.shutdown().await;
}
