#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: parse wrk output, sample worker memory, and
write one section of docs/benchmarks.md (between <!-- bench:NAME --> markers),
leaving the other sections and the hand-written notes untouched."""
import json
import os
import re
import sys
import time


def wrk(text):
    """wrk --latency output -> dict(rps, p50, p99, max, requests, non2xx, errors)."""
    if "50%" not in text:
        sys.exit("wrk gave no latency distribution:\n" + text)

    def ms(v):
        m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
        if not m:
            sys.exit(f"unexpected wrk latency {v!r} in:\n{text}")
        n, u = float(m.group(1)), m.group(2)
        return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000}[u]

    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": ms(re.search(r"^\s+50%\s+(\S+)\s*$", text, re.M).group(1)),
        "p99": ms(re.search(r"^\s+99%\s+(\S+)\s*$", text, re.M).group(1)),
        "max": ms(re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", text, re.M).group(1)),
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "non2xx": int(re.search(r"Non-2xx or 3xx responses: (\d+)", text).group(1)) if "Non-2xx" in text else 0,
        "errors": sum(int(x) for x in m.groups()) if m else 0,
    }


def sample(pattern, seconds, out):
    """Polls the RSS of every process whose cmdline contains `pattern` every
    10 ms for `seconds`; writes {pid: [[t, rss], ...]} (only changes)."""
    page = os.sysconf("SC_PAGE_SIZE")
    series = {}
    end = time.time() + seconds
    while time.time() < end:
        now = time.time()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                if pattern.encode() not in cmd:
                    continue
                rss = int(open(f"/proc/{pid}/statm").read().split()[1]) * page
            except OSError:
                continue
            s = series.setdefault(pid, [])
            if not s or s[-1][1] != rss:
                s.append([now, rss])
        time.sleep(0.01)
    json.dump(series, open(out, "w"))


def section(path, name, body):
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    elif "\n## Notes" in text:
        i = text.index("\n## Notes")
        text = text[:i].rstrip() + "\n\n" + block + "\n" + text[i:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    open(path, "w").write(text)
    print(body)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "wrk":
        print(json.dumps(wrk(sys.stdin.read())))
    elif cmd == "sample":
        sample(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    elif cmd == "section":
        section(sys.argv[2], sys.argv[3], sys.stdin.read())
