"""The spine at production scale: `pipelines/libra-stage1.yaml --dry-run` at full size and at 10%.

The stand-in engine answers instantly, so what this measures is the pipeline's own
cost (Ray Data, the request cache, parquet, shuffles, export, report): what a GPU
build pays on top of its models. Each size runs `synth build` in its own subprocess
(one after the other), into a fresh directory, with the config's generation counts
scaled (harmful/benign calls per subcategory 200/60 at full size, 20/6 at 10%).

Prints, per size: wall time, peak memory of the whole process tree (summed PSS:
driver, raylet, GCS, workers), and per stage rows in, seconds and rows/s.
Goal (issue 14): full size ≤ 600 s and ≤ 4 GiB; 10% ≤ 90 s; no stage below 1,000 rows/s
at full size.

    python bench/scale.py                 # 10% then full size
    python bench/scale.py --sizes 0.1     # 10% only
    python bench/scale.py --json          # one JSON object on stdout as well
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup import PeakMemory  # noqa: E402  (the same process-tree PSS sampler)

CONFIG = ROOT / "pipelines" / "libra-stage1.yaml"


def scaled_config(size: float, directory: Path) -> Path:
    """libra-stage1.yaml with its generation counts scaled; templates and seeds by absolute path."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    gen = raw["generation"]
    for key in ("harmful_calls_per_subcategory", "benign_calls_per_subcategory"):
        gen[key] = max(1, round(gen[key] * size))
    raw["templates"] = str((CONFIG.parent / raw.get("templates", "../templates")).resolve())
    raw["seeds"] = str((CONFIG.parent / raw.get("seeds", "../seeds")).resolve())
    path = directory / f"libra-stage1-{size:g}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def run(size: float, work: Path) -> dict:
    config = scaled_config(size, work)
    out = work / f"build-{size:g}"
    env = {**os.environ, "SYNTH_NUM_CPUS": str(os.cpu_count() or 2)}
    env.pop("SYNTH_FAULT", None)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out), "--dry-run"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = PeakMemory(proc.pid, interval=0.5)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - started
    pss, rss, _ = peak.stop()
    if proc.returncode != 0:
        sys.exit(f"size {size:g}: synth build exited {proc.returncode}\n{stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    stages = []
    for s in manifest["stages"]:
        handled = max(s["rows_in"], s["rows_out"] + sum(s["rejected"].values()) + sum(s["diverted"].values()))
        stages.append({"name": s["name"], "rows_in": s["rows_in"], "rows_out": s["rows_out"],
                       "seconds": s["seconds"], "rows_per_s": round(handled / s["seconds"]) if s["seconds"] else None})
    return {"size": size, "wall_s": round(wall, 1), "peak_pss_gib": round(pss / 2**30, 2),
            "peak_rss_sum_gib": round(rss / 2**30, 2), "corpus_rows": manifest["export"]["corpus_rows"],
            "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="build into this directory and keep it")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="synth-scale-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            r = run(size, work)
            results.append(r)
            print(f"\nsize {size:g}: wall {r['wall_s']:.1f} s, peak PSS {r['peak_pss_gib']:.2f} GiB "
                  f"(RSS sum {r['peak_rss_sum_gib']:.2f}), corpus {r['corpus_rows']:,} rows")
            print(f"  {'stage':<18}{'rows in':>10}{'rows out':>10}{'seconds':>10}{'rows/s':>10}")
            for s in r["stages"]:
                print(f"  {s['name']:<18}{s['rows_in']:>10,}{s['rows_out']:>10,}{s['seconds']:>10.1f}"
                      f"{s['rows_per_s'] or 0:>10,}")
            slowest = min((s for s in r["stages"] if s["rows_per_s"]), key=lambda s: s["rows_per_s"])
            print(f"  slowest stage: {slowest['name']} at {slowest['rows_per_s']:,} rows/s")
            sys.stdout.flush()
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
