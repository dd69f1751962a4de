//! Hot reload of tenants, keys and limits: when the config file changes (or on SIGHUP), it is
//! read again and, if valid, its tenants replace the current ones. Everything else (listen
//! address, TLS, models, pools, routing, ledger, quotas, telemetry but its metrics keys) needs a
//! restart: a reload that finds those changed says which, and that they are not applied.
//! In-flight requests keep what they were admitted with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config::GatewayConfig;
use crate::directory::Directory;
use crate::state::AppState;

/// The config file the process follows, with its contents as the process started from them
/// (what it still runs for the sections that only a restart applies).
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    at_start: toml::Table,
}

impl ConfigFile {
    /// The file at `path`, as it reads now.
    pub fn new(path: PathBuf) -> Arc<Self> {
        let at_start = read_table(&path).unwrap_or_default();
        Arc::new(Self { path, at_start })
    }
}

fn read_table(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

/// Top-level settings a reload applies: tenants, the keys and the LoRA adapters.
const APPLIED_LIVE: &[&str] = &["tenants", "admin_keys", "allow_empty_reload", "adapters"];

/// The settings of `new` that differ from `running` and that only a restart applies, by their
/// name in the file (`pools`, `routing`, ...; `telemetry` but for its `metrics_keys`, which a
/// reload applies).
pub fn restart_only_changes(running: &toml::Table, new: &toml::Table) -> Vec<String> {
    let without_live = |table: &toml::Table, key: &str| -> Option<toml::Value> {
        let mut value = table.get(key)?.clone();
        if let (Some(section), "telemetry") = (value.as_table_mut(), key) {
            section.remove("metrics_keys");
        }
        Some(value)
    };
    let mut keys: Vec<&String> = running.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| !APPLIED_LIVE.contains(&key.as_str()))
        .filter(|key| without_live(running, key) != without_live(new, key))
        .cloned()
        .collect()
}

/// Reads the file and swaps in its tenants; a broken file keeps the previous ones, and so does
/// a file that would leave no tenant or no admin key where there were some (an empty file, or
/// one caught half-written), unless it sets `allow_empty_reload = true`.
pub fn reload(state: &AppState, file: &ConfigFile) {
    let path = &file.path;
    let current = state.directory();
    let loaded = GatewayConfig::load(path).and_then(|c| {
        let directory = Directory::from_config(&c)?;
        // With a control-plane store in force, the file still brings the admin and metrics
        // keys; the tenants stay the store's.
        let directory = match (state.store(), &current.snapshot) {
            (Some(_), Some(snapshot)) => {
                if !c.tenants.is_empty() {
                    tracing::warn!(path = %path.display(), "config reload: [[tenants]] are ignored, the control-plane store holds the tenants");
                }
                directory.with_store(snapshot.clone())?
            }
            _ => directory,
        };
        Ok((directory, c.allow_empty_reload))
    });
    let (directory, allow_empty) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload failed; keeping the previous tenants");
            return;
        }
    };
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
    tracing::info!(path = %path.display(), tenants, keys, "tenants, keys and limits reloaded");
    let unapplied = read_table(path)
        .map(|new| restart_only_changes(&file.at_start, &new))
        .unwrap_or_default();
    if !unapplied.is_empty() {
        tracing::warn!(
            path = %path.display(),
            sections = %unapplied.join(", "),
            "config reload: these settings changed and need a restart; they are not applied"
        );
    }
}

/// How long the file must be left alone before it is read again.
const QUIET: Duration = Duration::from_millis(150);

/// The symlink a Kubernetes ConfigMap volume swaps to publish an update atomically.
const CONFIGMAP_DATA: &str = "..data";

/// Watches the config file's directory (editors replace files by renaming, so the file itself
/// is not watched). The returned watcher must be kept alive.
pub fn watch(state: AppState, file: Arc<ConfigFile>) -> notify::Result<notify::RecommendedWatcher> {
    let path = file.path.clone();
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
                reload(&state, &file);
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

/// Reloads on every SIGHUP.
#[cfg(unix)]
pub async fn reload_on_sighup(state: AppState, file: Arc<ConfigFile>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return;
    };
    while hangups.recv().await.is_some() {
        let (state, file) = (state.clone(), file.clone());
        let _ = tokio::task::spawn_blocking(move || reload(&state, &file)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_the_changed_settings_that_need_a_restart() {
        let running: toml::Table = r#"
            listen = "127.0.0.1:8080"
            admin_keys = ["a"]
            [routing]
            request_timeout_secs = 600
            [telemetry]
            metrics_keys = ["m"]
            [[tenants]]
            id = "t"
        "#
        .parse()
        .unwrap();
        let mut new = running.clone();
        new.insert("admin_keys".into(), toml::Value::Array(vec![]));
        // `[[adapters]]` live in the directory a reload swaps in.
        new.insert("adapters".into(), toml::Value::Array(vec![]));
        new["telemetry"]
            .as_table_mut()
            .unwrap()
            .insert("metrics_keys".into(), toml::Value::Array(vec![]));
        assert!(restart_only_changes(&running, &new).is_empty());
        new["routing"]
            .as_table_mut()
            .unwrap()
            .insert("request_timeout_secs".into(), 30.into());
        new.insert("quotas".into(), toml::Table::new().into());
        new["telemetry"]
            .as_table_mut()
            .unwrap()
            .insert("log_format".into(), "json".into());
        assert_eq!(
            restart_only_changes(&running, &new),
            ["quotas", "routing", "telemetry"]
        );
    }
}
