//! The image built from the Dockerfile, and podman with the repository's
//! containers.conf (runc, ulimits within the sandbox's: scripts/lib/podman.sh).

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

/// A copy of `compose/docker-compose.yml` in `parent/compose/`, the file a
/// test runs: podman-compose 1.0 lets a `.env` beside the file override the
/// environment, and a checkout that followed the docs has one in
/// `compose/` (its HEARTALK_IMAGE and HEARTALK_PORT would beat the test's).
/// Returns the copy's directory.
pub fn dev_compose_copy(parent: &Path) -> PathBuf {
    let dir = parent.join("compose");
    std::fs::create_dir_all(&dir).expect("mkdir compose");
    std::fs::copy(
        repo().join("compose/docker-compose.yml"),
        dir.join("docker-compose.yml"),
    )
    .expect("copy compose/docker-compose.yml");
    dir
}
