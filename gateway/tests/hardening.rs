//! What hostile or broken clients find (issue 14), against the real gateway on loopback.

mod common;

use std::time::Duration;

use common::{digest, Options, TestGateway};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound so that a connection the gateway fails to close fails the test instead of hanging
/// it; far above the configured 1 s, so it is no timing assertion.
const BOUND: Duration = Duration::from_secs(15);

fn gateway() -> TestGateway {
    let config = format!(
        "[server]\nheader_read_timeout_secs = 1\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        digest("sk-t")
    );
    TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    })
}

async fn connect(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (EOF or reset); panics past the bound.
async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 4096];
    let outcome = tokio::time::timeout(BOUND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the gateway kept the connection open");
}

/// Idle sockets were never closed (item 2): 1,100 of them exhausted a 1,024-fd limit.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let gw = gateway();
    let mut stream = connect(&gw).await;
    closed_by_server(&mut stream).await;
}

/// Slowloris: a request head trickling in, a byte at a time, is cut off.
#[tokio::test]
async fn a_trickling_request_head_is_cut_off() {
    let gw = gateway();
    let mut stream = connect(&gw).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(
        tokio::time::timeout(BOUND, trickle).await.is_ok(),
        "the gateway kept reading the trickle"
    );
    closed_by_server(&mut stream).await;
}

/// A kept-alive connection left idle after a response is closed.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let gw = gateway();
    let mut stream = connect(&gw).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    closed_by_server(&mut stream).await;
}

/// Idle sockets used to take every file descriptor, and then every new client timed out
/// (item 2). Over `[server] max_connections` a connection is closed at once and counted, and
/// the gateway serves again as soon as connections close.
#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    let config = format!(
        "[server]\nheader_read_timeout_secs = 60\nmax_connections = 4\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        digest("sk-t")
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        wait_ready: false,
        ..Options::default()
    });
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(&gw).await);
    }
    // Give the gateway a moment to accept the four before the fifth comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = connect(&gw).await;
    closed_by_server(&mut over).await;
    drop(idle);
    let mut served = false;
    for _ in 0..100 {
        if let Ok(response) = gw.client().get(gw.url("/health")).send().await {
            served = response.status() == 200;
            if served {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served,
        "the gateway serves again once the idle sockets close"
    );
    assert!(gw.metric("gateway_connections_refused_total").await >= 1.0);
}

/// TLS: a client that never starts its handshake, and one idle after it, are both closed
/// (item 2: a TLS session idle after the handshake was held for good).
#[tokio::test]
async fn tls_connections_idle_before_or_after_the_handshake_are_closed() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let config = format!(
        "[server]\nheader_read_timeout_secs = 1\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        cert_path.display(),
        key_path.display(),
        digest("sk-t")
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let address = gw.base.trim_start_matches("https://").to_string();

    // No handshake at all: closed at the same 1 s (the handshake timeout).
    let mut silent = TcpStream::connect(&address).await.unwrap();
    closed_by_server(&mut silent).await;

    // A finished handshake, then silence: the first-byte deadline (1 s) closes it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(&address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the handshake");
    closed_by_server(&mut tls).await;
}

/// The web console's routes (issue 36): no page a shared cache may keep, a content security
/// policy that allows this origin only and no framing, the key posted and never taken from a
/// URL, sign-in attempts limited per address, cookies HttpOnly and SameSite=Strict.
#[tokio::test]
async fn the_consoles_routes_are_hardened() {
    let config = format!(
        "admin_keys = [\"{}\"]\n[console]\nsign_in_attempts_per_minute = 6\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        digest("sk-console-op"),
        digest("sk-t")
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let check = |response: &reqwest::Response, what: &str| {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("cache-control"), "no-store", "{what}");
        let policy = header("content-security-policy");
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(part), "{what}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
        assert_eq!(header("x-frame-options"), "DENY", "{what}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    };
    let concrete = |template: &str| template.replace("{tenant}", "t").replace("{key}", "k");
    // Signed out: every route answers with the headers, and none shows anything but the form.
    for template in gateway::paths::console::ALL {
        let path = concrete(template);
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let response = client
                .request(method.clone(), gw.url(&path))
                .header("content-type", "application/x-www-form-urlencoded")
                .send()
                .await
                .unwrap();
            check(&response, &format!("{method} {path}"));
            let status = response.status().as_u16();
            let open = path.ends_with("/sign-in") || path.contains("/assets/");
            assert!(
                open || matches!(status, 303 | 401 | 403 | 405),
                "{method} {path} answered {status} without a session"
            );
        }
    }
    // A key in the URL is never taken: not from a GET, not from a POST's query string.
    let form = client.get(gw.url("/console/sign-in")).send().await.unwrap();
    let cookie = form.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let sign_in = |query: String, body: String| {
        client
            .post(gw.url(&format!("/console/sign-in{query}")))
            .header("cookie", format!("console_sign_in={token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let response = client
        .get(gw.url("/console/sign-in?key=sk-console-op"))
        .send()
        .await
        .unwrap();
    assert!(!format!("{:?}", response.headers()).contains("console_session="));
    let response = sign_in(format!("?key=sk-console-op&csrf={token}"), String::new())
        .await
        .unwrap();
    assert_ne!(
        response.status(),
        303,
        "a key in the query string signed in"
    );
    // The form's own token is needed (double-submit), then the key in the body signs in.
    let response = sign_in(String::new(), "key=sk-console-op&csrf=wrong".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = sign_in(String::new(), format!("key=sk-console-op&csrf={token}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let session = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("console_session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain HTTP: no Secure flag");
    let session = session.split(';').next().unwrap().to_string();
    // Signed in: every page keeps the headers.
    for template in gateway::paths::console::ALL {
        let response = client
            .get(gw.url(&concrete(template)))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        check(&response, &format!("GET {template} signed in"));
    }
    // Six attempts a minute from one address (four made above); the seventh waits (a wrong key
    // counts too).
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = sign_in(String::new(), format!("key=sk-wrong&csrf={token}"))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429], "two allowed attempts were left");
}
