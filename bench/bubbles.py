"""Bubble benchmark: a Jupyter Server started in a bubblewrap sandbox through the API, and reached
through the gateway, against the same Jupyter Server started bare and reached over its socket,
in the same run and the same Python environment (.venv-bubble).

    sudo .venv/bin/python bench/bubbles.py [--starts N] [--requests N] [--concurrent N]

Four figures, on a throw-away site (temporary home, SQLite, no grants so no warehouse; a real
uvicorn on a loopback port):

1. Cold start: POST /api/v1/bubbles (which returns when Jupyter answers) until the first GET
   /bubbles/<id>/api/status through the gateway answers 200, against
   `python -m jupyter_server --sock=… --IdentityProvider.token=x --no-browser --allow-root` until its
   /api/status answers over the Unix socket. One discarded warm-up each, then N of each,
   interleaved; medians and ratio.
2. Proxied request latency: GET /bubbles/<id>/api/status through the gateway (bearer token of a
   project member) against the same GET sent straight to the bubble's socket with its Jupyter
   token; interleaved, after a warm-up; p50, p99 and ratio.
3. Memory of an idle bubble: `memory_bytes` of GET /api/v1/bubbles/<id> (the sandbox's memory
   cgroup) ~3 s after each cold start; the bare server's RSS at the same moment for comparison.
4. N bubbles at once (default 20, one project each: the quota is one bubble per project):
   total wall time, how many reached running, their total memory; then all deleted.

Needs root and bubblewrap (./dev.sh). Writes bench/results/bubbles.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform as host
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from controller import accounts  # noqa: E402
from controller.api.app import create_app  # noqa: E402
from controller.config import load_settings  # noqa: E402
from controller.home import init_home  # noqa: E402
from controller.platform import Platform  # noqa: E402
from controller.runtimes.local import DEFAULT_ENV  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bubbles.json"
TARGETS = {"cold_start_ratio_max": 1.3}
POLL = 0.05  # the controller's own readiness poll (Bubbles._wait_ready) sleeps as long
TODAY = dt.date.today()
MIB = 1024 * 1024


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Served:
    """The site's app on a loopback port, in a thread (as in tests/test_bubbles.py)."""

    def __init__(self, platform: Platform) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(platform), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=180,
                                 limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)


class Bench:
    def __init__(self, platform: Platform, served: Served, token: str) -> None:
        self.platform = platform
        self.served = served
        self.http = served.http
        self.headers = {"Authorization": f"Bearer {token}"}
        self.live: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ API helpers

    def project(self, pid: str) -> None:
        body = {"id": pid, "title": "Banc d'essai", "purpose": "research", "legal_basis": "public_task",
                "dpia_reference": "AIPD-1", "start_date": (TODAY - dt.timedelta(days=3)).isoformat(),
                "end_date": (TODAY + dt.timedelta(days=100)).isoformat()}
        answer = self.http.post("/api/v1/projects", json=body, headers=self.headers)
        assert answer.status_code == 201, answer.text

    def start(self, pid: str) -> tuple[httpx.Response, float]:
        t0 = time.perf_counter()
        answer = self.http.post("/api/v1/bubbles", json={"project": pid}, headers=self.headers)
        elapsed = time.perf_counter() - t0
        if answer.status_code == 201:
            with self._lock:
                self.live.add(answer.json()["id"])
        return answer, elapsed

    def look(self, bubble_id: str) -> dict:
        answer = self.http.get(f"/api/v1/bubbles/{bubble_id}", headers=self.headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def delete(self, bubble_id: str) -> float:
        t0 = time.perf_counter()
        answer = self.http.delete(f"/api/v1/bubbles/{bubble_id}", headers=self.headers)
        elapsed = time.perf_counter() - t0
        assert answer.status_code == 200, answer.text
        with self._lock:
            self.live.discard(bubble_id)
        return elapsed

    def cgroup_memory(self, bubble_id: str) -> dict | None:
        """rss and page cache of the sandbox's memory cgroup (cgroup v1 memory.stat, or v2)."""
        layout = self.platform.bubbles.runtime.layout(bubble_id)
        try:
            cgroups = json.loads(layout.state.read_text()).get("cgroups", [])
        except (OSError, ValueError):
            return None
        for directory in cgroups:
            stat = Path(directory) / "memory.stat"
            if stat.exists():
                values = dict(line.split() for line in stat.read_text().splitlines() if len(line.split()) == 2)
                rss = values.get("total_rss", values.get("anon"))
                cache = values.get("total_cache", values.get("file"))
                if rss is not None:
                    return {"rss_mib": round(int(rss) / MIB, 1), "cache_mib": round(int(cache or 0) / MIB, 1)}
        return None

    # ------------------------------------------------------------------ 1 and 3: cold start, idle memory

    def bubble_cold_start(self, pid: str, idle: float) -> dict:
        t0 = time.perf_counter()
        answer, api_seconds = self.start(pid)
        assert answer.status_code == 201, answer.text
        bubble_id = answer.json()["id"]
        url = f"/bubbles/{bubble_id}/api/status"
        while True:
            status = self.http.get(url, headers=self.headers)
            if status.status_code == 200:
                break
            if time.perf_counter() - t0 > 120:
                raise TimeoutError(f"{url}: {status.status_code} {status.text[:200]}")
            time.sleep(POLL)
        total = time.perf_counter() - t0
        time.sleep(idle)
        found = self.look(bubble_id)
        breakdown = self.cgroup_memory(bubble_id)
        delete_seconds = self.delete(bubble_id)
        return {"seconds": total, "api_seconds": api_seconds, "memory_bytes": found.get("memory_bytes"),
                "cgroup": breakdown, "delete_seconds": delete_seconds, "profile": found["profile"]}

    # ------------------------------------------------------------------ 2: latency

    def latency(self, pid: str, requests: int, warmup: int) -> dict:
        answer, _ = self.start(pid)
        assert answer.status_code == 201, answer.text
        bubble_id = answer.json()["id"]
        bubbles = self.platform.bubbles
        socket = str(bubbles.runtime.layout(bubble_id).socket)
        url = f"/bubbles/{bubble_id}/api/status"
        direct_headers = {"Authorization": f"token {bubbles.token(bubble_id)}"}
        gateway, direct = [], []
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://bulle", timeout=30) as uds:
                for _ in range(warmup):
                    assert self.http.get(url, headers=self.headers).status_code == 200
                    assert uds.get(url, headers=direct_headers).status_code == 200
                for _ in range(requests):  # interleaved: both see the same machine at the same moment
                    t0 = time.perf_counter()
                    status = self.http.get(url, headers=self.headers).status_code
                    gateway.append(time.perf_counter() - t0)
                    assert status == 200, status
                    t0 = time.perf_counter()
                    status = uds.get(url, headers=direct_headers).status_code
                    direct.append(time.perf_counter() - t0)
                    assert status == 200, status
        finally:
            self.delete(bubble_id)
        figures = {}
        for name, values in (("gateway", gateway), ("direct_socket", direct)):
            figures[name] = {"p50_ms": ms(statistics.median(values)), "p99_ms": ms(percentile(values, 0.99)),
                             "mean_ms": ms(statistics.fmean(values)), "max_ms": ms(max(values))}
        figures["ratio_p50"] = round(figures["gateway"]["p50_ms"] / figures["direct_socket"]["p50_ms"], 2)
        figures["ratio_p99"] = round(figures["gateway"]["p99_ms"] / figures["direct_socket"]["p99_ms"], 2)
        figures["requests"], figures["warmup"] = requests, warmup
        return figures

    # ------------------------------------------------------------------ 4: many at once

    def many(self, pids: list[str]) -> dict:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(pids)) as pool:
            started = list(pool.map(self.start, pids))
        wall = time.perf_counter() - t0
        ids, failures = [], []
        for answer, _ in started:
            if answer.status_code == 201:
                ids.append(answer.json()["id"])
            else:
                failures.append(f"{answer.status_code}: {answer.text[:300]}")
        looks = [self.look(b) for b in ids]
        running = [f for f in looks if f["state"] == "running"]
        memory = [f.get("memory_bytes") or 0 for f in running]
        # Each one answers through the gateway, too.
        answering = sum(self.http.get(f"/bubbles/{f['id']}/api/status", headers=self.headers).status_code == 200
                        for f in running)
        t1 = time.perf_counter()
        with ThreadPoolExecutor(min(8, max(1, len(ids)))) as pool:
            list(pool.map(self.delete, ids))
        delete_wall = time.perf_counter() - t1
        api = sorted(seconds for _, seconds in started)
        return {"bubbles": len(pids), "wall_seconds": round(wall, 2), "running": len(running),
                "answering_through_gateway": answering, "failures": failures,
                "start_api_seconds": {"min": round(api[0], 2), "median": round(statistics.median(api), 2),
                                      "max": round(api[-1], 2)},
                "total_memory_mib": round(sum(memory) / MIB, 1),
                "memory_per_bubble_mib": round(sum(memory) / MIB / max(1, len(memory)), 1),
                "delete_all_seconds": round(delete_wall, 2)}

    def cleanup(self) -> None:
        for bubble_id in sorted(self.live):
            try:
                self.delete(bubble_id)
            except Exception as exc:  # noqa: BLE001 — the runtime wipes what the API could not
                print(f"cleanup: {bubble_id}: {exc}", file=sys.stderr)
        runtime = self.platform.bubbles.runtime
        for bubble_id in runtime.list():
            runtime.delete(bubble_id)


# ---------------------------------------------------------------------- the bare baseline

def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bare_cold_start(python_env: Path, idle: float) -> dict:
    """The same Jupyter Server, no sandbox: until /api/status answers over its Unix socket."""
    work = Path(tempfile.mkdtemp(prefix="bulles-bare-"))
    sock = work / "j.sock"
    env = {"PATH": f"{python_env}/bin:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "TMPDIR": str(work),
           "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "JUPYTER_DATA_DIR": str(work / "data"), "IPYTHONDIR": str(work / "ipython")}
    command = [str(python_env / "bin/python"), "-m", "jupyter_server", f"--sock={sock}", "--sock-mode=0600",
               "--IdentityProvider.token=x", "--no-browser", "--allow-root", f"--ServerApp.root_dir={work}",
               "--KernelManager.transport=ipc"]
    t0 = time.perf_counter()
    # cwd is on sys.path with -m: an empty directory, not wherever the benchmark was started.
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    # Host: localhost (a bare server refuses other hosts; bubbles allow them, the gateway's).
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost",
                          timeout=5) as client:
            while True:
                try:
                    if client.get("/api/status", headers={"Authorization": "token x"}).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.perf_counter() - t0 > 120:
                    tail = (work / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"bare jupyter_server did not answer (exit {process.poll()}):\n{tail}")
                time.sleep(POLL)
            seconds = time.perf_counter() - t0
        time.sleep(idle)
        rss = rss_bytes(process.pid)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds, "rss_bytes": rss}


# ---------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="cold starts of each kind (after one warm-up)")
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind for the latency")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading memory")
    parser.add_argument("--concurrent", type=int, default=20, help="bubbles started at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/bubbles.py needs root (the local runtime gives each bubble its own user, cgroups, disk)")
    logging.basicConfig(level=logging.WARNING)
    python_env = DEFAULT_ENV.resolve()
    overall = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bulles-bench-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        init_home(home)
        settings = load_settings(home, checkpoint_interval_seconds=0, reconcile_seconds=0, bubbles_per_project=1,
                                 bubble_env=python_env)
        with Platform(settings) as platform:
            if platform.bubbles is None:
                sys.exit(f"bubbles cannot run here: {platform.bubbles_unavailable}")
            accounts.add_organisation(platform, "bench", "labo", "Laboratoire")
            _, token = accounts.add_user(platform, "bench", "bruno", ["researcher"], "labo")
            runtime = platform.bubbles.runtime
            served = Served(platform)
            bench = Bench(platform, served, token)
            try:
                bench.project("bench-cold")
                # 1 and 3: one warm-up of each (page cache, first mkfs), then interleaved.
                print("cold starts: warm-up…", flush=True)
                warm_bubble = bench.bubble_cold_start("bench-cold", idle=0)
                warm_bare = bare_cold_start(python_env, idle=0)
                bubble_runs, bare_runs = [], []
                for i in range(args.starts):
                    bubble_runs.append(bench.bubble_cold_start("bench-cold", idle=args.idle))
                    bare_runs.append(bare_cold_start(python_env, idle=args.idle))
                    print(f"  {i + 1}/{args.starts}: bubble {bubble_runs[-1]['seconds']:.2f} s "
                          f"(API {bubble_runs[-1]['api_seconds']:.2f} s), bare {bare_runs[-1]['seconds']:.2f} s",
                          flush=True)
                # 2: latency.
                print("latency…", flush=True)
                latency = bench.latency("bench-cold", args.requests, args.warmup)
                # 4: many at once.
                pids = [f"bench-many-{i:02d}" for i in range(args.concurrent)]
                for pid in pids:
                    bench.project(pid)
                print(f"{args.concurrent} bubbles at once…", flush=True)
                many = bench.many(pids)
            finally:
                bench.cleanup()
                served.close()
                left = runtime.list()
                try:
                    runtime.sockets.rmdir()  # /run/bulles/<digest> of this throw-away home
                except OSError:
                    pass
        if left:
            print(f"warning: sandboxes left behind: {left}", file=sys.stderr)

    bubble_median = statistics.median(r["seconds"] for r in bubble_runs)
    api_median = statistics.median(r["api_seconds"] for r in bubble_runs)
    bare_median = statistics.median(r["seconds"] for r in bare_runs)
    memory = [r["memory_bytes"] for r in bubble_runs if r["memory_bytes"]]
    rss = [r["rss_bytes"] for r in bare_runs]
    cold = {
        "runs": args.starts,
        "bubble": {"median_seconds": round(bubble_median, 3), "api_median_seconds": round(api_median, 3),
                   "seconds": [round(r["seconds"], 3) for r in bubble_runs],
                   "api_seconds": [round(r["api_seconds"], 3) for r in bubble_runs],
                   "warmup_seconds": round(warm_bubble["seconds"], 3),
                   "delete_median_seconds": round(statistics.median(r["delete_seconds"] for r in bubble_runs), 3)},
        "bare_jupyter_server": {"median_seconds": round(bare_median, 3),
                                "seconds": [round(r["seconds"], 3) for r in bare_runs],
                                "warmup_seconds": round(warm_bare["seconds"], 3)},
        "ratio": round(bubble_median / bare_median, 2),
    }
    idle = {
        "idle_seconds": args.idle,
        "bubble_memory_mib": {"median": round(statistics.median(memory) / MIB, 1) if memory else None,
                              "values": [round(m / MIB, 1) for m in memory],
                              "cgroup_breakdown": [r["cgroup"] for r in bubble_runs]},
        "bare_rss_mib": {"median": round(statistics.median(rss) / MIB, 1), "values": [round(m / MIB, 1) for m in rss]},
        "measured": "memory_bytes of GET /api/v1/bubbles/<id>: the sandbox's memory cgroup usage "
                    "(cgroup v1 usage_in_bytes counts page cache charged to it); bare: VmRSS of the one process",
    }
    profile = bubble_runs[0]["profile"]
    result = {
        "benchmark": "bubbles",
        "python_env": str(python_env),
        "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "system": host.platform(),
                    "cgroups": f"v{runtime.cgroups}" if runtime.cgroups else None, "loop_disks": runtime.disks},
        "profile": {k: profile.get(k) for k in ("network", "cpu", "memory_mb", "disk_mb", "lifetime_hours")},
        "cold_start": cold,
        "latency": latency,
        "idle_memory": idle,
        "concurrent": many,
        "total_seconds": round(time.perf_counter() - overall, 1),
        "targets": TARGETS,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    g, d = latency["gateway"], latency["direct_socket"]
    verdict = "meets" if cold["ratio"] <= TARGETS["cold_start_ratio_max"] else "misses"
    print(f"cold start: bubble {bubble_median:.2f} s (API returns at {api_median:.2f} s) | bare jupyter_server "
          f"{bare_median:.2f} s | x{cold['ratio']} ({verdict} the x{TARGETS['cold_start_ratio_max']} target)")
    print(f"latency GET api/status: gateway p50 {g['p50_ms']} ms p99 {g['p99_ms']} ms | direct socket p50 "
          f"{d['p50_ms']} ms p99 {d['p99_ms']} ms | x{latency['ratio_p50']} p50, x{latency['ratio_p99']} p99")
    print(f"idle bubble: {idle['bubble_memory_mib']['median']} MiB (cgroup) | bare jupyter_server RSS "
          f"{idle['bare_rss_mib']['median']} MiB")
    print(f"{many['bubbles']} at once: {many['wall_seconds']} s, {many['running']} running "
          f"({many['answering_through_gateway']} answering), {many['total_memory_mib']} MiB in all "
          f"({many['memory_per_bubble_mib']} MiB each), deleted in {many['delete_all_seconds']} s"
          + (f", {len(many['failures'])} failed" if many["failures"] else ""))
    print(f"wrote {RESULTS} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
