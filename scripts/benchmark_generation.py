"""Coherent Denoising on the real cohort: paper mode vs fast modes, in one run.

For each target among the models folder's modalities and each conditioning set of size >= 2
(train on `train`, evaluate on `val` patients), prints R^2 of single draws (mean +- sd over
draws) and of the K-draw mean, the output variance as % of the real variance, the energy
score, acceptance, and samples per second, for

  (a) paper mode: DDPM over all T = 1000 steps, experts evaluated one after another,
  (b) fast candidates: DDIM (trailing) and DPM-Solver++(2M) at few steps,
  (c) the default mode on all validation patients, with the other weightings and rejection
      fractions beside it.

Samples per second count the reverse loop only (models loaded and conditions encoded once
before it, identical for every mode); the end-to-end figure is in the JSON.

and the multi-condition model. Usage:

    python scripts/benchmark_generation.py --models MODELS [--cohort DIR] [--paper-patients 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from cohere.cohort import Cohort
from cohere.evaluation.metrics import energy_score, output_variance_pct, r2_runs
from cohere.generation import (DEFAULT_ETA, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_WEIGHTING, ModelSource,
                               generate_missing)

DEFAULT_COHORT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga-pancan"
FAST = [("ddim", 20, 1.0), ("ddim", 20, 0.0), ("dpmpp2m", 20, 0.0), ("ddim", 10, 1.0), ("dpmpp2m", 10, 0.0),
        ("ddim", 5, 1.0)]


def evaluate(cohort, source, target, have, patients, truth, *, method="coherent", sampler=DEFAULT_SAMPLER,
             steps=DEFAULT_STEPS, eta=DEFAULT_ETA, draws=10, seed=0, weighting=DEFAULT_WEIGHTING,
             fraction=0.10):
    t0 = time.perf_counter()
    res = generate_missing(cohort, target, have, source, method=method, patients=patients, draws=draws,
                           sampler=sampler, steps=steps, eta=eta, seed=seed, weighting=weighting,
                           fraction=fraction)
    seconds = time.perf_counter() - t0
    runs = r2_runs(truth, res.draws)
    return {"target": target, "have": "+".join(have), "method": method, "sampler": sampler,
            "steps": steps if sampler != "ddpm" else 1000, "eta": eta, "weighting": weighting,
            "fraction": fraction, "n": len(patients), "draws": draws,
            "r2_draw": runs.mean, "r2_draw_sd": runs.sd, "r2_mean": runs.of_mean,
            "var_pct": output_variance_pct(truth, res.draws), "energy": energy_score(truth, res.draws),
            "accepted": float(res.generation.accepted.float().mean()),
            "attempts": float(res.generation.attempts.float().mean()),
            "seconds": seconds, "sampling_seconds": res.settings["sampling_seconds"],
            # throughput of the reverse loop itself (models loaded, conditions encoded)
            "samples_per_s": len(patients) * draws / res.settings["sampling_seconds"],
            "end_to_end_samples_per_s": len(patients) * draws / seconds}


def show(row):
    print(f"{row['target']:7} {row['have']:12} {row['method']:8} {row['sampler']:8} {row['steps']:5d} "
          f"{row['eta']:4.1f} {row['weighting']:8} {row['fraction']:5.2f} {row['r2_draw']:7.3f}"
          f"+-{row['r2_draw_sd']:.3f} {row['r2_mean']:7.3f} {row['var_pct']:6.1f} {row['energy']:6.3f} "
          f"{row['accepted']:6.1%} {row['samples_per_s']:9.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="Models folder with encoders/ and experts/.")
    ap.add_argument("--cohort", default=str(DEFAULT_COHORT))
    ap.add_argument("--paper-patients", type=int, default=100,
                    help="Validation patients for the slow paper mode (the fast modes run on the same ones and on all).")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--json", help="Write all rows to this JSON file.")
    args = ap.parse_args()
    torch.manual_seed(0)
    source = ModelSource.folder(args.models)
    mods = sorted(source.encoder_folders)
    cohort = Cohort.read(args.cohort, modalities=mods)
    val = cohort.ids_in("val").intersection(cohort.samples(mods))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(val)} complete val patients; "
          f"{args.draws} draws each")
    print(f"{'target':7} {'have':12} {'method':8} {'sampler':8} {'steps':>5} {'eta':>4} {'weights':8} {'frac':>5} "
          f"{'R2 draw':>13} {'R2 mean':>7} {'var%':>6} {'energy':>6} {'accept':>6} {'samples/s':>9}")
    rows = []
    for target in mods:
        others = [m for m in mods if m != target]
        truth_all = source.encoder(target).encode(cohort.tables[target].loc[val]).to_numpy()
        for k in range(2, len(others) + 1):
            for have in itertools.combinations(others, k):
                have = list(have)
                sub = list(val[: args.paper_patients])
                truth_sub = truth_all[: len(sub)]
                if not args.skip_paper:
                    paper = evaluate(cohort, source, target, have, sub, truth_sub, sampler="ddpm",
                                     draws=args.draws)
                    paper["mode"] = "paper"
                    rows.append(paper)
                    show(paper)
                for sampler, steps, eta in FAST:
                    fast = evaluate(cohort, source, target, have, sub, truth_sub, sampler=sampler,
                                    steps=steps, eta=eta, draws=args.draws)
                    fast["mode"] = "fast-subset"
                    if not args.skip_paper:
                        fast["speedup_vs_paper"] = fast["samples_per_s"] / paper["samples_per_s"]
                        fast["r2_draw_minus_paper"] = fast["r2_draw"] - paper["r2_draw"]
                    rows.append(fast)
                    show(fast)
                for weighting in ("softmax", "uniform"):
                    row = evaluate(cohort, source, target, have, list(val), truth_all, weighting=weighting,
                                   draws=args.draws)
                    row["mode"] = "weighting-all-val"
                    rows.append(row)
                    show(row)
                for fraction in (0.05, 0.25):
                    row = evaluate(cohort, source, target, have, list(val), truth_all, fraction=fraction,
                                   draws=args.draws)
                    row["mode"] = "fraction-all-val"
                    rows.append(row)
                    show(row)
                row = evaluate(cohort, source, target, have, list(val), truth_all, draws=args.draws)
                row["mode"] = "default-all-val"
                rows.append(row)
                show(row)
                row = evaluate(cohort, source, target, have, list(val), truth_all, method="multi",
                               draws=args.draws)
                row["mode"] = "multi-all-val"
                rows.append(row)
                show(row)
    if not args.skip_paper:
        print("\nspeed-up of each fast mode over paper mode (same patients, same run):")
        for r in rows:
            if "speedup_vs_paper" in r:
                print(f"  {r['target']:7} {r['sampler']:8} S={r['steps']:<3d} eta={r['eta']:.0f}: "
                      f"{r['speedup_vs_paper']:6.1f}x  R2 draw {r['r2_draw_minus_paper']:+.3f} vs paper")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
