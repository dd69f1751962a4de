//! Records the commit the gateway is built from, for `/version` and `gateway_build_info`.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=GATEWAY_GIT_COMMIT={commit}");
    // A new commit changes HEAD (detached) or the branch's ref. Only paths that exist: cargo
    // counts a missing one as changed, which rebuilt the crate (and everything above it) on
    // every cargo command in a clone without packed refs.
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
