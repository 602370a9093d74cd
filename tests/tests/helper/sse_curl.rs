//! SSE through a proxy, read as a client reads it: `curl -N` (which writes
//! what it gets at once) with each `data:` payload timed as it reaches
//! curl's stdout, and the check that frames arrived one by one rather than
//! in one late burst (what a buffering proxy would deliver).

use super::*;

/// Runs `cmd` (a `curl -N …` whose stdout is the stream) and returns its
/// exit status, its stderr and every `data:` payload with the time since
/// the start at which curl wrote it.
pub fn curl_sse(cmd: &mut Command) -> (ExitStatus, String, Vec<(Duration, String)>) {
    use std::os::unix::process::CommandExt;
    let start = Instant::now();
    let mut curl = ChildGuard::new(
        "curl",
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn curl"),
    );
    let stdout = curl.child.stdout.take().expect("curl stdout");
    let mut frames = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read curl stdout");
        if let Some(data) = line.strip_prefix("data: ") {
            frames.push((start.elapsed(), data.to_string()));
        }
    }
    let status = curl.child.wait().expect("wait curl");
    let mut err = String::new();
    if let Some(mut e) = curl.child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err, frames)
}

/// Frame by frame: the stream lasted at least 1.5 s, the first frame
/// reached the client long before the last one, and frames kept coming in
/// between.
pub fn assert_incremental(times: &[Duration]) {
    assert!(!times.is_empty(), "no frames");
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(
        last >= Duration::from_millis(1500),
        "the simulated stream should last >= 1.5 s, took {last:?}"
    );
    assert!(
        first * 2 < last,
        "first frame at {first:?}, last at {last:?}: frames were held back"
    );
    let midway = times.iter().filter(|t| **t < (first + last) / 2).count();
    assert!(
        midway >= 2 && midway < times.len() - 1,
        "frames by the midpoint: {midway} of {} ({times:?})",
        times.len()
    );
}
