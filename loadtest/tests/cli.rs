//! The `loadtest` binary as a user runs it: failures are explained, not just counted.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

fn scenario(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("scenario.toml");
    std::fs::write(
        &path,
        r#"
        model = "m"
        endpoint = "completions"
        stop = { requests = 3 }

        [[tenants]]
        label = "t"
        api_key = "sk-x"
        arrival = { kind = "closed_loop", concurrency = 1 }
        prompts = { kind = "synthetic", tokens = 3 }
        max_tokens = 2
        "#,
    )
    .unwrap();
    path
}

fn run(url: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "--quiet", "--url", url, "--scenario"])
        .arg(scenario(dir.path()))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_dead_port_is_reported_as_refused_and_fails_the_run() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, stdout, stderr) = run(&format!("http://127.0.0.1:{port}"));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.to_lowercase().contains("connection refused"),
        "{stdout}"
    );
    assert!(stdout.contains("3 x Transport"), "{stdout}");
    assert!(stderr.contains("every request failed"), "{stderr}");
}

#[test]
fn a_refused_key_shows_the_status_and_the_servers_message() {
    // A minimal HTTP server that answers every request 401 with an OpenAI error body.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many body bytes as Content-Length says.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let body = r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let (code, stdout, stderr) = run(&url);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ClientError: HTTP 401: Incorrect API key provided"),
        "{stdout}"
    );
    assert!(stderr.contains("--url ends in /v1"), "{stderr}");
}
