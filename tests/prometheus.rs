//! A real Prometheus (Debian's `prometheus` package, installed by `.ci/run`)
//! scrapes a gateway that carries real traffic of two tenants. Every PromQL
//! expression in the shipped Grafana dashboards is then evaluated through
//! Prometheus's HTTP API and must return data of the expected shape, and the
//! hit rate Prometheus computes must equal the hits and misses this test
//! caused.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};

/// Scrape (and evaluation) interval of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);

fn prometheus_bin() -> String {
    std::env::var("MODELCACHE_PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {s}s\n  evaluation_interval: {s}s\nscrape_configs:\n  - job_name: modelcache\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n",
            s = SCRAPE.as_secs()
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(prometheus_bin())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): install Debian's prometheus package \
                 (`apt-get install prometheus`; .ci/run does) or set MODELCACHE_PROMETHEUS",
                prometheus_bin()
            )
        });
    Prometheus { child, addr }
}

impl Prometheus {
    /// Waits until the HTTP API listens and says it is ready.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}");
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && Call::get("/-/ready").send(self.addr).await.status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("prometheus not ready after 60 s");
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Prometheus {
    async fn get(&self, path_and_query: &str) -> Value {
        let got = Call::get(path_and_query).send(self.addr).await;
        assert_eq!(got.status, 200, "{path_and_query}: {}", got.text());
        let v = got.json();
        assert_eq!(v["status"], "success", "{path_and_query}: {v}");
        v["data"].clone()
    }

    /// An instant query; the result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .get(&format!("/api/v1/query?query={}", encode(promql)))
            .await;
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    async fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql).await;
        r.first().map(value_of)
    }

    async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut ok: impl AsyncFnMut(&Self) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if ok(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("Prometheus: timed out waiting for {what}");
    }
}

fn value_of(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Answers like `llm()`, but makes the upstream too slow (a 504 from the
/// gateway: result "error") for questions that mention "stall".
fn upstream() -> Handler {
    let inner = llm();
    Arc::new(move |seen: &Seen, n: usize| {
        if question(seen).contains("stall") {
            Reply::Delay(Duration::from_secs(2), Box::new(inner(seen, n)))
        } else {
            inner(seen, n)
        }
    })
}

/// Every `expr` of every panel target in a dashboard, with the panel title.
fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(targets) = m.get("targets").and_then(Value::as_array) {
                    for t in targets {
                        if let Some(e) = t.get("expr").and_then(Value::as_str) {
                            out.push((title.to_string(), e.to_string()));
                        }
                    }
                }
                for (k, x) in m {
                    if k != "targets" {
                        walk(x, title, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], "", &mut out);
    out
}

/// Grafana's macros, as the test evaluates them: windows wide enough to
/// cover the whole test, every tenant, every result.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10m")
        .replace("$__range", "10m")
        .replace("$__interval", "15s")
        .replace("${tenant}", ".*")
        .replace("$tenant", ".*")
        .replace("${result}", ".*")
        .replace("$result", ".*")
}

/// Labels the result series must carry: those of the expression's first
/// `by (...)`, minus `le` when a quantile consumes it.
fn expected_labels(expr: &str) -> BTreeSet<String> {
    let Some(i) = expr.find("by (").or_else(|| expr.find("by(")) else {
        return BTreeSet::new();
    };
    let rest = &expr[i..];
    let open = rest.find('(').unwrap_or(0);
    let close = rest.find(')').unwrap_or(rest.len());
    rest[open + 1..close]
        .split(',')
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .filter(|l| !(l == "le" && expr.contains("histogram_quantile")))
        .collect()
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("dashboards/grafana");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 2,
        "the overview and the threshold-tuning dashboards"
    );
    out
}

#[derive(Default, Debug)]
struct Tally {
    hits: u32,
    misses: u32,
    sent: u32,
}

#[tokio::test]
async fn a_real_prometheus_answers_every_dashboard_query_from_real_traffic() {
    let up = mock(upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[upstream]
url = "{}"
header_timeout = "300ms"
[cache]
threshold = 0.8
[prices]
"gpt-test" = {{ prompt = 1.0, completion = 2.0 }}
[auth]
unknown_keys = "reject"
[[tenants]]
name = "alpha"
match_header = {{ name = "x-team", value = "alpha" }}
[[tenants]]
name = "beta"
match_header = {{ name = "x-team", value = "beta" }}
"#,
        up.url()
    );
    let started = Instant::now();
    let app = Gateway::new(settings_from(&text, dir.path(), &[]))
        .start()
        .await;
    let mut prom = start_prometheus(dir.path(), app.admin_addr);
    prom.ready().await;

    // Every series exists at zero before any traffic: wait for two scrapes of them.
    prom.wait_until("the gateway's series", Duration::from_secs(60), async |p| {
        p.scalar("count(modelcache_requests_total{tenant=\"alpha\"})")
            .await
            .is_some_and(|n| n >= 15.0)
    })
    .await;
    tokio::time::sleep(SCRAPE * 2).await;

    // Traffic: misses, exact and semantic hits, streams, bypasses, errors,
    // unknown callers; tallied from what the gateway said.
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    let questions = [
        "how do I reverse a list in python",
        "what is the boiling point of water",
        "name three prime numbers",
        "explain the rules of chess briefly",
    ];
    let mut errors = 0;
    for (team, take) in [("alpha", 4), ("beta", 2)] {
        let h = [("x-team", team)];
        for (i, q) in questions.iter().take(take).enumerate() {
            // A first-time streamed question: a streamed miss.
            let mut fresh = ask(&format!("{q} told as a story for {team}"));
            fresh["stream"] = json!(true);
            let mut bodies = vec![fresh, ask(q)];
            // The same words, the first moved to the end: a semantic hit.
            let (first, rest) = q.split_once(' ').unwrap_or((q, ""));
            bodies.push(ask(&format!("{rest} {first}")));
            let mut streamed = ask(q);
            streamed["stream"] = json!(true);
            bodies.push(streamed);
            if i % 2 == 0 {
                bodies.push(ask(q));
            }
            for b in bodies {
                let got = Call::chat(b).headers(&h).send(&app).await;
                assert_eq!(got.status, 200);
                let t = tally.entry(team).or_default();
                t.sent += 1;
                match got.cache().as_str() {
                    "hit" => t.hits += 1,
                    "miss" => t.misses += 1,
                    other => panic!("unexpected {other}"),
                }
                settle(&app).await;
            }
        }
        // A bypass and an error per tenant.
        let got = Call::ask("never stored")
            .headers(&[("x-team", team), ("cache-control", "no-store")])
            .send(&app)
            .await;
        assert_eq!(got.cache(), "bypass");
        let got = Call::ask("please stall").headers(&h).send(&app).await;
        assert_eq!(got.status, 504);
        errors += 1;
        tally.entry(team).or_default().sent += 2;
    }
    let unknown = Call::ask("who am I").send(&app).await;
    assert_eq!(unknown.status, 401);
    let sent: u32 = tally.values().map(|t| t.sent).sum::<u32>() + 1;
    for t in tally.values() {
        assert!(t.hits > 0 && t.misses > 0, "{tally:?}");
    }
    // Entries are counted within a second of their write.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    prom.wait_until(
        "the scrape after the traffic",
        Duration::from_secs(30),
        async |p| p.scalar("sum(modelcache_requests_total)").await == Some(sent as f64),
    )
    .await;
    tokio::time::sleep(SCRAPE * 2).await;

    // Exact counts, as the gateway reported them to Prometheus.
    for (team, t) in &tally {
        let hits = prom
            .scalar(&format!(
                "sum(modelcache_requests_total{{tenant=\"{team}\",result=~\"hit_exact|hit_semantic\"}})"
            ))
            .await;
        let misses = prom
            .scalar(&format!(
                "sum(modelcache_requests_total{{tenant=\"{team}\",result=\"miss\"}})"
            ))
            .await;
        assert_eq!(
            (hits, misses),
            (Some(t.hits as f64), Some(t.misses as f64)),
            "{team}"
        );
    }
    assert_eq!(
        prom.scalar("sum(modelcache_requests_total{result=\"error\"})")
            .await,
        Some(errors as f64 + 1.0),
        "two upstream timeouts and one unknown key"
    );

    // Every dashboard query returns data of the expected shape.
    let mut hit_rate_checked = 0;
    let mut checked = 0;
    for (path, dash) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let all = exprs(&dash);
        assert!(!all.is_empty(), "{name} has no queries");
        for (title, raw) in all {
            let expr = substitute(&raw);
            assert!(
                !expr.contains('$'),
                "{name} / {title}: unknown macro in {raw}"
            );
            let result = prom.query(&expr).await;
            assert!(!result.is_empty(), "{name} / {title}: no data for {expr}");
            assert!(
                result.iter().any(|s| value_of(s).is_finite()),
                "{name} / {title}: only NaN for {expr}: {result:?}"
            );
            for label in expected_labels(&expr) {
                assert!(
                    result.iter().all(|s| s["metric"].get(&label).is_some()),
                    "{name} / {title}: a series without `{label}` from {expr}"
                );
            }
            if expected_labels(&expr).contains("tenant")
                && expr.contains("modelcache_requests_total")
            {
                let tenants: BTreeSet<&str> = result
                    .iter()
                    .filter_map(|s| s["metric"]["tenant"].as_str())
                    .collect();
                assert!(
                    tenants.contains("alpha") && tenants.contains("beta"),
                    "{name} / {title}: {tenants:?}"
                );
            }
            if title.to_lowercase().contains("hit rate")
                && expr.contains("modelcache_requests_total")
            {
                if expected_labels(&expr).contains("tenant") {
                    for s in &result {
                        let team = s["metric"]["tenant"].as_str().unwrap_or("");
                        if let Some(t) = tally.get(team) {
                            let want = t.hits as f64 / (t.hits + t.misses) as f64;
                            let got = value_of(s);
                            assert!(
                                (got - want).abs() < 1e-9,
                                "{title}: Prometheus says {got} for {team}, the test caused {want} ({t:?})"
                            );
                            hit_rate_checked += 1;
                        }
                    }
                } else {
                    let (h, m) = tally
                        .values()
                        .fold((0, 0), |(h, m), t| (h + t.hits, m + t.misses));
                    let want = h as f64 / (h + m) as f64;
                    let got = value_of(&result[0]);
                    assert!(
                        (got - want).abs() < 1e-9,
                        "{title}: Prometheus says {got} overall, the test caused {want}"
                    );
                    hit_rate_checked += 1;
                }
            }
            checked += 1;
        }
        // Template variables: label_values(metric, label).
        for var in dash["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let q = var["query"]
                .as_str()
                .map(str::to_string)
                .or_else(|| var["query"]["query"].as_str().map(str::to_string))
                .unwrap_or_default();
            if let Some(args) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            {
                let (metric, label) = args.rsplit_once(',').unwrap();
                let data = prom
                    .get(&format!(
                        "/api/v1/label/{}/values?match[]={}",
                        label.trim(),
                        encode(metric.trim())
                    ))
                    .await;
                let values: Vec<&str> = data
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert!(
                    values.contains(&"alpha") && values.contains(&"beta"),
                    "{name}: variable {q} gives {values:?}"
                );
            }
        }
    }
    // Two tenants in the per-tenant panel, plus the overall stat and series.
    assert!(
        hit_rate_checked >= 3,
        "hit-rate panels checked: {hit_rate_checked}"
    );
    eprintln!("{checked} dashboard queries answered by Prometheus");

    // Render each dashboard to a PNG from the same queries and data. Grafana
    // is in no registry this machine reaches; dashboards/render.py lays the
    // panels out by their gridPos and draws them with matplotlib.
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboards");
    std::fs::create_dir_all(&out_dir).unwrap();
    let window = started.elapsed().as_secs() + 30;
    for (path, _) in dashboards() {
        let png = out_dir.join(path.with_extension("png").file_name().unwrap());
        let out = Command::new(python())
            .arg(repo_root().join("dashboards/render.py"))
            .arg("--prometheus")
            .arg(format!("http://{}", prom.addr))
            .arg("--dashboard")
            .arg(&path)
            .arg("--out")
            .arg(&png)
            .arg("--range-seconds")
            .arg(window.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); `make test` creates .venv", python()));
        assert!(
            out.status.success(),
            "render {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "render summary ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(
            summary["drawn"], summary["panels"],
            "every panel drawn with data: {summary}"
        );
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000);
        eprintln!("rendered {} ({summary})", png.display());
    }
    drop(prom);
    app.shutdown().await;
}
