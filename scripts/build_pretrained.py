"""Build the pretrained pan-cancer package ``plugins/cohere-tcga-pancan`` from the shared cohort.

Two stages, both deterministic (fixed seeds, one thread per training process, no time stamps
in any artifact), so the same cohort and cohere version give the same files:

1. ``train``: the encoders and the 9 diffusion models with the default recipe, on the
   cohort's ``train`` split, exactly as a user would train them::

       cohere encoders train --cohort C --models WORK -m cna -m rnaseq -m rppa --seed 0
       cohere experts train ID... --cohort C --models WORK --seed 0 --executor local --workers JOBS

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
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "cohere-tcga-pancan"
DIST = "cohere-tcga-pancan"
MODALITIES = ("cna", "rnaseq", "rppa")
SEED = 0
DRAWS = 50
LICENSE = "cc-by-4.0"


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
    """Stage 1: the encoders, then one ``experts train`` process that trains the models in
    ``jobs`` worker processes, longest first (training lengths differ with early stopping, so
    fixed shards would leave a core idle). Each model's training depends only on its seed and
    the encoders, not on the executor."""
    logs = work / "logs"
    t0 = time.perf_counter()
    todo = [m for m in MODALITIES if not (work / "encoders" / m / "model.safetensors").is_file()]
    if todo:
        args = ["encoders", "train", "--cohort", str(cohort), "--models", str(work), "--seed", str(SEED)]
        for m in todo:
            args += ["--modality", m]
        _wait([("encoders train", _cli(*args, log=logs / "encoders.log"))])
    print(f"encoders: {', '.join(todo) or 'all present'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    queue = [i for i in model_ids() if not (work / "experts" / folder_of(i) / "model.safetensors").is_file()]
    if queue:  # one process: the cohort is read and encoded once; the models train in JOBS workers
        _wait([("experts train", _cli("experts", "train", *queue, "--cohort", str(cohort), "--models", str(work),
                                      "--seed", str(SEED), "--executor", "local", "--workers", str(jobs),
                                      log=logs / "experts.log"))])
    print(f"experts: {len(queue)} trained, {jobs} at a time ({time.perf_counter() - t0:.0f} s in all)", flush=True)


def validation(cohort: Path, work: Path) -> dict:
    """Per model: scores on the complete val patients (K = DRAWS) beside ridge and resboot
    from the same conditions, fitted on train; per encoder: its recorded reconstruction R^2."""
    import torch

    from cohere.evaluation.baselines import ResidualBootstrapSampler, RidgeImputer
    from cohere.evaluation.experiments import EvalData, score_draws
    from cohere.evaluation.metrics import r2

    torch.set_num_threads(1)
    data = EvalData.load(cohort, work, list(MODALITIES))
    out = {}
    for model_id in model_ids():
        source, target = model_id.split("->")
        have = tuple(m for m in MODALITIES if m != target) if source == "multi" else (source,)
        method = "multi" if source == "multi" else "coherent"
        y = data.test[target].to_numpy()
        s = score_draws(y, data.generated(target, have, method, DRAWS, SEED))
        X, Y = data.train_pairs(have, target)
        Xt = data.test_matrix(have)
        resboot = ResidualBootstrapSampler().fit(X, Y).sample(Xt, n_draws=DRAWS, seed=SEED)
        out[model_id] = {"conditions": "+".join(have), "target": target, "draws": DRAWS,
                         "r2_of_mean": round(s["r2_of_mean"], 3), "energy_score": round(s["energy_score"], 3),
                         "cov90": round(s["cov90"], 3), "cov90_calibrated": round(s["cov90_calibrated"], 3),
                         "ridge_r2": round(r2(y, RidgeImputer().fit(X, Y).predict(Xt)), 3),
                         "resboot_energy": round(score_draws(y, resboot)["energy_score"], 3)}
        print(f"{model_id}: val {out[model_id]}", flush=True)
    return out, data


def package(cohort: Path, work: Path, pkg: Path) -> None:
    """Stage 2: the package's artifacts/ (files copied byte for byte, cards completed), its
    artifacts/index.json, and the registry entries (source = the package)."""
    from cohere import __version__
    from cohere.artifacts import CARD, CONFIG, WEIGHTS, read_config, render_card, sha256_file
    from cohere.atomic import writing
    from cohere.hub import package_entry
    from cohere.modalities import registry

    version = _package_version(pkg)
    val, data = validation(cohort, work)
    clinical = data.clinical
    artifacts, entries = [], []
    with writing(pkg / "cohere_tcga_pancan" / "artifacts", folder=True) as tmp:
        for group, art_id in [("encoders", m) for m in MODALITIES] + [("experts", i) for i in model_ids()]:
            src = work / group / (art_id if group == "encoders" else folder_of(art_id))
            config = read_config(src)
            rel = f"{group}/{src.name}"
            dst = tmp / rel
            dst.mkdir(parents=True)
            for name in (CONFIG, WEIGHTS):
                shutil.copyfile(src / name, dst / name)
            mods = [config["modality"]] if config["kind"] == "encoder" else [*config["sources"], config["target"]]
            with_all = data.train[mods[0]].index
            for m in mods[1:]:
                with_all = with_all.intersection(data.train[m].index)
            n_train = int(config.get("n_train") or config.get("training", {}).get("n_train") or len(with_all))
            types = sorted(clinical.loc[with_all, "cancer_type"].dropna().astype(str).unique())
            forms = {m: read_config(work / "encoders" / m)["preprocessing"]["input_form"] for m in mods}
            conversions = {m: [f"`{a}` ({how})" for (a, b), how in registry.get(m).conversions.items()
                               if b == forms[m]] for m in mods}
            score = ({"train_r2": config["metrics"].get("train_r2"), "val_r2": config["metrics"].get("val_r2")}
                     if config["kind"] == "encoder" else val[art_id])
            extra = render_card("pretrained.md.j2", package=DIST, version=version, kind=config["kind"],
                                n_train=n_train, modalities_text=" and ".join(mods), cancer_types=types,
                                forms=forms, conversions=conversions, n_val=len(data.test_ids), val=score)
            (dst / CARD).write_text((src / CARD).read_text().rstrip("\n") + "\n" + extra)
            files = {n: sha256_file(dst / n) for n in (CONFIG, WEIGHTS, CARD)}
            entries.append(package_entry(config, DIST, version, rel, files, LICENSE))
            artifacts.append({"id": art_id, "kind": config["kind"], "path": rel})
        (tmp / "index.json").write_text(json.dumps({"package": DIST, "version": version, "cohere": __version__,
                                                    "artifacts": artifacts}, indent=2) + "\n")
    index_file = ROOT / "registry" / "index.json"
    index = json.loads(index_file.read_text())
    index["entries"] = [e for e in index["entries"] if e.get("package") != DIST] + entries
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    print(f"packaged {len(artifacts)} artifacts into {pkg} and {len(entries)} registry entries into {index_file}")


def _package_version(pkg: Path) -> str:
    import tomllib

    return tomllib.loads((pkg / "pyproject.toml").read_text())["project"]["version"]


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
        package(a.cohort, a.work, a.package)


if __name__ == "__main__":
    main()
