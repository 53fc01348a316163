//! A 3-node JetStream cluster on loopback with replicated (R3) streams: under steady NATS
//! intake the commands stream's leader is killed and restarted, then the events stream's
//! leader, then a follower stays down. Every published command is recorded once, and the
//! events stream holds every event once by message id. The longest pause between two
//! publish acknowledgements (the leader election, seen by a producer) is printed.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use tokio::sync::Mutex;

use crate::support::{TestApp, eventually, free_port, nats_server_binary, original_payload};

struct Node {
    name: String,
    port: u16,
    config: std::path::PathBuf,
    child: Option<Child>,
}

/// Three nats-server processes forming the cluster `mailledger-test`, each with its own
/// store under one temporary directory.
struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports.iter().map(|(_, r)| format!("nats://127.0.0.1:{r}")).collect::<Vec<_>>().join(", ");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (client, route))| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                         jetstream {{ store_dir: {store:?} }}\n\
                         cluster {{ name: mailledger-test, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n"
                    ),
                )
                .unwrap();
                Node { name, port: *client, config, child: None }
            })
            .collect();
        let mut cluster = Self { nodes, _dir: dir };
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster
    }

    fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(node.config.with_extension("log")).unwrap())
            .spawn()
            .expect("nats-server is installed (scripts/ensure-services.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
                node.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} did not start on {}", node.name, node.port);
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// The stream's leader and its followers, once the stream has a leader.
async fn placement(js: &jetstream::Context, stream: &str) -> (String, Vec<String>) {
    let started = Instant::now();
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(cluster) = &info.cluster
            && let Some(leader) = &cluster.leader
        {
            assert_eq!(info.config.num_replicas, 3, "{stream} is replicated three times");
            return (leader.clone(), cluster.replicas.iter().map(|p| p.name.clone()).collect());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn replicated_streams_ride_out_a_leader_and_a_follower_lost() {
    let mut cluster = Cluster::start();
    let urls = cluster.urls();
    let servers: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let client =
        async_nats::ConnectOptions::new().retry_on_initial_connect().connect(servers.as_slice()).await.unwrap();
    let js = jetstream::new(client);
    // The meta leader is elected before the service asks for its streams.
    let probe = || jetstream::stream::Config { name: "PROBE".into(), num_replicas: 3, ..Default::default() };
    eventually(Duration::from_secs(60), || async { js.get_or_create_stream(probe()).await.is_ok() }).await;
    js.delete_stream("PROBE").await.unwrap();

    let app = TestApp::spawn_with(&[("MAILLEDGER_NATS_URL", &urls), ("MAILLEDGER_NATS_REPLICAS", "3")]).await;
    let commands = format!("{}_COMMANDS", app.iso.stream_prefix);
    let events = format!("{}_EVENTS", app.iso.stream_prefix);
    let subject = format!("{}.commands.create", app.iso.namespace);
    let (leader, _) = placement(&js, &commands).await;
    placement(&js, &events).await;
    eprintln!("streams placed; commands led by {leader}");

    // A producer at a steady rate: every command retried until the cluster acknowledges it,
    // under one message id (JetStream drops a second copy within the duplicate window).
    const TOTAL: usize = 600;
    let acks = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(TOTAL)));
    let producer = {
        let (js, subject, acks) = (js.clone(), subject.clone(), acks.clone());
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let body = original_payload(&format!("cluster {i}")).to_string();
                loop {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("cluster-{i}").as_str());
                    let ack = match js.publish_with_headers(subject.clone(), headers, body.clone().into()).await {
                        Ok(future) => tokio::time::timeout(Duration::from_secs(2), future).await,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if let Ok(Ok(_)) = ack {
                        acks.lock().await.push(Instant::now());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let acked = |n: usize| {
        let acks = acks.clone();
        async move { acks.lock().await.len() >= n }
    };

    // 1. The commands stream's leader dies, and comes back.
    eventually(Duration::from_secs(60), || acked(100)).await;
    let i = cluster.index(&leader);
    cluster.kill_node(i);
    eprintln!("killed {leader}");
    eventually(Duration::from_secs(60), || acked(200)).await;
    cluster.start_node(i);

    // 2. The events stream's leader (a new one, maybe) dies, and comes back.
    let (leader, _) = placement(&js, &events).await;
    let j = cluster.index(&leader);
    cluster.kill_node(j);
    eprintln!("killed {leader} (events)");
    eventually(Duration::from_secs(60), || acked(350)).await;
    cluster.start_node(j);

    // 3. A follower of the commands stream dies and stays down to the end.
    let (_, followers) = placement(&js, &commands).await;
    let follower = followers.first().expect("an R3 stream has followers").clone();
    cluster.kill_node(cluster.index(&follower));

    producer.await.unwrap();
    eventually(Duration::from_secs(120), || async { app.email_count().await == TOTAL as i64 }).await;

    // The events stream: every event once by message id, every email's Requested there.
    // (A node is down: the meta leader may be moving, so JetStream requests are retried.)
    let started = Instant::now();
    let reader = loop {
        let made = match js.get_stream(&events).await {
            Ok(stream) => stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .ok(),
            Err(_) => None,
        };
        if let Some(reader) = made {
            break reader;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the events stream cannot be read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut messages = reader.messages().await.unwrap();
    let requested = |seen: &HashMap<String, usize>| seen.keys().filter(|id| id.ends_with(":1")).count();
    let started = Instant::now();
    while requested(&seen) < TOTAL {
        assert!(started.elapsed() < Duration::from_secs(120), "the events stream holds {} emails", requested(&seen));
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await else {
            continue;
        };
        let message = message.unwrap();
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).expect("every event has an id");
        *seen.entry(id.to_string()).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "events seen twice: {doubled:?}");
    assert_eq!(requested(&seen), TOTAL);
    assert_eq!(app.email_count().await, TOTAL as i64, "no command recorded twice");

    let acks = acks.lock().await;
    let pause = acks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!("nats cluster: {TOTAL} commands, longest pause between two acknowledgements {pause:?}");
}
