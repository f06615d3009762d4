"""Gateway benchmark: the fast mock direct, then through tailgate (and any other gateway), side by side.

    .venv/bin/python bench/run.py [--quick] [--soak] [--other "CMD" --other-port PORT]

Starts ``bench/fast_upstream.py`` (pinned to the last CPU), then ``tailgate serve`` (pinned to
CPU 0) with everything on: loopback identity, a grant, a quota bucket charged by every request,
usage extraction and pricing, and every request recorded with its capture in SQLite. ``wrk``
(pinned beside the mock) drives the load; ``bench/loadgen.py`` measures time to first byte and
the lateness of each chunk of 512 paced concurrent streams. Gateway CPU per request is the
process's user+system time (``/proc/<pid>/stat``, all threads, background recording included)
over a run, less its idle burn, divided by the requests served. Prints one table and writes
``bench/results/latest.json``. ``--other`` starts another gateway the same way (``{upstream}``
and ``{port}`` in the command are replaced by the mock's URL and ``--other-port``); it must
serve ``POST /v1/chat/completions`` at that port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from procstat import CpuMeter, cpu_seconds, idle_rate, memory_kib  # noqa: E402

PATH = "/v1/chat/completions"
PLAIN_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":64}'
STREAM_BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],'
    b'"max_tokens":64,"stream":true}'
)
TARGETS = {
    "cpu_us_plain": 250,
    "cpu_us_stream": 600,
    "rps_plain": 4000,
    "added_p50_ms_c1": 0.3,
    "added_ttft_ms": 0.3,
    "rss_mb": 150,
}

_WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer -"
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n@@{{"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


@dataclass
class Layout:
    """Which CPU runs what: the gateway alone on one, the mock and the load on the others."""

    gateway: int | None
    upstream: int | None
    load: int | None

    @classmethod
    def detect(cls) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, None)
        if len(cpus) < 4:
            return cls(cpus[0], cpus[-1], cpus[-1])
        return cls(cpus[0], cpus[1], cpus[2])


def _pinned(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def one_core(pids: list[int], cpu: int | None) -> Iterator[None]:
    """Run ``pids`` (every thread) on ``cpu`` for a while, then put them back where they were.

    Latency at concurrency 1 is measured with the load, the mock and the gateway on one CPU: on
    a small VM a wake-up that crosses CPUs costs tens of microseconds, and the direct path
    (load and mock sharing a CPU) would otherwise pay none of the four the gateway path pays.
    """
    if cpu is None or not shutil.which("taskset"):
        yield
        return
    before = {pid: sorted(os.sched_getaffinity(pid)) for pid in pids}
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)
    try:
        yield
    finally:
        for pid, cpus in before.items():
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(
                    ["taskset", "-a", "-p", "-c", ",".join(map(str, cpus)), str(pid)],
                    check=True,
                    capture_output=True,
                )


def _taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


@contextlib.contextmanager
def process(
    args: list[str],
    cpu: int | None,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    stdout: int = subprocess.DEVNULL,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` pinned to ``cpu``; terminate it (then kill it) on the way out."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=stdout, stderr=out, env=env, preexec_fn=_pinned(cpu), cwd=ROOT)  # noqa: PLW1509 - no threads here
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if log:
            out.close()  # type: ignore[union-attr]


def tailgate_config(upstream_port: int, workdir: Path) -> str:
    """Everything on: identity, a grant, a quota bucket on the caller, usage, recording with captures."""
    return json.dumps(
        {
            "providers": {
                "mock": {
                    "baseurl": f"http://127.0.0.1:{upstream_port}",
                    "apikey": "sk-bench-not-a-secret",
                    "models": ["gpt-4o-mini"],
                    "compatibility": {"openai_chat": True},
                }
            },
            "grants": [
                {
                    "src": ["(loopback)"],
                    "app": {
                        "tailscale.com/cap/aperture": [
                            {"role": "admin", "read_metrics": True},
                            {"models": "**", "quotas": [{"bucket": "bench:<user>"}]},
                        ]
                    },
                }
            ],
            "quotas": {"bench:<user>": {"capacity": "$1000000.00", "rate": "$1000000.00/day"}},
            "server": {"database": str(workdir / "tailgate.db"), "identity": {"sources": ["loopback"]}},
        },
        indent=2,
    )


def nginx_config(upstream_port: int, port: int, workdir: Path) -> str:
    """nginx as a plain reverse proxy to the mock: one process, pooled upstream connections,
    answers passed on as they arrive (no buffering, as a gateway must for streams)."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/nginx-access.log;
    keepalive_requests 10000000;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    upstream mock {{ server 127.0.0.1:{upstream_port}; keepalive 128; keepalive_requests 10000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def tailgate_command(
    config: Path, port: int, switch_interval_ms: float | None = None, workers: int = 1
) -> list[str]:
    """``tailgate serve --workers N`` on ``127.0.0.1:port`` (optionally another GIL switch interval)."""
    command = [sys.executable, "-m", "tailgate"]
    if switch_interval_ms:
        launcher = f"import sys; sys.setswitchinterval({switch_interval_ms / 1000}); "
        launcher += "from tailgate.cli import main; sys.argv[0] = 'tailgate'; sys.exit(main())"
        command = [sys.executable, "-c", launcher]
    listen = f"127.0.0.1:{port}"
    options = ["--listen", listen, "--workers", str(workers), "--log-level", "WARNING"]
    return [*command, "serve", "--config", str(config), *options]


# -- load generators ------------------------------------------------------------------------------


def wrk(
    url: str, body: bytes, connections: int, seconds: float, cpu: int | None, workdir: Path
) -> dict[str, Any]:
    """One ``wrk`` run (closed loop, ``connections`` connections, one thread); latencies in µs."""
    body_file = workdir / f"body-{abs(hash(body))}.json"
    body_file.write_bytes(body)
    script = workdir / "wrk.lua"
    script.write_text(_WRK_LUA.format(body=body_file))
    args = [
        *_taskset(cpu),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    run = subprocess.run(args, capture_output=True, timeout=seconds + 60, check=True)
    for line in run.stdout.decode().splitlines():
        if line.startswith("@@"):
            result: dict[str, Any] = json.loads(line[2:])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"no result from wrk: {run.stdout.decode()} {run.stderr.decode()}")


def python_load(
    url: str, body: bytes, connections: int, seconds: float, cpu: int | None, workdir: Path
) -> dict[str, Any]:
    """The fallback when ``wrk`` is missing: the same measures from ``loadgen.py load``."""
    result = loadgen("load", url, body, cpu, workdir, concurrency=connections, seconds=seconds)
    lat = result["latency_us"]
    return {
        "requests": result["requests"],
        "duration_us": int(result["seconds"] * 1e6),
        "errors": 0,
        "status_errors": result["errors"],
        "timeouts": 0,
        "p50": lat.get("p50", 0),
        "p90": lat.get("p90", 0),
        "p99": lat.get("p99", 0),
        "rps": result["rps"],
    }


def loadgen(
    mode: str, url: str, body: bytes, cpu: int | None, workdir: Path, **options: Any
) -> dict[str, Any]:
    body_file = workdir / f"body-{abs(hash(body))}.json"
    body_file.write_bytes(body)
    args = [sys.executable, str(BENCH / "loadgen.py"), mode, "--url", url, "--body", str(body_file)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    if cpu is not None:
        args += ["--cpu", str(cpu)]
    run = subprocess.run(args, capture_output=True, timeout=300, check=True)
    result: dict[str, Any] = json.loads(run.stdout.decode().strip().splitlines()[-1])
    return result


# -- one target (direct, tailgate, another gateway) -----------------------------------------------


@dataclass
class Plan:
    seconds: float
    ttft_count: int
    stream_concurrency: int
    stream_interval_ms: int
    stream_rounds: int
    soak_requests: int


def measure(
    name: str,
    base: str,
    pid: int | None,
    plan: Plan,
    layout: Layout,
    workdir: Path,
    load: Callable[..., dict[str, Any]],
    upstream_pid: int | None = None,
) -> dict[str, Any]:
    """Every figure for one target; CPU figures only when ``pid`` (the gateway process) is given."""
    url = base + PATH
    out: dict[str, Any] = {"name": name}
    print(f"[{name}] warming up", file=sys.stderr)
    load(url, PLAIN_BODY, 8, min(2.0, plan.seconds), layout.load, workdir)
    load(url, STREAM_BODY, 8, min(1.0, plan.seconds), layout.load, workdir)
    idle = idle_rate(pid, 1.0) if pid else 0.0
    if pid:
        out["idle_cpu_pct"] = round(idle * 100, 2)
        out["rss_after_warmup_mb"] = memory_kib(pid)["VmRSS"] / 1024
    for kind, body in (("plain", PLAIN_BODY), ("stream", STREAM_BODY)):
        for connections in (1, 32):
            key = f"{kind}_c{connections}"
            print(f"[{name}] {key}: {plan.seconds:g} s", file=sys.stderr)
            meter = CpuMeter(pid, idle) if pid else None
            result = load(url, body, connections, plan.seconds, layout.load, workdir)
            if meter is not None and pid is not None:
                during = cpu_seconds(pid) - meter.cpu0
                busy, _ = meter.stop()
                result["cpu_us_per_request"] = busy * 1e6 / max(result["requests"], 1)
                result["cpu_utilisation_pct"] = 100 * during / (result["duration_us"] / 1e6)
            out[key] = result
    print(f"[{name}] time to first byte, {plan.ttft_count} sequential streams", file=sys.stderr)
    out["ttft"] = loadgen(
        "ttft", url, STREAM_BODY, layout.load, workdir, count=plan.ttft_count, seconds=plan.seconds * 2
    )
    together = [p for p in (pid, upstream_pid) if p]
    with one_core(together, layout.load):
        print(f"[{name}] concurrency 1 and first byte on one CPU", file=sys.stderr)
        out["one_core_plain_c1"] = load(url, PLAIN_BODY, 1, plan.seconds, layout.load, workdir)
        out["one_core_ttft"] = loadgen(
            "ttft", url, STREAM_BODY, layout.load, workdir, count=plan.ttft_count, seconds=plan.seconds * 2
        )
    print(f"[{name}] {plan.stream_concurrency} paced streams x {plan.stream_rounds}", file=sys.stderr)
    meter = CpuMeter(pid, idle) if pid else None
    paced = loadgen(
        "streams",
        url,
        STREAM_BODY,
        layout.load,
        workdir,
        concurrency=plan.stream_concurrency,
        interval_ms=plan.stream_interval_ms,
        rounds=plan.stream_rounds,
    )
    if meter is not None:
        busy, _ = meter.stop()
        # The meter spans the warm-up round as well: divide by every stream served.
        paced["cpu_us_per_stream"] = busy * 1e6 / max(paced.get("served", paced["streams"]), 1)
    out["paced_streams"] = paced
    if pid:
        out["peak_rss_mb"] = memory_kib(pid)["VmHWM"] / 1024
    if pid and plan.soak_requests:
        before = memory_kib(pid)["VmRSS"] / 1024
        print(f"[{name}] soak: {plan.soak_requests} requests", file=sys.stderr)
        served = errors = 0
        for _ in range(120):  # 10-second runs until enough requests were served (at most 20 minutes)
            if served >= plan.soak_requests:
                break
            run = load(url, PLAIN_BODY, 32, 10, layout.load, workdir)
            served += run["requests"]
            errors += run["errors"] + run["status_errors"]
        time.sleep(1)
        after = memory_kib(pid)["VmRSS"] / 1024
        out["soak"] = {
            "requests": served,
            "rss_before_mb": before,
            "rss_after_mb": after,
            "growth_pct": 100 * (after - before) / before,
            "errors": errors,
        }
        out["peak_rss_mb"] = memory_kib(pid)["VmHWM"] / 1024
    return out


# -- report ---------------------------------------------------------------------------------------


def summary(direct: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of ``target``, and what it adds to the direct calls to the mock."""

    def ms(key: str, pct: str) -> float:
        return float(target[key][pct]) / 1000

    ttft, direct_ttft = target["ttft"]["first_byte_us"], direct["ttft"]["first_byte_us"]
    paced = target["paced_streams"]
    s: dict[str, Any] = {
        "cpu_us_plain": target["plain_c32"].get("cpu_us_per_request"),
        "cpu_us_stream": target["stream_c32"].get("cpu_us_per_request"),
        "cpu_us_paced_stream": paced.get("cpu_us_per_stream"),
        "rps_plain": target["plain_c32"]["rps"],
        "rps_stream": target["stream_c32"]["rps"],
        "cpu_pct_at_saturation": target["plain_c32"].get("cpu_utilisation_pct"),
        "p50_ms_c1": ms("plain_c1", "p50"),
        "p99_ms_c1": ms("plain_c1", "p99"),
        "added_p50_ms_c1": ms("plain_c1", "p50") - direct["plain_c1"]["p50"] / 1000,
        "p50_ms_c32": ms("plain_c32", "p50"),
        "p99_ms_c32": ms("plain_c32", "p99"),
        "stream_p50_ms_c1": ms("stream_c1", "p50"),
        "ttft_p50_ms": ttft["p50"] / 1000,
        "ttft_p99_ms": ttft["p99"] / 1000,
        "added_ttft_ms": (ttft["p50"] - direct_ttft["p50"]) / 1000,
        "one_core_p50_ms_c1": ms("one_core_plain_c1", "p50"),
        "one_core_added_p50_ms_c1": ms("one_core_plain_c1", "p50")
        - direct["one_core_plain_c1"]["p50"] / 1000,
        "one_core_added_ttft_ms": (
            target["one_core_ttft"]["first_byte_us"]["p50"] - direct["one_core_ttft"]["first_byte_us"]["p50"]
        )
        / 1000,
        "stream_lag_p50_ms": paced["lag_us"].get("p50", 0) / 1000,
        "stream_lag_p99_ms": paced["lag_us"].get("p99", 0) / 1000,
        "stream_lag_max_ms": paced["lag_us"].get("max", 0) / 1000,
        "stream_chunks_over_5ms": paced["chunks_over_5ms"],
        "stream_errors": paced["errors"] + paced["incomplete"],
        "peak_rss_mb": target.get("peak_rss_mb"),
        "errors": sum(
            target[k]["errors"] + target[k]["status_errors"]
            for k in ("plain_c1", "plain_c32", "stream_c1", "stream_c32")
        ),
    }
    if "soak" in target:
        s["soak_rss_growth_pct"] = target["soak"]["growth_pct"]
    return s


_ROWS = [
    ("gateway CPU µs / request (plain)", "cpu_us_plain", "≤ 250", "{:.0f}"),
    ("gateway CPU µs / stream (20 chunks, burst)", "cpu_us_stream", "≤ 600", "{:.0f}"),
    ("gateway CPU µs / stream (20 chunks, paced)", "cpu_us_paced_stream", "≤ 600", "{:.0f}"),
    ("requests/s, plain, c=32", "rps_plain", "≥ 4000", "{:.0f}"),
    ("streams/s, burst, c=32", "rps_stream", "", "{:.0f}"),
    ("gateway CPU busy during plain c=32, %", "cpu_pct_at_saturation", "", "{:.0f}"),
    ("latency p50 ms, plain, c=1", "p50_ms_c1", "", "{:.3f}"),
    ("latency p99 ms, plain, c=1", "p99_ms_c1", "", "{:.3f}"),
    ("added p50 ms, plain, c=1, one CPU", "one_core_added_p50_ms_c1", "≤ 0.3", "{:.3f}"),
    ("added p50 ms, plain, c=1, split CPUs", "added_p50_ms_c1", "", "{:.3f}"),
    ("latency p50 ms, plain, c=32", "p50_ms_c32", "", "{:.3f}"),
    ("latency p99 ms, plain, c=32", "p99_ms_c32", "", "{:.3f}"),
    ("latency p50 ms, whole stream, c=1", "stream_p50_ms_c1", "", "{:.3f}"),
    ("time to first byte p50 ms", "ttft_p50_ms", "", "{:.3f}"),
    ("time to first byte p99 ms", "ttft_p99_ms", "", "{:.3f}"),
    ("added time to first byte p50 ms, one CPU", "one_core_added_ttft_ms", "≤ 0.3", "{:.3f}"),
    ("added time to first byte p50 ms, split CPUs", "added_ttft_ms", "", "{:.3f}"),
    ("paced streams: chunk lag p50 ms", "stream_lag_p50_ms", "", "{:.2f}"),
    ("paced streams: chunk lag p99 ms", "stream_lag_p99_ms", "", "{:.2f}"),
    ("paced streams: chunk lag max ms", "stream_lag_max_ms", "", "{:.2f}"),
    ("paced streams: chunks later than 5 ms", "stream_chunks_over_5ms", "0", "{:d}"),
    ("paced streams: failed or short", "stream_errors", "0", "{:d}"),
    ("peak RSS MB (largest worker)", "peak_rss_mb", "≤ 150", "{:.1f}"),
    ("RSS growth over soak, %", "soak_rss_growth_pct", "±10", "{:+.1f}"),
    ("errors (non-2xx, socket)", "errors", "0", "{:d}"),
]


def table(summaries: dict[str, dict[str, Any]], plan: Plan) -> str:
    names = list(summaries)
    rows = [["figure", *names, "target"]]
    for label, key, target, fmt in _ROWS:
        cells = [label]
        for name in names:
            value = summaries[name].get(key)
            cells.append("-" if value is None else fmt.format(value))
        rows.append([*cells, target])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(
        f"\n{plan.seconds:g} s per load run; paced: {plan.stream_concurrency} streams, a chunk every "
        f"{plan.stream_interval_ms} ms, {plan.stream_rounds} rounds; c = concurrent connections"
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=ROOT, check=False
    )
    wrk_version = ""
    if shutil.which("wrk"):
        probe = subprocess.run(["wrk", "-v"], capture_output=True, check=False)
        wrk_version = (probe.stdout or probe.stderr).decode().splitlines()[0]
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit.stdout.decode().strip(),
        "load_generator": wrk_version or "loadgen.py (wrk not installed)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    parser.add_argument("--soak", action="store_true", help="also 100,000 requests, RSS before and after")
    parser.add_argument("--seconds", type=float, help="length of each load run")
    parser.add_argument("--streams", type=int, default=512, help="concurrent paced streams")
    parser.add_argument("--stream-interval-ms", type=int, default=25, help="time between chunks, ms")
    parser.add_argument("--workers", type=int, help="also measure tailgate with this many workers (unpinned)")
    parser.add_argument("--other", help="another gateway's command ({upstream} and {port} are filled in)")
    parser.add_argument("--other-port", type=int, help="the port the other gateway listens on")
    parser.add_argument("--other-name", default="other")
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="also measure nginx as a plain reverse proxy (keep-alive upstream, no buffering): the"
        " floor a proxy on this machine can reach, which makes figures from machines of different"
        " speeds comparable",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="run the gateway with sys.setswitchinterval(MS / 1000) (an experiment: how long a"
        " background thread may hold the GIL before the event loop gets it back)",
    )
    parser.add_argument("--output", default=str(BENCH / "results" / "latest.json"))
    args = parser.parse_args()
    if args.other and not args.other_port:
        parser.error("--other needs --other-port")

    layout = Layout.detect()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    plan = Plan(
        seconds=seconds,
        ttft_count=300 if args.quick else 2000,
        stream_concurrency=args.streams,
        stream_interval_ms=args.stream_interval_ms,
        stream_rounds=1 if args.quick else 3,
        soak_requests=100_000 if args.soak else 0,
    )
    if shutil.which("wrk"):
        load: Callable[..., dict[str, Any]] = wrk
    else:
        print("wrk is not installed (apt-get install wrk): using the Python load generator", file=sys.stderr)
        load = python_load

    results: dict[str, Any] = {"machine": machine(), "layout": layout.__dict__, "plan": plan.__dict__}
    if args.switch_interval:
        results["switch_interval_ms"] = args.switch_interval
    with tempfile.TemporaryDirectory(prefix="tailgate-bench-") as tmp:
        workdir = Path(tmp)
        upstream_cmd = [sys.executable, str(BENCH / "fast_upstream.py"), "--port", "0"]
        with process(upstream_cmd, layout.upstream, stdout=subprocess.PIPE) as mock:
            assert mock.stdout is not None
            port_line = mock.stdout.readline().decode().strip()
            upstream_port = int(port_line.partition("=")[2])
            upstream = f"http://127.0.0.1:{upstream_port}"
            results["direct"] = measure(
                "direct", upstream, None, plan, layout, workdir, load, upstream_pid=mock.pid
            )

            config = workdir / "tailgate.json"
            config.write_text(tailgate_config(upstream_port, workdir))
            port = _free_port()
            env = {**os.environ, "XDG_DATA_HOME": str(workdir / "data")}
            gateway_cmd = tailgate_command(config, port, args.switch_interval)
            with process(gateway_cmd, layout.gateway, env=env, log=workdir / "tailgate.log") as gw:
                _wait_port(port, gw)
                _check(f"http://127.0.0.1:{port}")
                results["tailgate"] = measure(
                    "tailgate",
                    f"http://127.0.0.1:{port}",
                    gw.pid,
                    plan,
                    layout,
                    workdir,
                    load,
                    upstream_pid=mock.pid,
                )
                results["tailgate"]["records"] = _records(workdir / "tailgate.db")
            if args.workers:
                name = f"tailgate x{args.workers}"
                multi = workdir / "multi"
                multi.mkdir()
                config = multi / "tailgate.json"
                config.write_text(tailgate_config(upstream_port, multi))
                port = _free_port()
                env = {**os.environ, "XDG_DATA_HOME": str(multi / "data")}
                gateway_cmd = tailgate_command(config, port, args.switch_interval, args.workers)
                with process(gateway_cmd, None, env=env, log=multi / "tailgate.log") as gw:
                    _wait_port(port, gw)
                    _check(f"http://127.0.0.1:{port}")
                    multi_plan = Plan(**{**plan.__dict__, "soak_requests": 0})
                    results[name] = measure(
                        name, f"http://127.0.0.1:{port}", gw.pid, multi_plan, layout, workdir, load
                    )
            others: list[tuple[str, str, int]] = []
            if args.nginx:
                nginx_port = _free_port()
                nginx_conf = workdir / "nginx.conf"
                nginx_conf.write_text(nginx_config(upstream_port, nginx_port, workdir))
                others.append(("nginx", f"{shutil.which('nginx') or 'nginx'} -c {nginx_conf}", nginx_port))
            if args.other:
                command = args.other.format(upstream=upstream, port=args.other_port)
                others.append((args.other_name, command, args.other_port))
            for other_name, command, other_port in others:
                log = workdir / f"{other_name}.log"
                with process(shlex.split(command), layout.gateway, log=log) as other:
                    _wait_port(other_port, other)
                    other_plan = Plan(**{**plan.__dict__, "soak_requests": 0})
                    results[other_name] = measure(
                        other_name,
                        f"http://127.0.0.1:{other_port}",
                        other.pid,
                        other_plan,
                        layout,
                        workdir,
                        load,
                        upstream_pid=mock.pid,
                    )

    direct = results["direct"]
    candidates = ("direct", "tailgate", f"tailgate x{args.workers}", "nginx", args.other_name)
    names = [n for n in candidates if n in results]
    results["summary"] = {n: summary(direct, results[n]) for n in names}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results["summary"], plan))
    print(f"\nmachine: {results['machine']}\nlayout: {layout}\nwritten to {output}")
    return 0


def _check(base: str) -> None:
    """Refuse to measure a gateway that does not answer correctly."""
    request = urllib.request.Request(
        base + PATH, data=PLAIN_BODY, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    assert body["choices"][0]["message"]["content"], body


def _records(db: Path) -> int:
    """How many requests the gateway recorded (every request must be)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        count: int = conn.execute("SELECT count(*) FROM records").fetchone()[0]
        return count


if __name__ == "__main__":
    raise SystemExit(main())
