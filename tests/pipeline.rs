//! Tier: one real server (Prosody).
//!
//! The request pipeline (issue 20): every dialect records the same series. For each dialect —
//! Tigase, `/v1` writes, `/v1` reads, tokens, Matrix, the Agent API, the status page, the
//! operations endpoints, and a path no route serves — an accepted and a refused request; then
//! `/metrics` must show, per dialect, `extpresence_http_requests_total{dialect,status}`,
//! `extpresence_http_refused_total{dialect,code}` and the latency histogram's count, exactly;
//! `extpresence_updates_total` must count the writes only (a refused read or token call is no
//! refused update); and each refusal is logged with its dialect and code (the status page's
//! failed sign-in too).

#[macro_use]
mod common;

use std::collections::BTreeMap;

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::DOMAIN;

/// The samples of a Prometheus/OpenMetrics text: (name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let labels = rest
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.insert((name, labels), value.parse().expect("a number"));
    }
    out
}

async fn scrape(ext: &Ext) -> Samples {
    let (code, text) = request(ext.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200, "{text}");
    parse(&text)
}

fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.get(&(name.to_string(), labels)).copied().unwrap_or(0.0)
}

/// One request of the table: what to send and what the pipeline must record.
struct Case {
    dialect: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    status: u16,
    /// The refusal code counted, for a refused request.
    code: Option<&'static str>,
}

fn case(
    dialect: &'static str,
    method: &'static str,
    path: String,
    headers: &[(&'static str, &str)],
    body: &'static str,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        dialect,
        method,
        path,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        body,
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_records_the_same_series() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice", "bob"]).await;
    common::alice_and_bob_mutual(&server).await;
    let mut ext = Ext::start(
        server.component_port(),
        DOMAIN,
        common::COMPONENT,
        common::SECRET,
    )
    .await;
    ext.wait_privileged(1).await;
    let alice = format!("alice@{DOMAIN}");
    let json = ("Content-Type", "application/json");
    let key = ("Api-Key", API_KEY);
    let bearer = format!("Bearer {API_KEY}");
    let host = ext.http.to_string();

    let cases = vec![
        // Tigase
        case(
            "tigase",
            "POST",
            format!("/rest/user/{alice}/status"),
            &[key, json],
            r#"{"available": true, "status": "In a meeting"}"#,
            200,
            None,
        ),
        case(
            "tigase",
            "POST",
            format!("/rest/user/{alice}/status"),
            &[json],
            r#"{"available": true}"#,
            401,
            Some("missing_api_key"),
        ),
        // /v1 writes
        case(
            "v1",
            "PUT",
            format!("/v1/users/{alice}/status"),
            &[key, json],
            r#"{"presence": "away", "source": "pbx"}"#,
            200,
            None,
        ),
        case(
            "v1",
            "PUT",
            format!("/v1/users/{alice}/status"),
            &[("Api-Key", "not-a-key"), json],
            r#"{"presence": "away"}"#,
            403,
            Some("invalid_api_key"),
        ),
        // /v1 reads
        case(
            "v1",
            "GET",
            format!("/v1/users/{alice}/status"),
            &[key],
            "",
            200,
            None,
        ),
        case(
            "v1",
            "GET",
            "/v1/users/alice@elsewhere.example/presence".into(),
            &[key],
            "",
            403,
            Some("domain_not_served"),
        ),
        // tokens
        case("v1", "GET", "/v1/tokens".into(), &[key], "", 200, None),
        case(
            "v1",
            "PATCH",
            "/v1/tokens".into(),
            &[key],
            "",
            405,
            Some("method_not_allowed"),
        ),
        // Matrix
        case(
            "matrix",
            "PUT",
            "/_matrix/client/v3/presence/@alice:localhost/status".into(),
            &[("Authorization", &bearer), json],
            r#"{"presence": "online", "status_msg": "Here"}"#,
            200,
            None,
        ),
        case(
            "matrix",
            "GET",
            "/_matrix/client/v3/presence/@alice:localhost/status".into(),
            &[],
            "",
            401,
            Some("missing_api_key"),
        ),
        // The Agent API
        case(
            "waher",
            "POST",
            format!("/Agent/Xmpp/GetRoster?user={alice}"),
            &[key, json],
            "{}",
            200,
            None,
        ),
        case(
            "waher",
            "POST",
            format!("/Agent/Xmpp/GetRoster?user={alice}"),
            &[key, ("Content-Type", "image/png")],
            "{}",
            406,
            Some("not_acceptable"),
        ),
        // The status page: the form, and a failed sign-in.
        case("ui", "GET", "/".into(), &[], "", 200, None),
        case(
            "ui",
            "POST",
            "/login".into(),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", &format!("http://{host}")),
            ],
            "key=wrong-key",
            401,
            Some("invalid_api_key"),
        ),
        // Operations
        case("ops", "GET", "/healthz".into(), &[], "", 200, None),
        case(
            "ops",
            "POST",
            "/healthz".into(),
            &[],
            "",
            405,
            Some("method_not_allowed"),
        ),
        // No route
        case(
            "none",
            "GET",
            "/no/such/path".into(),
            &[],
            "",
            404,
            Some("not_found"),
        ),
    ];

    let before = scrape(&ext).await;
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) =
            request(ext.http, c.method, &c.path, &headers, c.body.as_bytes()).await;
        assert_eq!(status, c.status, "{} {}: {body}", c.method, c.path);
    }
    let after = scrape(&ext).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };

    // Expected per dialect: requests by status, refusals by code, histogram count.
    let mut by_status: BTreeMap<(&str, u16), f64> = BTreeMap::new();
    let mut by_code: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let mut per_dialect: BTreeMap<&str, f64> = BTreeMap::new();
    for c in &cases {
        *by_status.entry((c.dialect, c.status)).or_default() += 1.0;
        if let Some(code) = c.code {
            *by_code.entry((c.dialect, code)).or_default() += 1.0;
        }
        *per_dialect.entry(c.dialect).or_default() += 1.0;
    }
    // The first scrape is an ops request answered before the second.
    *by_status.entry(("ops", 200)).or_default() += 1.0;
    *per_dialect.entry("ops").or_default() += 1.0;

    for ((dialect, status), n) in &by_status {
        let status = status.to_string();
        assert_eq!(
            delta(
                "extpresence_http_requests_total",
                &[("dialect", dialect), ("status", &status)]
            ),
            *n,
            "requests_total{{dialect={dialect},status={status}}}"
        );
    }
    for ((dialect, code), n) in &by_code {
        assert_eq!(
            delta(
                "extpresence_http_refused_total",
                &[("dialect", dialect), ("code", code)]
            ),
            *n,
            "refused_total{{dialect={dialect},code={code}}}"
        );
    }
    for (dialect, n) in &per_dialect {
        assert_eq!(
            delta(
                "extpresence_http_request_duration_seconds_count",
                &[("dialect", dialect)]
            ),
            *n,
            "histogram count of {dialect}"
        );
        assert!(
            delta(
                "extpresence_http_request_duration_seconds_bucket",
                &[("dialect", dialect), ("le", "+Inf")]
            ) == *n,
            "histogram +Inf bucket of {dialect}"
        );
    }
    // Nothing refused was counted under another code or dialect.
    let refused_total = |s: &Samples| -> f64 {
        s.iter()
            .filter(|((name, _), _)| name == "extpresence_http_refused_total")
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(
        refused_total(&after) - refused_total(&before),
        by_code.values().sum::<f64>(),
        "every refusal counted once"
    );

    // Updates: the three accepted writes (Tigase, /v1 PUT, Matrix PUT) and the two refused
    // writes; the refused read and token call are no refused updates.
    let outcome = |o: &str| delta("extpresence_updates_total", &[("outcome", o)]);
    assert_eq!(outcome("set"), 3.0);
    assert_eq!(outcome("rejected"), 2.0);
    assert_eq!(outcome("failed"), 0.0);

    // Each refusal is logged with its dialect and code (rate-limited: 9 here, under the 10 of a
    // period), the failed sign-in of the page too.
    for (dialect, code) in [
        ("tigase", "missing_api_key"),
        ("v1", "invalid_api_key"),
        ("v1", "domain_not_served"),
        ("v1", "method_not_allowed"),
        ("matrix", "missing_api_key"),
        ("waher", "not_acceptable"),
        ("ui", "invalid_api_key"),
        ("ops", "method_not_allowed"),
        ("none", "not_found"),
    ] {
        let needle = format!("dialect=\"{dialect}\"");
        ext.wait_log("request refused").await;
        let log = ext.log();
        assert!(
            log.lines().any(|l| l.contains("request refused")
                && l.contains(&needle)
                && l.contains(&format!("code=\"{code}\""))),
            "no 'request refused' line for {dialect} {code}:\n{log}"
        );
    }
}
