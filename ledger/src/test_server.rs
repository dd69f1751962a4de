//! A real PostgreSQL server for tests (feature `test-server`): a fresh cluster (`initdb`) in a
//! temporary directory, started on a free loopback port, stopped and removed on drop. The
//! binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`);
//! `scripts/test.sh` installs it when absent. PostgreSQL refuses to run as root: as root, the
//! cluster belongs to the package's `postgres` user and its processes run as that user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server of a test.
pub struct PostgresServer {
    port: u16,
    bin: PathBuf,
    child: Option<Child>,
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

/// The newest installed server's binaries.
fn binaries() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|bin| bin.join("initdb").is_file());
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql: install Debian's postgresql package \
             (scripts/test.sh does when it is absent)"
        )
    })
}

/// As root: the `postgres` user's ids (PostgreSQL will not run as root).
fn run_as() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((
        id("-u")
            .expect("as root, the `postgres` user (Debian's postgresql package) runs the server"),
        id("-g")?,
    ))
}

fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

impl PostgresServer {
    /// Makes a cluster and starts it on a free port.
    pub fn start() -> Self {
        let bin = binaries();
        let user = run_as();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let initdb = command(&bin.join("initdb"), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", "gateway", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(initdb.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            port,
            bin,
            child: None,
            user,
            dir,
        };
        server.resume();
        server
    }

    /// Starts the server (again, after [`Self::stop`]) on the same port and data, and waits
    /// until it takes connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is running already");
        let child = command(&self.bin.join("postgres"), self.user)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ready() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (a fast shutdown: its clients' connections break), keeping its data
    /// for [`Self::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let created = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "gateway",
                name,
            ])
            .status()
            .expect("run createdb");
        assert!(created.success(), "createdb {name} failed");
        format!("postgres://gateway@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT), so that no backend outlives the test.
        self.stop();
    }
}
