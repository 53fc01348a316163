//! The proof log: every event sealed (those from before the log on first start), signed
//! checkpoints on REST, gRPC, NATS and the CLI, inclusion and consistency proofs checked
//! by an independent implementation (support/rfc9162.rs), tampering on a real database
//! detected and named, offline verification of exports, and bad input refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailledger::proof::note::{Checkpoint, SignerKey};
use serde_json::Value;

use crate::support::rfc9162::{self, b64};
use crate::support::{Isolation, TestApp, db, eventually, fresh_database, original_payload};

const BIN: &str = env!("CARGO_BIN_EXE_mailledger");

fn mailledger(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).envs(env.iter().cloned()).env_remove("RUST_LOG").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// A key pair made by `mailledger ledger keygen`: (private key file, verifier key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{}.key", name.replace('/', "_")));
    let (code, out, err) = mailledger(&[], &["ledger", "keygen", "--name", name, "--out", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let public = out.trim().to_owned();
    assert_eq!(std::fs::read_to_string(format!("{}.pub", path.display())).unwrap().trim(), public);
    let (code, _, err) = mailledger(&[], &["ledger", "keygen", "--name", name, "--out", path.to_str().unwrap()]);
    assert_ne!(code, 0, "a key file is never overwritten");
    assert!(err.contains("never overwritten"), "{err}");
    (path, public)
}

fn signing(key: &Path) -> [(&'static str, String); 2] {
    [
        ("MAILLEDGER_SIGNING_KEY", key.display().to_string()),
        ("MAILLEDGER__PROOF__CHECKPOINT_INTERVAL", "100ms".to_owned()),
    ]
}

async fn spawn_signing(iso: Isolation, key: &Path) -> TestApp {
    let env = signing(key);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestApp::spawn_in(iso, &extra).await
}

/// Waits until a signed checkpoint covers every event in the store; returns it.
async fn covered(app: &TestApp) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let total = db::all_event_count(&app.pool).await;
        let (status, body) = app.get_json("/api/v1/ledger/checkpoint").await;
        if status == 200 && body["size"].as_i64() == Some(total) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint covers the {total} events: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks one REST inclusion entry from scratch: its canonical bytes against the row,
/// its leaf hash, its path to `root`.
async fn check_entry(app: &TestApp, entry: &Value, size: u64, root: &rfc9162::H) {
    let row = db::raw_event(&app.pool, entry["position"].as_i64().unwrap()).await;
    let canonical = rfc9162::canonical(
        row.position,
        &row.aggregate_type,
        &row.aggregate_id,
        row.sequence,
        &row.event_type,
        &row.event_version,
        row.micros,
        &row.payload,
        &row.metadata,
    );
    use base64::Engine;
    let given = base64::engine::general_purpose::STANDARD.decode(entry["canonical"].as_str().unwrap()).unwrap();
    assert_eq!(given, canonical, "the canonical bytes are the row's");
    let leaf = rfc9162::leaf(&canonical);
    assert_eq!(b64(entry["leaf_hash"].as_str().unwrap()), leaf);
    let path: Vec<_> = entry["hashes"].as_array().unwrap().iter().map(|h| b64(h.as_str().unwrap())).collect();
    assert!(rfc9162::inclusion_ok(entry["leaf_index"].as_u64().unwrap(), size, leaf, &path, root), "{entry}");
}

#[tokio::test]
async fn proofs_check_out_with_an_independent_verifier_on_rest_grpc_nats_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "mailledger/test");
    // Events from before the log: sealed on the first start.
    let iso = Isolation::new();
    let before = fresh_database(&iso).await;
    let old = crate::support::commit_email(&before, "written before the log").await;
    before.close().await;
    let app = spawn_signing(iso, &key).await;
    let mut ids = vec![old.to_string()];
    for i in 0..3 {
        ids.push(app.create(&original_payload(&format!("proof {i}"))).await);
    }
    let first = covered(&app).await;
    let (origin, size, root) = rfc9162::open_checkpoint(first["note"].as_str().unwrap(), &public).expect("signed");
    assert_eq!(origin, format!("mailledger/{}", app.iso.database));
    assert_eq!((size as i64, b64(first["root"].as_str().unwrap())), (first["size"].as_i64().unwrap(), root));

    // Every event of each email, in that checkpoint.
    for id in &ids {
        let (status, body) = app.get_json(&format!("/api/v1/ledger/proof/inclusion?email={id}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checkpoint"]["size"].as_u64(), Some(size));
        let proofs = body["proofs"].as_array().unwrap();
        assert_eq!(proofs.len(), 2);
        for p in proofs {
            check_entry(&app, p, size, &root).await;
        }
    }
    // Any event by position, key events too (admin).
    let positions = db::positions(&app.pool).await;
    let key_position = db::key_events(&app.pool).await[0].position;
    let (status, body) = app.get_json(&format!("/api/v1/ledger/proof/inclusion?position={key_position}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["proofs"][0]["aggregate_type"], "ApiKey");
    check_entry(&app, &body["proofs"][0], size, &root).await;

    // History grows; the new checkpoint extends the old one.
    for i in 3..5 {
        app.create(&original_payload(&format!("proof {i}"))).await;
    }
    let second = covered(&app).await;
    let (_, size2, root2) = rfc9162::open_checkpoint(second["note"].as_str().unwrap(), &public).unwrap();
    let (status, body) = app.get_json(&format!("/api/v1/ledger/proof/consistency?first={size}&second={size2}")).await;
    assert_eq!(status, 200, "{body}");
    let hashes: Vec<_> = body["hashes"].as_array().unwrap().iter().map(|h| b64(h.as_str().unwrap())).collect();
    assert!(rfc9162::consistency_ok(size, size2, &hashes, &root, &root2), "{body}");
    let (status, old_one) = app.get_json(&format!("/api/v1/ledger/checkpoint?size={size}")).await;
    assert_eq!((status, &old_one["note"]), (200, &first["note"]));

    // gRPC.
    let mut grpc = app.grpc_client().await;
    use mailledger::transport::grpc::proto::{CheckpointReq, ConsistencyReq, InclusionReq};
    let c = grpc.checkpoint(CheckpointReq { size: 0 }).await.unwrap().into_inner();
    assert_eq!((c.size, c.root.as_slice()), (size2, root2.as_slice()));
    let inc = grpc
        .inclusion_proof(InclusionReq { email_id: ids[1].clone(), position: None, tree_size: size })
        .await
        .unwrap()
        .into_inner();
    for p in &inc.proofs {
        let path: Vec<rfc9162::H> = p.hashes.iter().map(|h| h.as_slice().try_into().unwrap()).collect();
        assert!(rfc9162::inclusion_ok(p.leaf_index, size, rfc9162::leaf(&p.canonical), &path, &root));
    }
    let cons = grpc.consistency_proof(ConsistencyReq { first: 1, second: 0 }).await.unwrap().into_inner();
    let path: Vec<rfc9162::H> = cons.hashes.iter().map(|h| h.as_slice().try_into().unwrap()).collect();
    let first_root: rfc9162::H = cons.first_root.as_slice().try_into().unwrap();
    assert!(rfc9162::consistency_ok(1, size2, &path, &first_root, &root2));
    for (req, code) in [
        (ConsistencyReq { first: 0, second: 0 }, tonic::Code::InvalidArgument),
        (ConsistencyReq { first: 3, second: 2 }, tonic::Code::InvalidArgument),
        (ConsistencyReq { first: 1, second: size2 + 100 }, tonic::Code::InvalidArgument),
    ] {
        assert_eq!(grpc.consistency_proof(req).await.unwrap_err().code(), code);
    }
    let bad = InclusionReq { email_id: "nope".into(), position: None, tree_size: 0 };
    assert_eq!(grpc.inclusion_proof(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // A copy outside the database: on NATS, one message per checkpoint, id = size.
    let stream = format!("{}_CHECKPOINTS", app.iso.stream_prefix);
    eventually(Duration::from_secs(5), || async {
        let s = app.js.get_stream(&stream).await.unwrap();
        let last = s.get_last_raw_message_by_subject(&format!("{}.checkpoints", app.iso.namespace)).await;
        last.ok().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).as_deref() == second["note"].as_str()
    })
    .await;

    // The CLI: an email's proofs, and the newest note.
    let env = app.iso.env();
    let (code, out, err) = mailledger(&env, &["ledger", "prove", &ids[2]]);
    assert_eq!(code, 0, "{err}");
    let proved: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(proved["proofs"].as_array().unwrap().len(), 2);
    check_entry(&app, &proved["proofs"][1], size2, &root2).await;
    let (_, note, _) = mailledger(&env, &["ledger", "checkpoint"]);
    assert_eq!(note, second["note"].as_str().unwrap());
    let (code, status, err) = mailledger(&env, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        status.contains(&format!("proof log: {size2} events sealed; newest checkpoint of size {size2}")),
        "{status}"
    );

    // Bad input: a clear 4xx each.
    let other_tenant = app.new_key(serde_json::json!({"name": "b", "scopes": "read", "tenant": "b"})).await;
    let as_b = crate::support::client_with_key(&other_tenant);
    let r = as_b.get(app.url(&format!("/api/v1/ledger/proof/inclusion?email={}", ids[1]))).send().await.unwrap();
    assert_eq!(r.status(), 404, "another tenant's email is not found");
    let r =
        as_b.get(app.url(&format!("/api/v1/ledger/proof/inclusion?position={}", positions[1]))).send().await.unwrap();
    assert_eq!(r.status(), 403, "a position needs admin");
    let r = reqwest::Client::new().get(app.url("/api/v1/ledger/checkpoint")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    for (path, status, says) in [
        ("/api/v1/ledger/proof/inclusion?position=999999".to_owned(), 404, "not in the log"),
        (format!("/api/v1/ledger/proof/inclusion?email={}&size=0", ids[1]), 400, "at least 1"),
        (
            format!("/api/v1/ledger/proof/inclusion?email={}&size={}", ids[1], size2 + 1000),
            404,
            "no checkpoint of size",
        ),
        ("/api/v1/ledger/proof/inclusion?position=abc".to_owned(), 400, "position"),
        ("/api/v1/ledger/proof/inclusion".to_owned(), 400, "email"),
        ("/api/v1/ledger/proof/inclusion?email=00000000-0000-0000-0000-000000000000".to_owned(), 404, "no email"),
        ("/api/v1/ledger/proof/consistency?first=0".to_owned(), 400, "start at 1"),
        ("/api/v1/ledger/proof/consistency?first=3&second=2".to_owned(), 400, "out of order"),
        (format!("/api/v1/ledger/proof/consistency?first=1&second={}", size2 + 1), 400, "past the newest"),
        ("/api/v1/ledger/proof/consistency?first=x".to_owned(), 400, "first"),
        ("/api/v1/ledger/proof/consistency".to_owned(), 400, "first"),
        ("/api/v1/ledger/proof/consistency?first=-1".to_owned(), 400, "first"),
        ("/api/v1/ledger/checkpoint?size=99999".to_owned(), 404, "no checkpoint"),
        ("/api/v1/ledger/checkpoint?size=1e3".to_owned(), 400, "size"),
    ] {
        let (got, body) = app.get_json(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{path}: {body}");
    }
}

/// The verdict of `mailledger ledger verify` on database `name`.
fn verify_db(iso: &Isolation, name: &str, public: &str, extra: &[&str]) -> (i32, String) {
    let mut env = iso.env();
    env.retain(|(k, _)| k != "MAILLEDGER_DATABASE_URL");
    env.push(("MAILLEDGER_DATABASE_URL".into(), format!("{}/{name}", crate::support::server_url())));
    let mut args = vec!["ledger", "verify", "--public-key", public];
    args.extend_from_slice(extra);
    let (code, _, err) = mailledger(&env, &args);
    (code, err)
}

#[tokio::test]
async fn tampering_with_a_real_database_is_detected_and_named_and_exports_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "mailledger/audit");
    let app = spawn_signing(Isolation::new(), &key).await;
    for i in 0..4 {
        app.create(&original_payload(&format!("proof {i}"))).await;
    }
    let first = covered(&app).await;
    let env = app.iso.env();
    let export1 = dir.path().join("export1.ndjson");
    let (code, out, err) = mailledger(&env, &["replay", "--proofs"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&export1, &out).unwrap();
    for i in 4..6 {
        app.create(&original_payload(&format!("proof {i}"))).await;
    }
    let second = covered(&app).await;
    let kept = dir.path().join("kept.note");
    std::fs::write(&kept, second["note"].as_str().unwrap()).unwrap();
    let (code, out, _) = mailledger(&env, &["replay", "--proofs"]);
    assert_eq!(code, 0);
    let export2 = dir.path().join("export2.ndjson");
    std::fs::write(&export2, &out).unwrap();

    let iso = app.iso.clone();
    let mut app = app;
    app.stop().await;
    app.pool.close().await;
    let positions = db::positions(&fresh_pool(&iso.database).await).await;
    let server = sqlx::PgPool::connect(&format!("{}/postgres", crate::support::server_url())).await.unwrap();

    // Untouched: verified, with the kept note too.
    let (code, err) = verify_db(&iso, &iso.database, &public, &["--checkpoint", kept.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("verified"), "{err}");

    let other = SignerKey::generate("mailledger/audit").unwrap();
    let (p1, p2, p5) = (positions[1], positions[3], positions[5]);
    let first_size = first["size"].as_i64().unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("edited", format!("first disagreement at position {p5}")),
        ("deleted", format!("sealed the event at position {p5} there")),
        ("swapped", format!("the log sealed the event at position {p1} there")),
        ("forged", "the store has position 999999".to_owned()),
        ("resigned", "bad signature".to_owned()),
        ("truncated", "truncated".to_owned()),
    ];
    for (case, want) in &cases {
        let copy = format!("{}_{case}", iso.database);
        db::copy_database(&server, &iso.database, &copy).await;
        let pool = fresh_pool(&copy).await;
        match *case {
            "edited" => db::edit_payload(&pool, p5, "proof 2", "proof 7").await,
            "deleted" => db::delete_event(&pool, p5).await,
            "swapped" => db::swap_positions(&pool, p1, p2).await,
            "forged" => db::insert_forged(&pool, p1, 999_999).await,
            "resigned" => {
                let c = Checkpoint { origin: format!("mailledger/{}", iso.database), size: 3, root: [0; 32] };
                db::replace_checkpoint_note(&pool, first_size, &c.sign(&other)).await;
            }
            _ => db::delete_events_from(&pool, *positions.last().unwrap()).await,
        }
        pool.close().await;
        let (code, err) = verify_db(&iso, &copy, &public, &[]);
        db::drop_database(&server, &copy).await;
        assert_eq!(code, 1, "{case}: {err}");
        assert!(err.contains(want.as_str()), "{case}: want {want:?} in {err}");
    }
    // A thorough truncation agrees with itself: only a copy kept elsewhere tells.
    let copy = format!("{}_cut", iso.database);
    db::copy_database(&server, &iso.database, &copy).await;
    let pool = fresh_pool(&copy).await;
    db::truncate_history_to(&pool, first_size).await;
    pool.close().await;
    let (code, err) = verify_db(&iso, &copy, &public, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = verify_db(&iso, &copy, &public, &["--checkpoint", kept.to_str().unwrap()]);
    db::drop_database(&server, &copy).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("truncated"), "{err}");

    // Offline: the public key alone; the older export's checkpoints hold the newer one.
    let offline = |args: &[&str]| mailledger(&[], &[&["ledger", "verify"], args].concat());
    let (e1, e2) = (export1.to_str().unwrap(), export2.to_str().unwrap());
    let pub_file = format!("{}.pub", key.display());
    let (code, _, err) = offline(&["--export", e1, "--export", e2, "--public-key", &pub_file]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<String> = std::fs::read_to_string(&export2).unwrap().lines().map(str::to_owned).collect();
    let write = |name: &str, lines: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p.display().to_string()
    };
    // The first event line with a subject in it (where checkpoint lines fall among the
    // event lines depends on when checkpoints were signed).
    let target =
        lines.iter().position(|l| l.starts_with("{\"leaf\":") && l.contains("proof ")).expect("an email's event");
    let mut edited = lines.clone();
    edited[target] = edited[target].replace("proof ", "pr00f ");
    let edited_at = format!("edited.ndjson line {} (leaf", target + 1);
    let mut broken = lines.clone();
    broken[3].truncate(20);
    let cut = &lines[..lines.len() - 1];
    for (file, want) in [
        (write("edited.ndjson", &edited), edited_at.as_str()),
        (write("broken.ndjson", &broken), "line 4: not a line of a proof export"),
        (write("cut.ndjson", cut), "cut short"),
    ] {
        let (code, _, err) = offline(&["--export", &file, "--public-key", &public]);
        assert_eq!(code, 1, "{file}: {err}");
        assert!(err.contains(want), "{file}: want {want:?} in {err}");
    }
    let other_pub = other.verifier().encode();
    let (code, _, err) = offline(&["--export", e2, "--public-key", &other_pub]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad signature"), "{err}");
    let garbage = write("garbage.pub", &["not a key".to_owned()]);
    let (code, _, err) = offline(&["--export", e2, "--public-key", &garbage]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a verifier key"), "{err}");
    let (code, _, err) = offline(&["--export", e2, "--public-key", key.to_str().unwrap()]);
    assert_eq!(code, 2, "a private key is not a verifier key: {err}");
    let extra = write("extra.note", &[second["note"].as_str().unwrap().replacen('\n', "\nextra\n", 3)]);
    let (code, _, err) = offline(&["--export", e2, "--public-key", &public, "--checkpoint", &extra]);
    assert_ne!(code, 0);
    assert!(err.contains("checkpoint"), "{err}");
    // A properly signed note with an extension line: refused, naming the line.
    let signed_extra = other.sign("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nmore\n");
    let extra2 = dir.path().join("extra2.note").display().to_string();
    std::fs::write(&extra2, signed_extra).unwrap();
    let (code, _, err) = offline(&["--export", e2, "--public-key", &other_pub, "--checkpoint", &extra2]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 4: unexpected extra line"), "{err}");
    db::drop_database(&server, &iso.database).await;
}

async fn fresh_pool(database: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(&format!("{}/{database}", crate::support::server_url())).await.unwrap()
}

#[tokio::test]
async fn a_signing_key_that_cannot_be_used_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("signing.key.pub");
    std::fs::write(&public, SignerKey::generate("x").unwrap().verifier().encode()).unwrap();
    let iso = Isolation::new();
    let _cleanup = crate::support::Cleanup(iso.clone());
    for (file, says) in
        [(public.display().to_string(), "not a signing key"), ("/nonexistent/key".into(), "cannot be read")]
    {
        let settings = iso.settings(&[("MAILLEDGER_SIGNING_KEY", file.as_str())]);
        let err = mailledger::startup::Application::build(settings).await.err().expect("refused");
        let err = format!("{err:#}");
        assert!(err.contains("MAILLEDGER_SIGNING_KEY") && err.contains(says), "{err}");
    }
}

#[tokio::test]
async fn a_log_of_many_tiles_proves_every_kind_of_path_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "mailledger/tiles");
    let iso = Isolation::new();
    let pool = fresh_database(&iso).await;
    let mut events = vec![];
    for i in 0..350 {
        let id = uuid::Uuid::now_v7();
        for (s, (kind, payload)) in crate::support::accepted_events(id, &format!("bulk {i}")).into_iter().enumerate() {
            events.push((id, s as i64 + 1, kind, payload));
        }
    }
    db::insert_events_at_once(&pool, &events).await;
    pool.close().await;
    // 701 events sealed on the first start: three tiles, the last one partial.
    let app = spawn_signing(iso, &key).await;
    let first = covered(&app).await;
    let (_, size1, root1) = rfc9162::open_checkpoint(first["note"].as_str().unwrap(), &public).unwrap();
    assert!(size1 > 512, "{size1}");
    for i in 0..3 {
        app.create(&original_payload(&format!("after {i}"))).await;
    }
    let second = covered(&app).await;
    let (_, size2, root2) = rfc9162::open_checkpoint(second["note"].as_str().unwrap(), &public).unwrap();
    let positions = db::positions(&app.pool).await;
    for leaf in [0, 1, 255, 256, 257, 511, 512, 600, positions.len() - 1] {
        let path = format!("/api/v1/ledger/proof/inclusion?position={}&size={size2}", positions[leaf]);
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["proofs"][0]["leaf_index"].as_u64(), Some(leaf as u64));
        check_entry(&app, &body["proofs"][0], size2, &root2).await;
        if (leaf as u64) < size1 {
            let path = format!("/api/v1/ledger/proof/inclusion?position={}&size={size1}", positions[leaf]);
            let (_, body) = app.get_json(&path).await;
            check_entry(&app, &body["proofs"][0], size1, &root1).await;
        }
    }
    for m in [1, 2, 255, 256, 257, 300, 512, size1 - 1, size1, size2] {
        let (status, body) = app.get_json(&format!("/api/v1/ledger/proof/consistency?first={m}&second={size2}")).await;
        assert_eq!(status, 200, "{body}");
        let hashes: Vec<_> = body["hashes"].as_array().unwrap().iter().map(|h| b64(h.as_str().unwrap())).collect();
        let first_root = b64(body["first_root"].as_str().unwrap());
        assert_eq!(b64(body["second_root"].as_str().unwrap()), root2);
        if m == size1 {
            assert_eq!(first_root, root1, "the signed root");
        }
        assert!(rfc9162::consistency_ok(m, size2, &hashes, &first_root, &root2), "{m}: {body}");
    }
    let (code, _, err) = mailledger(&app.iso.env(), &["ledger", "verify", "--public-key", &public]);
    assert_eq!(code, 0, "{err}");
}

/// Three emails through `app`; the checkpoint that covers them.
async fn phase(app: &TestApp, what: &str) -> Value {
    for i in 0..3 {
        app.create(&original_payload(&format!("{what} {i}"))).await;
    }
    covered(app).await
}

/// The signing key rotated, with a changeover: the first checkpoints are signed by the
/// old key, then by the old and the new together (a key file of both), then by the new
/// alone. Until the changeover ends, an auditor holding only the old verifier key still
/// verifies everything; the whole log verifies with both keys (given twice, or as one
/// file of both), and so does its export offline; with one key alone, `verify` names
/// the first checkpoint it cannot open.
#[tokio::test]
async fn a_rotated_signing_key_verifies_with_the_old_and_the_new_verifier_key() {
    let dir = tempfile::tempdir().unwrap();
    let (old_key, old_pub) = keygen(dir.path(), "mailledger/rotation-1");
    let (new_key, new_pub) = keygen(dir.path(), "mailledger/rotation-2");
    let changeover = dir.path().join("changeover.key");
    let both_private = format!(
        "# old, then new\n{}\n{}\n",
        std::fs::read_to_string(&old_key).unwrap().trim(),
        std::fs::read_to_string(&new_key).unwrap().trim()
    );
    std::fs::write(&changeover, both_private).unwrap();
    let mut app = spawn_signing(Isolation::new(), &old_key).await;
    let before = phase(&app, "before").await;
    assert!(rfc9162::open_checkpoint(before["note"].as_str().unwrap(), &old_pub).is_some());
    app.stop().await;
    let during = {
        let env = signing(&changeover);
        let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut both = app.sibling(&extra).await;
        let during = phase(&both, "during").await;
        let note = during["note"].as_str().unwrap();
        assert!(rfc9162::open_checkpoint(note, &old_pub).is_some(), "signed by the old key: {note}");
        assert!(rfc9162::open_checkpoint(note, &new_pub).is_some(), "and by the new: {note}");
        let (code, _, err) = mailledger(&both.iso.env(), &["ledger", "verify", "--public-key", &old_pub]);
        assert_eq!(code, 0, "during the changeover, the old key alone verifies everything: {err}");
        both.stop().await;
        during
    };
    let env = signing(&new_key);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rotated = app.sibling(&extra).await;
    let after = phase(&rotated, "after").await;
    assert!(after["size"].as_u64() > during["size"].as_u64());
    assert!(rfc9162::open_checkpoint(after["note"].as_str().unwrap(), &new_pub).is_some(), "signed by the new key");
    assert!(rfc9162::open_checkpoint(after["note"].as_str().unwrap(), &old_pub).is_none(), "and not the old");

    let env = rotated.iso.env();
    let verify = |keys: &[&str]| {
        let mut args = vec!["ledger", "verify"];
        for k in keys {
            args.extend(["--public-key", k]);
        }
        mailledger(&env, &args)
    };
    let (code, _, err) = verify(&[&old_pub, &new_pub]);
    assert_eq!(code, 0, "both keys: {err}");
    let both = dir.path().join("verifiers.txt");
    std::fs::write(&both, format!("# the log's keys, oldest first\n{old_pub}\n\n{new_pub}\n")).unwrap();
    let (code, _, err) = verify(&[both.to_str().unwrap()]);
    assert_eq!(code, 0, "a file of both: {err}");
    let (code, _, err) = verify(&[&new_pub]);
    assert_eq!(code, 1, "the new key alone: {err}");
    assert!(err.contains("bad signature: not signed by mailledger/rotation-2+"), "{err}");
    let (code, _, err) = verify(&[&old_pub]);
    assert_eq!(code, 1, "the old key alone: {err}");

    let (code, out, err) = mailledger(&env, &["replay", "--proofs"]);
    assert_eq!(code, 0, "{err}");
    let export = dir.path().join("rotated.ndjson");
    std::fs::write(&export, out).unwrap();
    let export = export.to_str().unwrap();
    let (code, _, err) =
        mailledger(&[], &["ledger", "verify", "--export", export, "--public-key", both.to_str().unwrap()]);
    assert_eq!(code, 0, "the export, offline, with both: {err}");
    let (code, _, err) = mailledger(&[], &["ledger", "verify", "--export", export, "--public-key", &new_pub]);
    assert_eq!(code, 1, "the export with the new key alone: {err}");
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, format!("{old_pub}\nnot a key\n")).unwrap();
    let (code, _, err) =
        mailledger(&[], &["ledger", "verify", "--export", export, "--public-key", garbage.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2: not a verifier key"), "{err}");
}
