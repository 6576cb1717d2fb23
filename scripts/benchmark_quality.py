"""Generator quality on the complete val patients: our samplers against the distributional
baselines, with the scores of issue 10, in one run.

For every target and every conditioning set (each single source and both others), K = 50
draws per patient of
  - the default sampler (a single expert, or Coherent Denoising's product of experts),
  - the masked multi-condition model,
  - gauss (ridge + N(0, residual covariance)), resboot (ridge + a bootstrapped training
    residual) and MICE posterior draws, all fitted on the training split only,
and, on ``--paper-patients`` of them with K = 10 draws (DDPM over 1000 steps is slow), the
paper's exact mode (DDPM-1000, softmax(1/loss) weights, the average of noise predictions, no
clamp) beside the default on the same patients and draws, timed one after the other (the
speed ratio). Each mode of a speed row is run again, with the same seed and draws, until
``--min-seconds`` (3) have passed: one run of paper mode, a dozen of the default, whose single
run of a fraction of a second moved by +-20% from one run to the next on a shared 2-core
machine; samples/s is that of the median run, and ``samples_per_s_range`` its slowest and
fastest. Scores (cohere.evaluation.experiments.score_draws): R^2 of the mean of 10 and of all
draws, single-draw R^2, energy score, CRPS, 50% / 90% coverage beside the calibrated value,
output variance and samples per second (of the K = 50 rows: the whole generation call, models
loaded; of the paper-mode rows and the default beside them: the reverse loop only).
Ridge's R^2 is the point-estimate line of goal (b).

    python scripts/benchmark_quality.py --models reports/tcga-pancan/models --out bench.json
    python scripts/benchmark_quality.py --models M --compare before.json   # side by side
    python scripts/benchmark_quality.py --models M --report reports/tcga-pancan  # reuse its K=50 rows

``--compare`` takes an earlier run's JSON (rows keyed by ``name``) and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DEFAULT_COHORT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga-pancan"
MODALITIES = ["cna", "rnaseq", "rppa"]
COLUMNS = ["r2_of_mean", "r2_of_mean10", "r2", "energy_score", "crps", "cov50", "cov90", "var_pct", "samples_per_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--cohort", default=str(DEFAULT_COHORT))
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--paper-patients", type=int, default=100, help="patients for the paper-mode rows (0: skip)")
    ap.add_argument("--paper-draws", type=int, default=10)
    ap.add_argument("--speed-only", action="store_true", help="only the paper-mode rows and the default beside them")
    ap.add_argument("--min-seconds", type=float, default=3.0,
                    help="time each mode of the speed rows over repeated runs until this many seconds have passed "
                         "(at least one run, at most 50); samples/s is that of the median run")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--compare", default=None, help="an earlier run's JSON to print beside this one")
    ap.add_argument("--report", default=None, help="take the K-draw rows from this report folder's reconstruction.csv "
                    "(written by scripts/reproduce_paper.py with the same models) instead of recomputing them")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    from cohere.cohort import Cohort
    from cohere.evaluation import experiments as E
    from cohere.generation import PAPER_MODE, prepare_generation

    cohort = Cohort.read(args.cohort, MODALITIES)
    data = E.EvalData.load(cohort, args.models, MODALITIES, seed=args.seed)
    n = len(data.test_ids)
    rows = []
    if not args.speed_only:
        recon = (pd.read_csv(Path(args.report) / "reconstruction.csv") if args.report else
                 E.reconstruction(data, draws=args.draws, seed=args.seed, iterative=True))
        keep = recon.method.isin(["expert", "coherent", "multi", "ridge", *E.STOCHASTIC_BASELINES])
        recon = recon[keep].copy()
        recon["samples_per_s"] = n * recon["draws"] / recon["seconds"].clip(lower=1e-9)
        recon.loc[recon.method == "ridge", "samples_per_s"] = np.nan
        rows = recon.to_dict("records")
    if args.paper_patients:
        rng = np.random.default_rng(args.seed)
        ids = sorted(rng.choice(data.test_ids, min(args.paper_patients, n), replace=False))
        pos = data.test_ids.get_indexer(ids)
        for target in MODALITIES:
            y = data.test[target].to_numpy()[pos]
            others = [m for m in MODALITIES if m != target]
            for have in E.nonempty_subsets(others):
                # paper mode and the default on the same patients and draws, one after the other
                # (models loaded and conditions encoded first, untimed: samples/s count the reverse loop)
                for name, mode in (("paper mode", PAPER_MODE), ("default (paper-mode subset)", {})):
                    job = prepare_generation(data.test_cohort, target, list(have), data.source, patients=list(ids),
                                             **mode)
                    x = np.empty((args.paper_draws, len(ids), job.target_encoder.latent_dim))
                    runs = []  # seconds of each run (same seed, same draws): until min_seconds have passed
                    while not runs or (sum(runs) < args.min_seconds and len(runs) < 50):
                        t0 = time.perf_counter()
                        for first, part, gen in job.chunks(args.paper_draws, args.seed):
                            k = gen.draws.shape[0]
                            x[first:first + k][:, part] = gen.draws.cpu().numpy()
                        runs.append(time.perf_counter() - t0)
                    seconds = float(np.median(runs))
                    rows.append({"target": target, "conditions": E.label(have), "method": name,
                                 **E.score_draws(y, x), "seconds": round(seconds, 3), "runs": len(runs),
                                 "samples_per_s": len(ids) * args.paper_draws / seconds,
                                 "samples_per_s_range": [round(len(ids) * args.paper_draws / s_, 1)
                                                         for s_ in (max(runs), min(runs))], "patients": len(ids)})
    table = pd.DataFrame(rows)
    table["name"] = table.conditions.str.cat(table.target, sep="->") + ":" + table.method
    pd.set_option("display.width", 200)
    print(table.set_index("name")[COLUMNS].round(3).to_string())
    fast = table[table.method == "default (paper-mode subset)"].set_index(["target", "conditions"])["samples_per_s"]
    paper = table[table.method == "paper mode"].set_index(["target", "conditions"])["samples_per_s"]
    if len(paper):
        ratio = (fast / paper).dropna()
        print(f"\ndefault sampler / paper mode samples per second: {ratio.min():.0f}x to {ratio.max():.0f}x "
              f"(median {ratio.median():.0f}x)")
        print(ratio.rename("ratio").round(1).to_string())
    if args.compare:
        before = pd.DataFrame(json.loads(Path(args.compare).read_text())).set_index("name")
        both = table.set_index("name")[COLUMNS].join(before.add_suffix(" before"), how="inner")
        print("\nbeside", args.compare)
        print(both[[c for pair in zip(COLUMNS, [f"{c} before" for c in COLUMNS]) for c in pair
                    if c in both.columns]].round(3).to_string())
    if args.out:
        Path(args.out).write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
