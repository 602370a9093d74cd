//! The image built from the Dockerfile, podman with the repository's
//! containers.conf (runc, ulimits within the sandbox's, netavark:
//! scripts/lib/podman.sh), and `compose/docker-compose.yml` run by
//! podman-compose in a project of its own ([`DevCompose`]), removed with
//! its volumes and networks at the end.

use super::*;

/// The containers.conf that `scripts/image.sh` writes.
pub fn podman_conf() -> PathBuf {
    repo().join("target/podman/containers.conf")
}

/// `podman ARGS` with that containers.conf.
pub fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", podman_conf())
        .args(args)
        .output()
        .expect("run podman")
}

/// `podman ARGS`, which must succeed; its trimmed stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `podman healthcheck run NAME`: the container's own health check (podman
/// runs it on request only: no systemd timers here); on failure, what
/// podman printed.
pub fn healthcheck(name: &str) -> Result<(), String> {
    let out = podman(&["healthcheck", "run", name]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The image to run: `$HEARTALK_IMAGE` (scripts/test.sh builds it first),
/// or the one `scripts/image.sh` builds now.
pub fn built_image() -> String {
    if let Ok(name) = std::env::var("HEARTALK_IMAGE") {
        if !name.is_empty() && podman_conf().exists() {
            return name;
        }
    }
    let out = Command::new(repo().join("scripts/image.sh"))
        .current_dir(repo())
        .output()
        .expect("run scripts/image.sh");
    assert!(
        out.status.success(),
        "scripts/image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("image name")
        .to_string()
}

/// Removes the networks podman-compose created for `project`: its `down`
/// (1.0) leaves them behind, and each holds a subnet.
pub fn remove_compose_networks(project: &str) {
    let label = format!("label=io.podman.compose.project={project}");
    let nets = podman(&["network", "ls", "--quiet", "--filter", &label]);
    for net in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
        let _ = podman(&["network", "rm", "--force", net]);
    }
}

/// `compose/docker-compose.yml` as project `project`: a copy of the file
/// in a temp dir (podman-compose 1.0 lets a `.env` beside the file override
/// the environment, and a checkout that followed the docs has one in
/// `compose/`), run with this machine's containers.conf and the settings
/// the file needs here. Dropped, it is taken down with its volumes and
/// networks.
pub struct DevCompose {
    pub project: String,
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl DevCompose {
    /// `vars`: more environment for the file (`HEARTALK_IMAGE`, ...).
    pub fn new(project: String, vars: &[(&str, &str)]) -> DevCompose {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            repo().join("compose/docker-compose.yml"),
            dir.path().join("docker-compose.yml"),
        )
        .expect("copy compose/docker-compose.yml");
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DevCompose { project, dir, vars }
    }

    /// The copy of the compose file.
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("docker-compose.yml")
    }

    /// The environment the file needs here, on `cmd` (podman-compose, or
    /// a script that runs it): podman 4.3 has no `host-gateway` (and no
    /// backend runs here), the simulated provider whatever this machine's
    /// environment, and the `vars`.
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("CONTAINERS_CONF", podman_conf())
            .env("HOST_GATEWAY", "127.0.0.1")
            .env("BYTEPLUS_API_KEY", "")
            .env("BYTEPLUS_AMI_CHAT_EP", "")
            .env("BYTEPLUS_AMI_WORK_ASSISTANT_EP", "")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
    }

    /// `podman-compose -p PROJECT -f docker-compose.yml ARGS`.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.env(Command::new("podman-compose").current_dir(self.dir.path()))
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .output()
            .expect("run podman-compose")
    }

    /// [`DevCompose::run`], which must succeed; what it said.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "podman-compose {args:?}: {said}");
        said
    }

    /// The container of `service` (podman-compose's `PROJECT_SERVICE_1`).
    pub fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// `down --volumes` and the networks `down` leaves; may run twice.
    pub fn down(&self) {
        let _ = self.run(&["down", "--volumes"]);
        remove_compose_networks(&self.project);
    }
}

impl Drop for DevCompose {
    fn drop(&mut self) {
        self.down();
    }
}
