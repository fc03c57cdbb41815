"""What `ray[default]` (the dashboard's dependencies, needed for a head's job server and
`ray job submit`) costs every Ray session synth starts: with them installed, the dashboard
agent that Ray starts beside each raylet runs all its modules instead of the minimal set.

Each run is a fresh process: `synth.build.init_ray()` (its own Ray, as `synth build` starts
one), a small Ray Data pipeline (2 000 rows, map_batches, materialize), the memory of every
process of the session at that point, `ray.shutdown()`. "minimal" runs the same code with the
dashboard's optional dependencies hidden from Ray (so it starts the agent with `--minimal`, as
a plain `ray[data]` install does); "default" as installed. Runs alternate, so both modes
share the machine's noise.

    .venv/bin/python bench/ray_session.py [--runs 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
if sys.argv[1] == "minimal":
    sys.modules["aiohttp_cors"] = None  # ray.dashboard.optional_deps fails: Ray starts the minimal agent
started = time.perf_counter()
import psutil, ray, ray.data
from synth.session import init_ray
os.environ["SYNTH_NUM_CPUS"] = "2"
init_ray()
ds = ray.data.range(2000).map_batches(lambda b: {"id": b["id"] * 2}, batch_size=100).materialize()
assert ds.count() == 2000
elapsed = time.perf_counter() - started
me = psutil.Process()
procs = [me, *me.children(recursive=True)]
session = [p for p in psutil.process_iter(["cmdline"]) if "ray" in " ".join(p.info["cmdline"] or [])]
rss = sum(p.memory_info().rss for p in {*procs, *session} if p.is_running())
agent = [p for p in session if "dashboard/agent.py" in " ".join(p.info["cmdline"] or [])]
agent_rss = sum(p.memory_info().rss for p in agent)
ray.shutdown()
print(json.dumps({"seconds": elapsed, "rss_mb": rss / 2**20, "agent_rss_mb": agent_rss / 2**20,
                  "minimal_agent": all("--minimal" in " ".join(p.info["cmdline"]) for p in agent)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"minimal": [], "default": []}
    for _ in range(args.runs):
        for mode in results:
            out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for mode, runs in results.items():
        print(f"{mode:8s} agent --minimal: {runs[0]['minimal_agent']!s:5s}  "
              f"session start + pipeline: median {statistics.median(r['seconds'] for r in runs):.1f} s  "
              f"memory of the session's processes: median {statistics.median(r['rss_mb'] for r in runs):.0f} MB "
              f"(agent {statistics.median(r['agent_rss_mb'] for r in runs):.0f} MB)")
    ratio = statistics.median(r["seconds"] for r in results["default"]) / statistics.median(
        r["seconds"] for r in results["minimal"])
    print(f"default / minimal time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
