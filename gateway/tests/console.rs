//! The web console in a real browser: Debian's headless Chromium driven over WebDriver
//! (`chromedriver`, installed by `scripts/test.sh` when absent) against the real gateway, model
//! and control-plane store. Each page's screenshot is saved under
//! `target/console-screenshots/` (docs/console.md shows them).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{call, digest, Options, TestGateway, MODEL};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const OPERATOR: &str = "sk-console-operator";
const ACME: &str = "sk-console-acme";
const BETA: &str = "sk-console-beta";

fn config() -> String {
    format!(
        "admin_keys = [\"{}\"]\n[control_plane]\nenabled = true\n\
         [console]\nsign_in_attempts_per_minute = 30\n\
         [[models]]\nid = \"{MODEL}\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n[[tenants]]\nid = \"beta\"\nkeys = [\"{}\"]\n",
        digest(OPERATOR),
        digest(ACME),
        digest(BETA)
    )
}

fn gateway() -> TestGateway {
    let config = config();
    TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    })
}

/// `chromedriver` on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
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

fn program(candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| {
            panic!("none of {candidates:?} found: scripts/test.sh installs Debian's chromium and chromium-driver")
        })
        .to_string()
}

/// A headless Chromium session (laptop-sized window) and its driver.
async fn browser() -> (Driver, Client) {
    let driver = program(&["chromedriver"]);
    let chromium = program(&["chromium", "chromium-browser", "google-chrome"]);
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let profile = tempfile::tempdir().unwrap();
    let profile_dir = profile.path().display().to_string();
    let driver = Driver {
        child,
        url,
        _profile: profile,
    };
    let capabilities: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": which(&chromium),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
                     format!("--user-data-dir={profile_dir}")]
        }
    }))
    .unwrap();
    let mut last_error = String::new();
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&driver.url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no WebDriver session: {last_error}");
}

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Saves the page as `target/console-screenshots/<name>.png`.
async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the element `css`, waiting for it (a click's page may still be loading, and
/// an element found on the page before it may go stale).
async fn text_of(browser: &Client, css: &str) -> String {
    let mut last_error = String::new();
    for _ in 0..100 {
        match browser.find(Locator::Css(css)).await {
            Ok(element) => match element.text().await {
                Ok(text) => return text,
                Err(error) => last_error = error.to_string(),
            },
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{css}: {last_error}");
}

/// Signs in through the form, typing the key and pressing Enter (keyboard only).
async fn sign_in(browser: &Client, gw: &TestGateway, key: &str) {
    browser.goto(&gw.url("/console")).await.unwrap();
    assert!(browser
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/sign-in"));
    let field = browser.find(Locator::Css("#key")).await.unwrap();
    field.send_keys(&format!("{key}\u{E007}")).await.unwrap();
    let signed_in = eventually(Duration::from_secs(30), || async {
        browser
            .current_url()
            .await
            .is_ok_and(|u| u.path().ends_with("/console/overview"))
    })
    .await;
    assert!(signed_in, "the sign-in did not reach the overview");
}

/// Polls `check` up to `bound`; a bound so a failure ends the test instead of hanging it.
async fn eventually<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + bound;
    while std::time::Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn chat(gw: &TestGateway, key: &str) -> u16 {
    call(
        gw,
        "POST",
        "/v1/chat/completions",
        key,
        Some(json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]})),
    )
    .await
    .0
}

/// The operator's day: sign in, look around, issue a key, use it, see it in the usage, revoke it
/// and see it refused; every page photographed.
#[tokio::test]
async fn an_operator_issues_uses_and_revokes_a_key_in_the_browser() {
    let gw = gateway();
    let (_driver, browser) = browser().await;

    // A wrong key is refused on the form, with the reason.
    browser.goto(&gw.url("/console/sign-in")).await.unwrap();
    screenshot(&browser, "sign-in").await;
    let field = browser.find(Locator::Css("#key")).await.unwrap();
    field.send_keys(&format!("{ACME}\u{E007}")).await.unwrap();
    let error = text_of(&browser, "#sign-in-error").await;
    assert!(error.contains("inference key"), "{error}");

    sign_in(&browser, &gw, OPERATOR).await;
    assert!(text_of(&browser, "#signed-in-as")
        .await
        .starts_with("operator"));
    assert!(text_of(&browser, "#pools").await.contains("healthy"));

    // Every request the pages made stayed on the gateway (fonts, scripts, styles).
    let resources = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    for resource in resources.as_array().unwrap() {
        assert!(
            resource.as_str().unwrap().starts_with(&gw.base),
            "a request off the gateway: {resource}"
        );
    }

    // A price for the model, set through the grants page's form: requests then cost money.
    browser.goto(&gw.url("/console/grants")).await.unwrap();
    let form = browser.form(Locator::Css("#set-price")).await.unwrap();
    for (field, value) in [
        ("model", MODEL),
        ("input_per_mtok", "2000000"),
        ("output_per_mtok", "4000000"),
    ] {
        form.set_by_name(field, value).await.unwrap();
    }
    form.submit().await.unwrap();
    let priced = eventually(Duration::from_secs(10), || async {
        text_of(&browser, "#prices").await.contains("2000000")
    })
    .await;
    assert!(priced, "the price form did not set the price");

    // Tenants, then acme's page: issue a key there.
    browser.goto(&gw.url("/console/tenants")).await.unwrap();
    screenshot(&browser, "tenants").await;
    browser
        .find(Locator::LinkText("acme"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "#tenant-id").await, "acme");
    browser
        .find(Locator::Css("#issue-name"))
        .await
        .unwrap()
        .send_keys("browser test")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#issue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let key = text_of(&browser, "#new-key").await;
    let key_id = text_of(&browser, "#new-key-id").await;
    assert!(key.starts_with("sk-"), "{key}");
    screenshot(&browser, "key-issued").await;

    // The key works for a real chat request, which then shows in the tenant's usage.
    assert_eq!(chat(&gw, &key).await, 200);
    let tenant_page = gw.url("/console/tenants/acme");
    let seen = eventually(Duration::from_secs(20), || async {
        browser.goto(&tenant_page).await.unwrap();
        text_of(&browser, "#last-requests").await.contains(&key_id)
    })
    .await;
    assert!(seen, "the request never appeared in acme's last requests");
    assert!(
        browser.find(Locator::Css("#usage-chart svg")).await.is_ok(),
        "the usage chart is drawn"
    );
    let cost = text_of(&browser, "#cost-chart").await;
    assert!(
        cost.contains("USD"),
        "the cost chart is drawn in the currency: {cost}"
    );
    screenshot(&browser, "tenant").await;

    // The overview's live table fills itself in (the script polls; no reload): with beta's
    // requests running, beta's tokens per second rise above zero.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (busy, base) = (busy.clone(), gw.base.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(BETA)
                    .json(&json!({"model": MODEL, "max_tokens": 48,
                                  "messages": [{"role": "user", "content": "Tell me a story."}]}))
                    .send()
                    .await;
            }
        })
    };
    browser.goto(&gw.url("/console/overview")).await.unwrap();
    let live = eventually(Duration::from_secs(30), || async {
        let rate = browser
            .execute(
                "const r = document.querySelector('#live-tenants tr[data-tenant=beta]');
                 return r ? Number(r.cells[5].textContent) : null;",
                vec![],
            )
            .await
            .unwrap();
        rate.as_f64().is_some_and(|r| r > 0.0)
    })
    .await;
    assert!(live, "the overview never showed beta's tokens per second");
    assert!(text_of(&browser, "#live-status")
        .await
        .starts_with("updated"));
    screenshot(&browser, "overview").await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();

    // Revoke it from its row: refused within 2 s.
    browser.goto(&tenant_page).await.unwrap();
    browser
        .find(Locator::Css(&format!("#revoke-{key_id}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = format!("tr[data-key='{key_id}']");
    let marked = eventually(Duration::from_secs(10), || async {
        text_of(&browser, &row).await.contains("revoked")
    })
    .await;
    assert!(marked, "the key's row does not say revoked");
    let refused = eventually(Duration::from_secs(2), || async {
        chat(&gw, &key).await == 401
    })
    .await;
    assert!(refused, "the revoked key still works after 2 s");

    // The audit log, filtered to the revocation.
    browser
        .goto(&gw.url("/console/audit?action=key.revoke"))
        .await
        .unwrap();
    let audit = text_of(&browser, "#audit").await;
    assert!(
        audit.contains("key.revoke") && audit.contains(&key_id),
        "{audit}"
    );
    assert!(!audit.contains("key.issue"), "the filter holds: {audit}");
    screenshot(&browser, "audit").await;

    browser.goto(&gw.url("/console/grants")).await.unwrap();
    screenshot(&browser, "grants").await;

    // A tablet's width: the tenant page still reads (tables scroll inside their cards).
    browser.set_window_size(768, 1024).await.unwrap();
    browser.goto(&tenant_page).await.unwrap();
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways on a tablet"
    );
    screenshot(&browser, "tenant-tablet").await;

    // A form without its CSRF token, with this very session, is refused.
    let session = browser
        .get_named_cookie("console_session")
        .await
        .unwrap()
        .value()
        .to_string();
    for body in ["", "csrf=0000"] {
        let response = gw
            .client()
            .post(gw.url("/console/tenants/acme/keys"))
            .header("cookie", format!("console_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{body:?}");
        assert!(response.text().await.unwrap().contains("CSRF"));
    }

    // Sign out: the session is gone, the pages send to the form.
    browser
        .find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let out = eventually(Duration::from_secs(10), || async {
        browser
            .current_url()
            .await
            .is_ok_and(|u| u.path().ends_with("/console/sign-in"))
    })
    .await;
    assert!(out, "sign-out did not lead to the sign-in form");
    browser.goto(&gw.url("/console/overview")).await.unwrap();
    assert!(browser
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/sign-in"));
    let response = gw
        .client()
        .get(gw.url("/console/api/overview"))
        .header("cookie", format!("console_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "the old cookie still opens the console"
    );
    browser.close().await.unwrap();
}

/// A tenant-admin sees its own tenant and nothing of another, by link or typed URL; revoking
/// its key ends its console session within 2 s.
#[tokio::test]
async fn a_tenant_admin_reaches_only_its_tenant_and_revocation_ends_its_session() {
    let gw = gateway();
    let (status, issued) = call(
        &gw,
        "POST",
        "/admin/tenants/acme/keys",
        OPERATOR,
        Some(json!({"role": "tenant_admin", "name": "acme IT"})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let admin_key = issued["key"].as_str().unwrap().to_string();
    let admin_id = issued["id"].as_str().unwrap().to_string();
    let (_driver, browser) = browser().await;
    sign_in(&browser, &gw, &admin_key).await;
    assert!(text_of(&browser, "#signed-in-as")
        .await
        .contains("tenant_admin"));
    // No pool list for a tenant's admin.
    assert!(browser.find(Locator::Css("#pools")).await.is_err());

    // The tenants link leads to its own tenant; nothing links to another.
    browser.goto(&gw.url("/console/tenants")).await.unwrap();
    assert_eq!(text_of(&browser, "#tenant-id").await, "acme");
    let source = browser.source().await.unwrap();
    assert!(!source.contains("/console/tenants/beta"), "a link to beta");

    // A typed URL to another tenant: refused, and nothing of it shown.
    browser
        .goto(&gw.url("/console/tenants/beta"))
        .await
        .unwrap();
    let title = text_of(&browser, "#problem-title").await;
    assert_eq!(title, "Forbidden");
    assert!(browser.find(Locator::Css("#keys")).await.is_err());
    let (_, beta_keys) = call(&gw, "GET", "/admin/tenants/beta/keys", OPERATOR, None).await;
    let beta_key = beta_keys["data"][0]["id"].as_str().unwrap().to_string();
    assert!(!browser.source().await.unwrap().contains(&beta_key));
    screenshot(&browser, "tenant-admin-refused").await;
    // ... and its keys' actions, by a form posted by hand with a valid token, are refused too.
    browser
        .goto(&gw.url("/console/tenants/acme"))
        .await
        .unwrap();
    let revoked_beta = browser
        .execute(
            "const f = document.createElement('form'); f.method = 'post';
             f.action = '/console/keys/' + arguments[0] + '/revoke';
             const c = document.querySelector('input[name=csrf]').cloneNode(); f.appendChild(c);
             document.body.appendChild(f); f.submit(); return true;",
            vec![json!(beta_key)],
        )
        .await;
    assert!(revoked_beta.is_ok());
    assert_eq!(text_of(&browser, "#problem-title").await, "Forbidden");
    assert_eq!(chat(&gw, BETA).await, 200, "beta's key still works");

    // The operator revokes the tenant-admin's key: its session ends within 2 s.
    let (status, _) = call(
        &gw,
        "DELETE",
        &format!("/admin/keys/{admin_id}"),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let ended = eventually(Duration::from_secs(2), || async {
        browser.goto(&gw.url("/console/overview")).await.unwrap();
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/sign-in")
    })
    .await;
    assert!(ended, "the revoked key's session still opens the console");
    browser.close().await.unwrap();
}
