//! Search picks its plan from the data (a probe of the newest emails, then the capped
//! count): whatever plan it takes, the page and the count must be what the plain SQL
//! says. 12,000 emails, words of every density — in every email, in 2 %, only in the
//! oldest, in a few new and many old, in three — each searched at several pages,
//! including pages past the probe, and with filters.

use crate::support::{TestApp, db};
use mailledger::query::repository::{PROBE, Repository};
use mailledger::query::search::{COUNT_CAP, Filter, FilterKind, Page, SearchParams, to_tsquery};
use mailledger::query::view::EmailSummary;
use uuid::Uuid;

const EMAILS: i64 = 12_000;

async fn seed(app: &TestApp) {
    db::seed_search_corpus(&app.pool, EMAILS).await;
}

/// What the plain SQL says: every match, newest first.
async fn oracle(app: &TestApp, p: &SearchParams) -> Vec<Uuid> {
    db::search_oracle(&app.pool, p.tsquery.as_deref(), p.status.as_deref(), p.from.as_deref()).await
}

#[tokio::test]
async fn every_plan_gives_the_page_and_count_the_plain_sql_gives() {
    const { assert!(EMAILS > COUNT_CAP && EMAILS > PROBE, "the data must reach past the cap and the probe") };
    let app = TestApp::spawn().await;
    seed(&app).await;
    let repository = Repository::new(app.pool.clone());
    let searches: Vec<(Option<&str>, Option<&str>, Option<&str>)> = vec![
        (None, None, None),
        (Some("alpha"), None, None),
        (Some("beta"), None, None),
        (Some("gamma"), None, None),
        (Some("delta"), None, None),
        (Some("omega"), None, None),
        (Some("nothing"), None, None),
        (Some("alpha"), Some("sent"), None),
        (Some("beta"), None, Some("user3@example.com")),
        (None, Some("sent"), Some("user3@example.com")),
    ];
    for (q, status, from) in searches {
        for (page, size) in [(1, 10), (2, 10), (7, 10), (1, 100), (25, 100), (90, 100)] {
            let p = SearchParams {
                tsquery: q.and_then(to_tsquery),
                status: status.map(str::to_owned),
                from: from.map(str::to_owned),
                page,
                size,
                ..Default::default()
            };
            let all = oracle(&app, &p).await;
            let got = repository.search(&p).await.unwrap();
            let what = format!("q={q:?} status={status:?} from={from:?} page={page} size={size}");
            assert_page(&got, &all, page, size, &what);
        }
    }
}

/// Every field kind of the search language, alone, negated and combined, at several
/// pages: the page and the count the service gives are what plain SQL, written
/// without the service's functions or indexes, says.
#[tokio::test]
async fn every_field_kind_gives_what_plain_sql_gives() {
    let app = TestApp::spawn().await;
    db::seed_field_corpus(&app.pool, EMAILS).await;
    let repository = Repository::new(app.pool.clone());
    let domain = |column: &str, d: &str| format!("lower(split_part({column}, '@', 2)) = '{d}'");
    let any_recipient = |cond: &str| format!("EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE {cond})");
    let delivery =
        |s: &str| format!("EXISTS (SELECT 1 FROM jsonb_array_elements(deliveries) AS d WHERE d->>'status' = '{s}')");
    let phrase = "lower(subject || ' ' || body) LIKE '%quarterly report%'";
    let cases: Vec<(&str, String)> = vec![
        ("from:user3@example.com", "from_address = 'user3@example.com'".into()),
        ("from:example.net", domain("from_address", "example.net")),
        ("-from:example.net", format!("NOT {}", domain("from_address", "example.net"))),
        ("to:rare.test", any_recipient(&domain("r", "rare.test"))),
        ("-to:rare.test", format!("NOT {}", any_recipient(&domain("r", "rare.test")))),
        ("to:rcpt1@other.org", any_recipient("r = 'rcpt1@other.org'")),
        ("has:html", "html IS NOT NULL".into()),
        ("-has:html", "html IS NULL".into()),
        ("is:bounced", delivery("refused")),
        ("is:suppressed", delivery("suppressed")),
        ("-is:bounced", format!("NOT {}", delivery("refused"))),
        ("status:dead_lettered", "status = 'dead_lettered'".into()),
        ("is:sent -status:queued", "status = 'sent'".into()),
        ("before:2026-01-01T01:00:00Z", "created_at < '2026-01-01T01:00:00Z'".into()),
        ("after:2026-01-01T01:00:00Z", "created_at >= '2026-01-01T01:00:00Z'".into()),
        ("subject:quarterly", "subject LIKE '%quarterly%'".into()),
        ("subject:\"quarterly report\"", "subject LIKE '%quarterly report%'".into()),
        ("\"quarterly report\"", phrase.into()),
        ("-\"quarterly report\"", format!("NOT ({phrase})")),
        (
            "\"report is late\" -subject:quarterly",
            "body LIKE '%report is late%' AND subject NOT LIKE '%quarterly%'".into(),
        ),
        (
            "from:example.com to:example.org has:html -is:bounced after:2026-01-01T00:30:00Z",
            format!(
                "{} AND {} AND html IS NOT NULL AND NOT {} AND created_at >= '2026-01-01T00:30:00Z'",
                domain("from_address", "example.com"),
                any_recipient(&domain("r", "example.org")),
                delivery("refused")
            ),
        ),
    ];
    for (q, condition) in cases {
        let all = db::ids_where(&app.pool, &condition).await;
        assert!(!all.is_empty(), "{q}: the corpus has matches");
        let query = mailledger::query::grammar::parse(q).unwrap();
        let (tsquery, filters) = mailledger::query::search::translate(&query);
        for (page, size) in [(1, 10), (3, 10), (1, 100), (20, 100)] {
            let p =
                SearchParams { tsquery: tsquery.clone(), filters: filters.clone(), page, size, ..Default::default() };
            let got = repository.search(&p).await.unwrap();
            let start = ((page - 1) * size) as usize;
            let want: Vec<Uuid> = all.iter().skip(start).take(size as usize).copied().collect();
            let ids: Vec<Uuid> = got.items.iter().map(|e| e.id).collect();
            assert_eq!(ids, want, "{q} page {page} size {size}");
            let total = all.len() as i64;
            let expected = if total <= COUNT_CAP { total } else { COUNT_CAP };
            assert_eq!(got.total_count, expected, "{q}: total_count");
        }
    }
}

/// A key confined to a tenant, with and without fields: the page and the count are what
/// plain SQL says within the tenant, the count exact up to the cap (a tenant with exactly
/// [`COUNT_CAP`] matches of a word that has more in all tenants) and capped past it.
#[tokio::test]
async fn a_tenant_key_gets_the_page_and_count_plain_sql_gives_within_its_tenant() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    // Every sixth email (2,000 of 12,000) to tenant `other`: `alpha` (in every email) then
    // has exactly COUNT_CAP matches in `default` and more than COUNT_CAP in all.
    sqlx::query(
        "UPDATE emails SET tenant = 'other' WHERE id IN \
         (SELECT id FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM emails) AS r \
          WHERE n % 6 = 0)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE emails").execute(&app.pool).await.unwrap();
    let repository = Repository::new(app.pool.clone());
    let cases: Vec<(&str, &str, &str)> = vec![
        ("alpha", "default", "subject LIKE 'alpha%'"),
        ("alpha", "other", "subject LIKE 'alpha%'"),
        ("alpha status:queued", "default", "status = 'queued'"),
        ("alpha to:example.org", "default", "true"),
        ("alpha status:queued to:example.org", "default", "status = 'queued'"),
        ("beta", "default", "body LIKE '%beta%'"),
        (
            "beta status:sent from:user3@example.com",
            "default",
            "body LIKE '%beta%' AND status = 'sent' AND from_address = 'user3@example.com'",
        ),
        ("delta", "other", "body LIKE '%delta%'"),
        ("omega", "default", "body LIKE '%omega%'"),
        ("status:sent", "other", "status = 'sent'"),
    ];
    let mut saw_exact_cap = false;
    for (q, tenant, condition) in cases {
        let all = db::ids_where(&app.pool, &format!("tenant = '{tenant}' AND {condition}")).await;
        let (tsquery, filters) = mailledger::query::search::translate(&mailledger::query::grammar::parse(q).unwrap());
        for (page, size) in [(1, 10), (2, 10), (1, 100), (25, 100), (90, 100)] {
            let p = SearchParams {
                tsquery: tsquery.clone(),
                filters: filters.clone(),
                tenant: Some(tenant.to_owned()),
                page,
                size,
                ..Default::default()
            };
            let got = repository.search(&p).await.unwrap();
            let what = format!("q={q:?} tenant={tenant} page={page} size={size}");
            assert_page(&got, &all, page, size, &what);
            saw_exact_cap |= all.len() as i64 == COUNT_CAP;
        }
    }
    assert!(saw_exact_cap, "a search with exactly COUNT_CAP matches was tried");
    // The admin (no tenant) sees every tenant: `alpha` is past the cap there.
    let p = SearchParams { tsquery: to_tsquery("alpha"), ..Default::default() };
    let got = repository.search(&p).await.unwrap();
    assert!(!got.total_exact && got.total_count == COUNT_CAP, "alpha over all tenants: 10,000+");
}

/// A search counts beside its probe the way its last probe chose. When the data has
/// changed since (a word sparse among the newest emails is now in most of them, then
/// rare again), that way is the wrong plan, and the page and the count must still be
/// what plain SQL says; the next search of it has learned the new density.
#[tokio::test]
async fn a_density_learned_before_the_data_changed_still_gives_the_page_and_count_of_plain_sql() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    let repository = Repository::new(app.pool.clone());
    // `-is:bounced` holds for every seeded email (none has a refused recipient): it
    // changes no match, and makes the search one on state, whose count is remembered
    // only while the read model is unchanged (a word's count past the cap would be kept
    // for good, and no email ever loses a word the way this test takes them away).
    let zeta = |page| SearchParams {
        tsquery: to_tsquery("zeta"),
        filters: vec![Filter { negated: true, kind: FilterKind::Bounced }],
        page,
        size: 10,
        ..Default::default()
    };
    let mark = |every: i64| {
        let pool = app.pool.clone();
        async move {
            // Emails in creation order, the word in one of every `every` of them; the
            // `emails` checkpoint moved with them, as the projection moves it with every
            // write to the table.
            sqlx::query(
                "UPDATE emails e SET body = regexp_replace(e.body, ' ?zeta', '') \
                 || CASE WHEN n.i % $1 = 0 THEN ' zeta' ELSE '' END \
                 FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS i FROM emails) n WHERE n.id = e.id",
            )
            .bind(every)
            .execute(&pool)
            .await
            .unwrap();
            db::touch_read_model(&pool).await;
        }
    };
    let check = |repository: &Repository, page: u32, what: &'static str| {
        let (repository, p) = (repository.clone(), zeta(page));
        let app = &app;
        async move {
            let all = oracle(app, &p).await;
            let got = repository.search(&p).await.unwrap();
            assert_page(&got, &all, page, 10, &format!("{what}, page {page}"));
        }
    };

    // One email in 100: 20 of the newest 2,000, sparse; 120 in all, counted exactly.
    mark(100).await;
    assert_eq!(repository.learned_density(&zeta(1)), None, "nothing learned before the first search");
    check(&repository, 1, "1 in 100, first search").await;
    assert_eq!(repository.learned_density(&zeta(1)), Some(false), "the probe found the matches sparse");
    // Page 7 needs more than the probe holds: the count taken beside the probe is reused.
    check(&repository, 7, "1 in 100, past the probe").await;

    // Now in every email: the count is still taken the sparse way once, past the cap.
    mark(1).await;
    assert_eq!(repository.learned_density(&zeta(2)), Some(false), "learned before the change, any page");
    check(&repository, 2, "in every email, counted the stale way").await;
    assert_eq!(repository.learned_density(&zeta(1)), Some(true), "the probe found them dense");
    check(&repository, 1, "in every email, counted the learned way").await;

    // Rare again: counted the dense way (along the order index) once, exactly.
    mark(1000).await;
    check(&repository, 1, "1 in 1,000, counted the stale way").await;
    assert_eq!(repository.learned_density(&zeta(1)), Some(false));
    check(&repository, 1, "1 in 1,000, counted the learned way").await;
}

/// `got` is page `page` (of `size`) of `all`, the matches plain SQL finds, newest first:
/// the same emails, `has_more`, and the count, exact up to the cap and `10,000+` past it.
fn assert_page(got: &Page<EmailSummary>, all: &[Uuid], page: u32, size: u32, what: &str) {
    let start = ((page - 1) * size) as usize;
    let want: Vec<Uuid> = all.iter().skip(start).take(size as usize).copied().collect();
    let ids: Vec<Uuid> = got.items.iter().map(|e| e.id).collect();
    assert_eq!(ids, want, "{what}: the page");
    assert_eq!(got.has_more, all.len() > start + size as usize, "{what}: has_more");
    let total = all.len() as i64;
    if total <= COUNT_CAP {
        assert!(got.total_exact, "{what}: {total} matches are counted exactly");
        assert_eq!(got.total_count, total, "{what}: total_count");
    } else {
        assert!(!got.total_exact, "{what}: {total} matches are past the cap");
        assert_eq!(got.total_count, COUNT_CAP, "{what}: total_count");
    }
}

/// A search's count is remembered (any page). Emails projected since (the `emails`
/// checkpoint moved) are counted: the next search counts again. While nothing was
/// projected, the next search takes the remembered count: a row written behind the
/// projection's back (which the service never does) is not seen until the checkpoint
/// moves, which shows the count was not taken again. Past the cap, a search on what
/// never changes in an email (its words) keeps its count for good; a search on state
/// (`-is:bounced`) keeps it only while the read model is unchanged.
#[tokio::test]
async fn a_remembered_count_holds_while_the_read_model_is_unchanged() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    let repository = Repository::new(app.pool.clone());
    let search = |q: &str, page| SearchParams { tsquery: to_tsquery(q), page, size: 10, ..Default::default() };
    let kiwis = |n: usize, from: usize| {
        let app = &app;
        async move {
            for i in from..from + n {
                let body = serde_json::json!({"from": "a@example.com", "to": "b@example.org",
                    "subject": format!("kiwi {i}"), "message": "fruit"});
                app.create(&body).await;
            }
            // Projected whole (both events of each), so nothing is left to move the
            // checkpoint after.
            let want = (from + n) as i64;
            crate::support::eventually(std::time::Duration::from_secs(15), || async {
                let whole: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM emails WHERE subject LIKE 'kiwi %' AND last_sequence >= 2",
                )
                .fetch_one(&app.pool)
                .await
                .unwrap();
                whole == want
            })
            .await;
        }
    };
    let check = |page: u32, q: &'static str, what: &'static str| {
        let (repository, app) = (repository.clone(), &app);
        async move {
            let p = search(q, page);
            let got = repository.search(&p).await.unwrap();
            assert_page(&got, &oracle(app, &p).await, page, 10, what);
            got
        }
    };

    // Three emails through the service: counted (the probe holds fewer than a page).
    kiwis(3, 0).await;
    assert_eq!(repository.remembered_count(&search("kiwi", 1)), None, "nothing before the first search");
    check(1, "kiwi", "three kiwis").await;
    assert_eq!(repository.remembered_count(&search("kiwi", 3)), Some((3, false)), "kept while nothing changes");

    // Two more projected: the checkpoint moved, so the next search counts five.
    kiwis(2, 3).await;
    check(1, "kiwi", "five kiwis, after a projection").await;
    assert_eq!(repository.remembered_count(&search("kiwi", 1)), Some((5, false)));

    // Behind the projection's back: the remembered five stand until the checkpoint moves.
    sqlx::query(
        "INSERT INTO emails (id, from_address, to_addresses, recipients, subject, body, status, source, \
                             created_at, updated_at, last_sequence) \
         VALUES (gen_random_uuid(), 'a@example.com', '{b@example.org}', '{b@example.org}', 'kiwi x', 'fruit', \
                 'queued', 'rest', now(), now(), 2)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let p = search("kiwi", 1);
    let got = repository.search(&p).await.unwrap();
    assert_eq!((got.total_count, got.items.len()), (5, 6), "the count remembered, the page read afresh");
    db::touch_read_model(&app.pool).await;
    check(1, "kiwi", "six kiwis, once the checkpoint moved").await;

    // `alpha` is in every email: past the cap, kept for good; on state, kept by version.
    check(2, "alpha", "alpha").await;
    assert_eq!(repository.remembered_count(&search("alpha", 1)), Some((COUNT_CAP + 1, true)));
    let unbounced =
        SearchParams { filters: vec![Filter { negated: true, kind: FilterKind::Bounced }], ..search("alpha", 1) };
    let got = repository.search(&unbounced).await.unwrap();
    assert!(!got.total_exact && got.total_count == COUNT_CAP, "past the cap");
    assert_eq!(repository.remembered_count(&unbounced), Some((COUNT_CAP + 1, false)));
    // And paging a remembered count gives what plain SQL gives.
    check(3, "alpha", "alpha, page 3, remembered").await;
}
