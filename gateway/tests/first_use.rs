//! What a new user meets first (issue 30): a fresh clone whose tests need nothing beside the
//! repository, docs whose links lead somewhere, and a container image that starts with no
//! published key.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::model_path;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every text file of the repository (build outputs and git's own files aside).
fn text_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                text_files(&path, found);
            }
        } else if [".rs", ".sh", ".toml", ".md", ".py", ".yaml", ".yml", ".txt"]
            .iter()
            .any(|ext| name.ends_with(ext))
            || name == "run"
        {
            found.push(path);
        }
    }
}

/// A fresh clone has nothing beside it: no test, bench, script or doc may read the team's
/// shared folder next to the checkout (the tests used to read their fixtures from there).
#[test]
fn nothing_in_the_repository_reads_the_folder_beside_it() {
    // Spelled in two parts so that this file does not find itself.
    let beside = format!("{}/{}", "..", "shared");
    let mut files = Vec::new();
    text_files(&repository(), &mut files);
    assert!(files.len() > 100, "walked {} files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|text| {
                text.contains(&beside) || text.contains(&format!("{}/fixtures", "shared"))
            })
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "{offenders:#?}");
}

/// Every relative link in README.md and docs/ points at a path the repository has.
#[test]
fn every_relative_link_in_the_docs_leads_to_a_file_of_the_repository() {
    let root = repository();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in markdown_links(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            checked += 1;
            if !page.parent().unwrap().join(file).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The targets of `[text](target)` links.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].trim();
            if !target.is_empty() && !target.contains(char::is_whitespace) {
                links.push(target.to_string());
            }
        }
    }
    links
}

#[test]
fn the_link_finder_finds_links() {
    assert_eq!(
        markdown_links("see [a](docs/a.md) and [b](https://x.org/y) or [c](#top)."),
        ["docs/a.md", "https://x.org/y", "#top"]
    );
}

/// The container image's start command with no configuration mounted (run here without
/// Docker): it serves the demo tenant with a key it generates, and no example key opens it.
#[tokio::test]
async fn the_image_starts_with_no_usable_example_key() {
    let root = repository();
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert!(
        !dockerfile.contains("examples/gateway.toml"),
        "the image must not bake the example configuration"
    );
    assert!(dockerfile.contains("deploy/entrypoint.sh"));
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg(root.join("deploy/entrypoint.sh"))
        .env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY_CONFIG", data.path().join("not-mounted.toml"))
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_MODEL", model_path())
        .env("GATEWAY_DATA_DIR", data.path())
        .env("RUST_LOG", "warn")
        .env_remove("GATEWAY_DEMO_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut key = None;
    let base = loop {
        let line = lines.next().expect("the entrypoint exited").unwrap();
        if let Some(rest) = line.split("API key ").nth(1) {
            key = rest.split_whitespace().next().map(String::from);
        }
        if let Some(url) = line.strip_prefix("gateway listening on ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let key = key.expect("a generated key, printed once");
    assert!(key.starts_with("sk-") && key.len() > 30, "{key}");
    let client = reqwest::Client::new();
    let status = |path: &'static str, key: String| {
        let request = client.get(format!("{base}{path}")).bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for published in [
        "sk-example-admin",
        "sk-example-acme",
        "sk-example-hospital-a",
    ] {
        assert_eq!(
            status("/v1/models", published.into()).await,
            401,
            "{published}"
        );
        assert_eq!(
            status("/admin/tenants", published.into()).await,
            401,
            "{published}"
        );
    }
    assert_eq!(status("/v1/models", key).await, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}
