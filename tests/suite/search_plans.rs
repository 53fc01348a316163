//! Search picks its plan from the data (a probe of the newest emails, then the capped
//! count): whatever plan it takes, the page and the count must be what the plain SQL
//! says. 12,000 emails, words of every density — in every email, in 2 %, only in the
//! oldest, in a few new and many old, in three — each searched at several pages,
//! including pages past the probe, and with filters.

use crate::support::{TestApp, db};
use mailledger::query::repository::{PROBE, Repository};
use mailledger::query::search::{COUNT_CAP, SearchParams, to_tsquery};
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
    }
}
