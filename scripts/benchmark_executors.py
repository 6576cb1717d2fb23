"""Wall time of ``cohere experts train --all`` with the serial executor, ``--executor local`` and
``--executor ray`` in the same run, on the same encoders, and whether they give the same artifacts.

    python scripts/benchmark_executors.py --encoders MODELS [--cohort DIR] [--steps N] [--out F.json]

MODELS is a models folder holding encoders/ (e.g. one made by ``cohere encoders train``).
Each executor trains into a fresh copy of it; the command runs as a user would run it (a new
process each), so Ray's start-up is inside the measured time. Prints one row per model (the
digests) and the wall times with their ratios to the serial run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga-pancan"


def digests(models: Path) -> dict[str, str]:
    """{model id: sha256 of its model.safetensors} of a models folder."""
    from cohere.artifacts import WEIGHTS, read_config
    from cohere.experts import list_models

    return {cfg["id"]: cfg["files"][WEIGHTS] for cfg in map(read_config, list_models(models))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", type=Path, required=True, help="models folder with encoders/")
    ap.add_argument("--cohort", type=Path, default=Path(os.environ.get("COHERE_SHARED_COHORT", SHARED)))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default: the recipe's)")
    ap.add_argument("--executors", default="serial,local,ray", help="comma-separated, in the order run")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args()
    if not (args.encoders / "encoders").is_dir():
        sys.exit(f"{args.encoders}: no encoders/ folder; give a models folder made by 'cohere encoders train'")
    print(f"cohort {args.cohort}; {os.cpu_count()} CPU cores; steps {args.steps or 'recipe default'}", flush=True)
    wall, found = {}, {}
    with tempfile.TemporaryDirectory(prefix="cohere-bench-") as tmp:
        for name in args.executors.split(","):
            models = Path(tmp) / name
            shutil.copytree(args.encoders / "encoders", models / "encoders")
            cmd = [sys.executable, "-m", "cohere", "experts", "train", "--all", "--cohort", str(args.cohort),
                   "--models", str(models), "--executor", name] + (["--steps", str(args.steps)] if args.steps else [])
            print("$ cohere " + " ".join(cmd[3:]), flush=True)
            t0 = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            wall[name] = time.perf_counter() - t0
            print(run.stdout, end="", flush=True)
            if run.returncode:
                sys.exit(f"{name}: exit {run.returncode}\n{run.stderr[-3000:]}")
            found[name] = digests(models)
            print(f"{name}: {wall[name]:.0f} s wall", flush=True)
    names = list(found)
    ids = sorted(set().union(*found.values()))
    print("\n| model | " + " | ".join(f"{n} digest" for n in names) + " | same |")
    print("|---|" + "---|" * len(names) + "---|")
    same = True
    for i in ids:
        d = [found[n].get(i, "-") for n in names]
        same &= len(set(d)) == 1
        print(f"| {i} | " + " | ".join(x[:16] for x in d) + f" | {'yes' if len(set(d)) == 1 else 'NO'} |")
    line = ", ".join(f"{n} {wall[n]:.0f} s" for n in names)
    if "serial" in wall:
        line += "".join(f"; serial / {n} = {wall['serial'] / wall[n]:.2f}" for n in names if n != "serial")
    print(f"\nwall time of 'experts train --all': {line}; artifacts identical: {'yes' if same else 'NO'}")
    if args.out:
        args.out.write_text(json.dumps({"wall_s": wall, "digests": found, "identical": same, "steps": args.steps,
                                        "cores": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
