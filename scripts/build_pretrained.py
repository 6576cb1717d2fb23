"""Build the pretrained pan-cancer package ``plugins/cohere-tcga-pancan`` from the shared cohort.

Two stages, both deterministic (fixed seeds, one thread per training process, no time stamps
in any artifact), so the same cohort and cohere version give the same files:

1. ``train``: the encoders and the 9 diffusion models with the default recipe, on the
   cohort's ``train`` split, exactly as a user would train them::

       cohere encoders train --cohort C --models WORK -m cna -m rnaseq -m rppa --seed 0
       cohere experts train ID... --cohort C --models WORK --seed 0   (in --jobs processes)

   An artifact already in WORK is kept (a re-run trains only what is missing).
2. ``package``: copy every artifact into the package, add to each model card the validation
   metrics on the cohort's ``val`` patients beside the ridge baseline (and the training data,
   cancer types, input forms, limitations, license, citation), write the package manifest
   (the sha256 of every file) and the registry entries (``registry/index.json``, source =
   the package).

    python scripts/build_pretrained.py --cohort ../shared/data/tcga-pancan --work /tmp/pancan
    python scripts/build_pretrained.py --stage package --cohort ../shared/data/tcga-pancan --work /tmp/pancan
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "cohere-tcga-pancan"
MODALITIES = ("cna", "rnaseq", "rppa")
SEED = 0


def model_ids() -> list[str]:
    ids = [f"{s}->{t}" for t in MODALITIES for s in MODALITIES if s != t]
    return ids + [f"multi->{t}" for t in MODALITIES]


def folder_of(model_id: str) -> str:
    return model_id.replace("->", "_to_")


def _cli(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cohere", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _wait(procs: list[tuple[str, subprocess.Popen]]) -> None:
    for name, p in procs:
        if p.wait() != 0:
            raise SystemExit(f"error: {name} failed (exit {p.returncode}); see its log")


def train(cohort: Path, work: Path, jobs: int) -> None:
    """Stage 1: encoders, then the experts split over ``jobs`` processes."""
    logs = work / "logs"
    t0 = time.perf_counter()
    todo = [m for m in MODALITIES if not (work / "encoders" / m / "model.safetensors").is_file()]
    if todo:
        args = ["encoders", "train", "--cohort", str(cohort), "--models", str(work), "--seed", str(SEED)]
        for m in todo:
            args += ["--modality", m]
        _wait([("encoders train", _cli(*args, log=logs / "encoders.log"))])
    print(f"encoders: {', '.join(todo) or 'all present'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    todo = [i for i in model_ids() if not (work / "experts" / folder_of(i) / "model.safetensors").is_file()]
    shards = [todo[j::jobs] for j in range(jobs)]
    procs = [(f"experts train {' '.join(s)}",
              _cli("experts", "train", *s, "--cohort", str(cohort), "--models", str(work), "--seed", str(SEED),
                   log=logs / f"experts_{j}.log")) for j, s in enumerate(shards) if s]
    _wait(procs)
    print(f"experts: {len(todo)} trained in {jobs} processes ({time.perf_counter() - t0:.0f} s in all)", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="models folder the artifacts are trained into")
    ap.add_argument("--stage", choices=("all", "train", "package"), default="all")
    ap.add_argument("--jobs", type=int, default=2, help="training processes (one thread each)")
    ap.add_argument("--package", type=Path, default=PACKAGE)
    a = ap.parse_args(argv)
    if a.stage in ("all", "train"):
        train(a.cohort, a.work, a.jobs)
    if a.stage in ("all", "package"):
        from _pretrained_package import package   # the package stage (scripts/_pretrained_package.py)

        package(a.cohort, a.work, a.package)


if __name__ == "__main__":
    main()
