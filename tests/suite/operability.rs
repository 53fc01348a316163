//! Operating mailledger: every metric the dashboard and the alert rules name is exported
//! and moves under traffic; the compose file names the whole stack; nginx terminates TLS
//! for REST and gRPC in front of a running service. (Traces: `traces.rs`.)

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::smtp::SmtpSink;
use crate::support::{Killed, TestApp, eventually, free_port, original_payload};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WAIT: Duration = Duration::from_secs(30);

/// Every `mailledger_*` metric a file names (histogram series folded into their base name).
fn metric_names(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("mailledger_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(base.to_owned());
        i = end;
    }
    names
}

fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn value(scrape: &str, series: &str) -> f64 {
    scrape.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_name_is_exported_and_moves() {
    let sink = SmtpSink::start().await;
    sink.script(&[(554, "5.7.1 refused by policy")]);
    let app = TestApp::delivering_to(&sink.url(), &[("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "1")]).await;
    let before = app.client.get(&app.metrics).send().await.unwrap().text().await.unwrap();

    // Series whose labels are known are exported before their first step (at 0: see
    // the unit test in `metrics`; other tests in this process may have moved them since).
    for series in [
        "mailledger_commands_total{outcome=\"invalid\",source=\"rest\"} ",
        "mailledger_nats_messages_total{outcome=\"dead_lettered\"} ",
        "mailledger_delivery_attempts_total{outcome=\"transient_failure\"} ",
        "mailledger_cache_requests_total{result=\"error\"} ",
        // Every route and method, before its first request; the process and the build.
        "mailledger_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/emails/{id}/events\"} ",
        "mailledger_grpc_request_duration_seconds_count{method=\"emailService.EmailService/History\"} ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "mailledger_build_info{",
    ] {
        assert!(before.lines().any(|l| l.starts_with(series)), "{series} is not exported from the start");
    }
    let malformed = app.client.post(app.url("/api/v1/emails")).header("content-type", "application/json");
    assert_eq!(malformed.body("{not json").send().await.unwrap().status(), 400);
    let id = app.create(&original_payload("observed")).await;
    app.create(&original_payload("bounced")).await;
    app.publish(original_payload("via nats").to_string(), None).await;
    app.wait_projected(3).await;
    eventually(WAIT, || async { sink.received().len() >= 3 }).await;
    app.get_json(&format!("/api/v1/emails/{id}")).await;
    let mut grpc = app.grpc_client().await;
    grpc.get_by_id(mailledger::transport::grpc::proto::GetByIdReq { email_id: id.clone(), as_of: None }).await.unwrap();

    let mut wanted = metric_names("monitoring/grafana/dashboards/mailledger.json");
    wanted.extend(metric_names("monitoring/alerts.yml"));
    assert!(wanted.len() >= 15, "{wanted:?}");
    // State gauges come from the monitor (every 5 s).
    let scrape_now = || async { app.client.get(&app.metrics).send().await.unwrap().text().await.unwrap() };
    eventually(Duration::from_secs(15), || async {
        let scrape = scrape_now().await;
        wanted.is_subset(&exported(&scrape)) && scrape.contains("mailledger_projection_lag_seconds{")
    })
    .await;
    let scrape = scrape_now().await;
    let names = exported(&scrape);
    let missing: Vec<_> = wanted.difference(&names).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}");

    for series in [
        "mailledger_commands_total{outcome=\"accepted\",source=\"rest\"}",
        "mailledger_commands_total{outcome=\"invalid\",source=\"rest\"}",
        "mailledger_http_requests_total",
        "mailledger_grpc_requests_total",
        "mailledger_nats_messages_total{outcome=\"acked\"}",
        "mailledger_delivery_attempts_total{outcome=\"sent\"}",
        "mailledger_delivery_attempts_total{outcome=\"permanent_failure\"}",
        "mailledger_emails_dead_lettered_total",
        "mailledger_smtp_send_duration_seconds_count",
        "mailledger_events_appended_total{type=\"Persisted\"}",
    ] {
        assert!(value(&scrape, series) > value(&before, series), "{series} did not move");
    }
    assert!(scrape.contains("mailledger_http_requests_total{method=\"POST\",route=\"/api/v1/emails\",status=\"202\"}"));
    assert!(scrape.contains("route=\"/api/v1/emails/{id}\""), "routes are templates, not raw paths");
}

#[test]
fn the_compose_file_names_the_whole_stack() {
    let text = std::fs::read_to_string(format!("{ROOT}/compose/docker-compose.yml")).unwrap();
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    doc.apply_merge().unwrap(); // `<<: *mailledger`
    let services = doc["services"].as_mapping().unwrap();
    for name in [
        "postgres",
        "nats",
        "redis",
        "mailpit",
        "jaeger",
        "prometheus",
        "grafana",
        "nginx",
        "mailledger-1",
        "mailledger-2",
    ] {
        assert!(services.contains_key(name), "compose lacks {name}");
    }
    for instance in ["mailledger-1", "mailledger-2"] {
        assert_eq!(services[instance]["build"]["dockerfile"].as_str(), Some("Dockerfile"));
    }
    let nats = serde_yaml_ng::to_string(&services["nats"]).unwrap();
    assert!(nats.contains("natsdata:/data") && nats.contains("nats.conf"), "JetStream on a persistent volume: {nats}");
    let conf = std::fs::read_to_string(format!("{ROOT}/compose/nats.conf")).unwrap();
    assert!(conf.contains("store_dir: \"/data\"") && conf.contains("sync_interval: always"), "{conf}");
    let prometheus = std::fs::read_to_string(format!("{ROOT}/monitoring/prometheus.yml")).unwrap();
    assert!(
        prometheus.contains("mailledger-1:9090") && prometheus.contains("mailledger-2:9090"),
        "every instance is scraped"
    );
}

/// The compose file as `docker compose config` would validate it, without a Docker
/// engine: YAML merges applied, then the compose-spec JSON schema (vendored in
/// `compose/compose-spec.json`), then what the schema cannot know — every image pinned to
/// a version, every file it mounts or builds from present, the OTLP protocol matching
/// the collector's port. `make compose-check` runs this test.
#[test]
fn the_compose_file_is_valid_compose() {
    let problems = compose_problems(&std::fs::read_to_string(format!("{ROOT}/compose/docker-compose.yml")).unwrap());
    assert!(problems.is_empty(), "compose/docker-compose.yml:\n{}", problems.join("\n"));
    // And each check can fail: the old mistakes are each caught.
    let original = std::fs::read_to_string(format!("{ROOT}/compose/docker-compose.yml")).unwrap();
    for (from, to, caught) in [
        ("    OTEL_EXPORTER_OTLP_PROTOCOL: grpc\n", "", "OTLP"),
        ("axllent/mailpit:v1.27.10", "axllent/mailpit:latest", "not pinned"),
        ("image: redis:7.2.5", "image: redis", "not pinned"),
        ("../nginx/nginx.conf:", "../nginx/nginx.missing.conf:", "does not exist"),
        ("interval: 5s", "interval: [5s]", "schema"),
        ("      - \"exec 3<>", "      - exec 3<>", "schema"),
    ] {
        assert!(original.contains(from), "{from}");
        let mut broken = original.replacen(from, to, 1);
        if from.contains("exec 3<>") {
            // Unquoted, as it was: "Host: localhost" makes the item a mapping.
            broken = broken.replace("grep -q ' 200 '\"", "grep -q ' 200 '").replace("\\\\r\\\\n", "\\r\\n");
        }
        let problems = compose_problems(&broken);
        assert!(problems.iter().any(|p| p.contains(caught)), "{from} -> {to}: {problems:?}");
    }
}

fn compose_problems(text: &str) -> Vec<String> {
    let mut doc: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
        Ok(doc) => doc,
        Err(e) => return vec![format!("schema: not YAML: {e}")],
    };
    doc.apply_merge().unwrap();
    let json: serde_json::Value = serde_json::to_value(&doc).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/compose/compose-spec.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut problems: Vec<String> =
        validator.iter_errors(&json).map(|e| format!("schema: {} at {}", e, e.instance_path())).collect();
    let compose_dir = std::path::Path::new(ROOT).join("compose");
    let Some(services) = json["services"].as_object() else { return problems };
    for (name, service) in services {
        if let Some(image) = service["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/'));
            if !tag.is_some_and(|t| t != "latest" && t.chars().any(|c| c.is_ascii_digit())) {
                problems.push(format!("{name}: image {image} is not pinned to a version"));
            }
        }
        if let Some(context) = service["build"]["context"].as_str() {
            let dockerfile = service["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            let path = compose_dir.join(context).join(dockerfile);
            if !path.exists() {
                problems.push(format!("{name}: build file {} does not exist", path.display()));
            }
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let Some(source) = volume.as_str().and_then(|v| v.split(':').next()) else { continue };
            if source.starts_with('.') && !source.contains("certs") && !compose_dir.join(source).exists() {
                problems.push(format!("{name}: mounted {source} does not exist"));
            }
        }
        let env = &service["environment"];
        if let Some(endpoint) = env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str() {
            let protocol = env["OTEL_EXPORTER_OTLP_PROTOCOL"].as_str().unwrap_or("http/protobuf");
            let wanted = if endpoint.trim_end_matches('/').ends_with(":4317") { "grpc" } else { "http/protobuf" };
            if protocol != wanted {
                problems.push(format!(
                    "{name}: OTLP endpoint {endpoint} speaks {wanted}, but OTEL_EXPORTER_OTLP_PROTOCOL is {protocol}"
                ));
            }
        }
    }
    problems
}

#[test]
fn the_image_is_slim_cached_and_not_root() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let at = |s: &str| dockerfile.find(s).unwrap_or_else(|| panic!("Dockerfile lacks {s}"));
    assert!(at("COPY Cargo.toml Cargo.lock") < at("COPY src src"), "dependencies get a layer before the code");
    assert!(at("cargo build --release --locked") < at("COPY src src"), "dependencies are built before the code");
    assert!(
        dockerfile.contains("CARGO_PROFILE_RELEASE_DEBUG=0")
            && dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")
    );
    assert!(dockerfile.contains("USER 10001"), "the runtime image is not root");
    for from in dockerfile.lines().filter_map(|l| l.strip_prefix("FROM ")) {
        let image = from.split_whitespace().next().unwrap();
        let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
        assert!(tag.starts_with(|c: char| c.is_ascii_digit()), "{image} is not pinned to a version");
    }
    let ignore = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).unwrap();
    assert!(ignore.lines().next().is_some_and(|l| l.starts_with('#')) && ignore.contains("\n*\n"), "{ignore}");
    // Everything the code embeds is in the build context.
    for path in ["src", "migrations", "config", "proto", "build.rs", "benches"] {
        assert!(ignore.contains(&format!("!{path}\n")), "{path} is not in the build context");
        assert!(dockerfile.contains(&format!("COPY {path}")) || dockerfile.contains(path), "{path} not copied");
    }
}

#[tokio::test]
async fn nginx_terminates_tls_for_rest_and_grpc() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let status = Command::new("bash")
        .arg(format!("{ROOT}/scripts/make-cert.sh"))
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let port = free_port();
    let http_port = app.http.rsplit(':').next().unwrap().to_owned();
    let grpc_port = app.grpc.rsplit(':').next().unwrap().to_owned();
    let conf = std::fs::read_to_string(format!("{ROOT}/nginx/nginx.local.conf"))
        .unwrap()
        .replace("__CERT_DIR__", certs.to_str().unwrap())
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{http_port}"))
        .replace("127.0.0.1:15051", &format!("127.0.0.1:{grpc_port}"))
        .replace("127.0.0.1:18443", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let nginx =
        ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap_or("nginx");
    let prefix = format!("{}/", dir.path().display());
    let check = Command::new(nginx).args(["-t", "-p", &prefix, "-c", "nginx.conf"]).output().unwrap();
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let _nginx = Killed(
        Command::new(nginx)
            .args(["-p", &prefix, "-c", "nginx.conf", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(Duration::from_secs(10), || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() }).await;

    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .default_headers(app.auth_headers())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let r = client.post(format!("{base}/api/v1/emails")).json(&original_payload("through nginx")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.wait_projected(1).await;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel =
        tonic::transport::Channel::from_shared(base).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut grpc = crate::support::grpc_with_key(channel, &app.key);
    let email = grpc
        .get_by_id(mailledger::transport::grpc::proto::GetByIdReq { email_id: id, as_of: None })
        .await
        .unwrap()
        .into_inner()
        .email
        .unwrap();
    assert_eq!(email.subject, "through nginx");
}
