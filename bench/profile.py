"""Profile the gateway under load: where its CPU goes per request.

    .venv/bin/python bench/profile.py [--stream] [--seconds 10] [--connections 32] [--native]

Starts the fast mock and ``tailgate serve`` as ``bench/run.py`` does (everything on), drives
them with ``wrk`` and samples the gateway with ``py-spy record`` (``pip install py-spy``). Prints
the functions with the most inclusive and self time, and where the samples fall by area of the
gateway, then writes the collapsed stacks (``bench/results/profile-*.txt``, for flame graph tools).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procstat import cpu_seconds, thread_cpu_seconds  # noqa: E402
from run import (  # noqa: E402
    PATH,
    PLAIN_BODY,
    STREAM_BODY,
    Layout,
    _free_port,
    _taskset,
    _wait_port,
    loadgen,
    process,
    tailgate_command,
    tailgate_config,
    wrk,
)

AREAS = (
    ("quota reservation (thread + SQLite)", ("quotas.py", "reserve")),
    ("recorder: finalize (usage, pricing, capture)", ("metering.py",)),
    ("recorder: store writes", ("store/", "recorder.py")),
    ("identity", ("identity/",)),
    ("grants and routing", ("grants.py", "routing.py")),
    ("proxy pipeline (own code)", ("proxy.py",)),
    ("upstream client", ("http/client.py",)),
    ("HTTP server", ("http/server.py", "messages.py")),
    ("event loop and other", ("",)),
)


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy ``--format raw`` lines (``frame;frame;... count``) as (frames, count)."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def thread_names(stacks: list[tuple[list[str], int]]) -> dict[int, str]:
    """Thread id → name, from the ``thread (tid): name`` frames py-spy puts first."""
    names = {}
    for frames, _ in stacks:
        head = frames[0] if frames else ""
        if head.startswith("thread (") and "): " in head:
            tid, _, name = head[len("thread (") :].partition("): ")
            if tid.isdigit():
                names[int(tid)] = name
    return names


_WRAPPERS = ("threading.py", "runpy", "__main__.py", "cli.py", "runners.py")


def report(stacks: list[tuple[list[str], int]], per_request_us: dict[str, float], top: int = 18) -> str:
    """Samples by area, then for each busy thread its heaviest functions (inclusive and self).

    ``per_request_us`` is each thread's measured CPU per request; a function's share of its
    thread's samples times that figure estimates its µs per request.
    """
    total = sum(c for _, c in stacks) or 1
    areas: collections.Counter[str] = collections.Counter()
    by_thread: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for frames, count in stacks:
        by_thread[frames[0].partition(": ")[2] if frames else "?"].append((frames[1:], count))
        joined = ";".join(frames)
        for area, needles in AREAS:
            if any(n in joined for n in needles):
                areas[area] += count
                break
    lines = [f"{total} samples", "", "samples by area (first match, in this order):"]
    lines += [f"  {100 * areas[a] / total:5.1f}%  {a}" for a, _ in AREAS]
    for thread, thread_stacks in sorted(by_thread.items(), key=lambda item: -sum(c for _, c in item[1])):
        samples = sum(c for _, c in thread_stacks)
        if samples < total / 50:
            continue
        cost = per_request_us.get(thread, 0.0)
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        for frames, count in thread_stacks:
            for frame in set(frames):
                if not any(w in frame for w in _WRAPPERS):
                    inclusive[frame] += count
            if frames:
                own[frames[-1]] += count
        lines += ["", f"{thread}: {100 * samples / total:.1f}% of samples, {cost:.0f} µs CPU/request"]
        lines += ["  inclusive (share of this thread, est. µs/request):"]
        lines += [
            f"    {100 * c / samples:5.1f}%  {cost * c / samples:6.1f}  {f}"
            for f, c in inclusive.most_common(top)
        ]
        lines += ["  self:"]
        lines += [
            f"    {100 * c / samples:5.1f}%  {cost * c / samples:6.1f}  {f}" for f, c in own.most_common(top)
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", action="store_true", help="20-chunk streams instead of plain answers")
    parser.add_argument("--paced", action="store_true", help="512 paced streams (loadgen.py) instead of wrk")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native; pauses)")
    parser.add_argument("--switch-interval", type=float, help="GIL switch interval for the gateway, ms")
    parser.add_argument("--idle", action="store_true", help="include waiting threads (py-spy --idle)")
    parser.add_argument("--gil", action="store_true", help="only samples that hold the GIL (py-spy --gil)")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        parser.error("py-spy is not installed: .venv/bin/pip install py-spy")
    layout = Layout.detect()
    kind = "stream" if args.stream else "plain"
    body = STREAM_BODY if args.stream else PLAIN_BODY
    with tempfile.TemporaryDirectory(prefix="tailgate-profile-") as tmp:
        workdir = Path(tmp)
        upstream_cmd = [sys.executable, str(BENCH / "fast_upstream.py"), "--port", "0"]
        with process(upstream_cmd, layout.upstream, stdout=subprocess.PIPE) as mock:
            assert mock.stdout is not None
            upstream_port = int(mock.stdout.readline().decode().strip().partition("=")[2])
            config = workdir / "tailgate.json"
            config.write_text(tailgate_config(upstream_port, workdir))
            port = _free_port()
            env = {**os.environ, "XDG_DATA_HOME": str(workdir / "data")}
            cmd = tailgate_command(config, port, args.switch_interval)
            with process(cmd, layout.gateway, env=env) as gw:
                _wait_port(port, gw)
                url = f"http://127.0.0.1:{port}{PATH}"
                wrk(url, body, 8, 2, layout.load, workdir)
                raw = workdir / "profile.txt"
                record = [*_taskset(layout.load), spy, "record", "--pid", str(gw.pid), "--format", "raw"]
                record += ["--rate", str(args.rate), "--duration", str(int(args.seconds)), "--threads"]
                record += ["--subprocesses"]  # the recording process too
                record += ["--output", str(raw), *(["--native"] if args.native else ["--nonblocking"])]
                record += ["--gil"] if args.gil else []
                record += ["--idle"] if args.idle else []
                spy_proc = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                cpu0 = cpu_seconds(gw.pid)
                threads0 = thread_cpu_seconds(gw.pid)
                if args.paced:
                    kind = "paced"
                    rounds = max(1, int((args.seconds - 2) / 0.6))
                    paced = loadgen("streams", url, STREAM_BODY, layout.load, workdir, concurrency=512,
                                    interval_ms=25, rounds=rounds)  # fmt: skip
                    served = paced.get("served", paced["streams"])  # the warm-up round included
                    result = {"requests": served, "rps": served / paced["seconds"]}
                else:
                    result = wrk(url, body, args.connections, args.seconds - 2, layout.load, workdir)
                used = cpu_seconds(gw.pid) - cpu0
                threads1 = thread_cpu_seconds(gw.pid)
                spy_proc.wait(args.seconds + 30)
                text = raw.read_text()
    out = BENCH / "results" / f"profile-{kind}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(
        f"{kind}: {result['rps']:.0f} req/s over {result['requests']} requests, "
        f"{used * 1e6 / max(result['requests'], 1):.0f} µs CPU per request (under the profiler)\n"
    )
    stacks = parse_collapsed(text)
    names = thread_names(stacks)
    print("CPU time by thread during the load (/proc/<pid>/task/<tid>/stat):")
    per_request: dict[str, float] = {}
    for tid, seconds in sorted(threads1.items(), key=lambda item: -item[1]):
        spent = seconds - threads0.get(tid, 0.0)
        if spent > 0:
            name = names.get(tid, str(tid))
            per_request[name] = spent * 1e6 / max(result["requests"], 1)
            print(f"  {100 * spent / max(used, 1e-9):5.1f}%  {per_request[name]:6.1f} µs/request  {name}")
    print()
    print(report(stacks, per_request))
    print(f"\ncollapsed stacks written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
