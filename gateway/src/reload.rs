//! Hot reload of tenants, keys and limits: when the config file changes (or on SIGHUP), it is
//! read again and, if valid, its tenants replace the current ones. Listen address, TLS and
//! models need a restart. In-flight requests keep what they were admitted with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config::GatewayConfig;
use crate::directory::Directory;
use crate::state::AppState;

/// Reads the file and swaps in its tenants; a broken file keeps the previous ones, and so does
/// a file that would leave no tenant or no admin key where there were some (an empty file, or
/// one caught half-written), unless it sets `allow_empty_reload = true`.
pub fn reload(state: &AppState, path: &Path) {
    let loaded = GatewayConfig::load(path)
        .and_then(|c| Directory::from_config(&c).map(|d| (d, c.allow_empty_reload)));
    let (directory, allow_empty) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload failed; keeping the previous tenants");
            return;
        }
    };
    let current = state.directory();
    let emptied = [
        ("tenant", current.tenants.len(), directory.tenants.len()),
        (
            "admin key",
            current.admin_key_count(),
            directory.admin_key_count(),
        ),
    ]
    .into_iter()
    .find(|&(_, before, after)| before > 0 && after == 0);
    if let (Some((what, before, _)), false) = (emptied, allow_empty) {
        tracing::error!(
            path = %path.display(),
            "config reload refused: the file has no {what} (there are {before} now); keeping the previous tenants. \
             If that is meant, set `allow_empty_reload = true` in the file"
        );
        return;
    }
    let (tenants, keys) = (directory.tenants.len(), directory.tenant_key_count());
    state.replace_directory(directory);
    tracing::info!(path = %path.display(), tenants, keys, "tenants reloaded");
}

/// How long the file must be left alone before it is read again.
const QUIET: Duration = Duration::from_millis(150);

/// The symlink a Kubernetes ConfigMap volume swaps to publish an update atomically.
const CONFIGMAP_DATA: &str = "..data";

/// Watches the config file's directory (editors replace files by renaming, so the file itself
/// is not watched). The returned watcher must be kept alive.
pub fn watch(state: AppState, path: PathBuf) -> notify::Result<notify::RecommendedWatcher> {
    let name = path.file_name().map(|n| n.to_owned());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // The file itself, or a Kubernetes ConfigMap update: the kubelet writes the new
            // files into a fresh hidden directory and swaps the `..data` symlink that the
            // file's own symlink goes through; only `..data` changes in the watched directory.
            let ours = event.paths.iter().any(|p| {
                let file = p.file_name();
                file == name.as_deref() || file == Some(std::ffi::OsStr::new(CONFIGMAP_DATA))
            });
            if ours && !event.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("config-reload".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // One reload per burst of events (an editor's save is several, a slow writer's
                // many): wait until the file has been quiet for a moment, so that a file being
                // written is read once it is complete.
                while rx.recv_timeout(QUIET).is_ok() {}
                reload(&state, &path);
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

/// Reloads on every SIGHUP.
#[cfg(unix)]
pub async fn reload_on_sighup(state: AppState, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return;
    };
    while hangups.recv().await.is_some() {
        let (state, path) = (state.clone(), path.clone());
        let _ = tokio::task::spawn_blocking(move || reload(&state, &path)).await;
    }
}
