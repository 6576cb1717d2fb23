"""Reproduce the paper's evaluation on a cohort and write one report folder.

    python scripts/reproduce_paper.py --out reports/tcga-pancan                 # full run
    python scripts/reproduce_paper.py --quick --out /tmp/report-quick           # smoke test, a few minutes
    python scripts/reproduce_paper.py --models models/ --out reports/x          # reuse trained models
    python scripts/reproduce_paper.py --test-cohort held_out/ --models models/  # report on another cohort

Without ``--models`` it trains, on the cohort's training split, the encoders and the 6 experts
+ 3 multi-condition models among cna / rnaseq / rppa with the library's default recipe (in
``OUT/models``). ``--quick`` subsamples the training patients, uses a small recipe, fewer
draws, runs and trees. Everything is reported on the complete ``val`` patients of the cohort,
or on every complete patient of ``--test-cohort``. Output: OUT/report.md, PNG figures,
CSV/JSON of every number (OUT/meta.json records settings, timings and the git commit).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COHORT = os.environ.get("COHERE_SHARED_COHORT", str(REPO.parent / "shared" / "data" / "tcga-pancan"))
MODALITIES = ["cna", "rnaseq", "rppa"]


def code_version() -> str:
    """The short commit of the repository, marked when tracked files outside reports/ differ from it."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                   if not line[3:].startswith("reports/")]
    except OSError:
        return "unknown"
    if not commit:
        return "unknown"
    return commit + (" + uncommitted changes" if changed else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/tcga-pancan", help="report folder")
    ap.add_argument("--cohort", default=DEFAULT_COHORT, help="training cohort folder")
    ap.add_argument("--models", default=None, help="reuse the encoders and experts of this models folder")
    ap.add_argument("--test-cohort", default=None, help="report on the complete patients of this cohort")
    ap.add_argument("--quick", action="store_true", help="small recipe, subsampled patients, fewer runs (a smoke test)")
    ap.add_argument("--skip", default="", help="experiments to skip, comma-separated "
                    "(reconstruction, privacy, signal, downstream, counterfactual)")
    ap.add_argument("--no-iterative", action="store_true", help="leave out the iterative (MICE) baselines")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from cohere.cohort import Cohort
    from cohere.diffusion.train import TrainConfig
    from cohere.evaluation import experiments as E
    from cohere.evaluation.pipeline import Plan, run_all, train_models

    t0 = time.perf_counter()
    commit = code_version()  # before anything runs: the code that produced the numbers
    out = Path(args.out)
    cohort = Cohort.read(args.cohort, MODALITIES)
    trained = None
    if args.models is None:
        models = out / "models"
        if args.quick:
            # a smoke test of the whole pipeline, not the paper's numbers: a small net, few steps
            config = TrainConfig(steps=800, eval_every=200, hidden=128, layers=3, val_steps=10, ema_decay=0.99,
                                 seed=args.seed)
            enc_kwargs = {"max_epochs": 15}
            max_train = 2000
        else:
            config, enc_kwargs, max_train = TrainConfig(seed=args.seed), {}, None
        trained = train_models(cohort, models, MODALITIES, config, enc_kwargs, max_train, args.seed)
    else:
        models = Path(args.models)
    data = E.EvalData.load(cohort, models, MODALITIES, test_cohort=args.test_cohort,
                           max_test=150 if args.quick else None,
                           max_train=2000 if args.quick else None, seed=args.seed)
    if args.quick:
        plan = Plan(draws=3, recon_draws=10, completion_draws=10, privacy_runs=2, privacy_reference=600, signal_trees=50,
                    forests=E.ForestSettings(rf_trees=50, rsf_trees=10, rsf_min_leaf=20, rsf_max_samples=0.3,
                                             seed=args.seed),
                    cf_repeats=2, cf_orders=10, iterative=True, seed=args.seed)
    else:
        plan = Plan(seed=args.seed, forests=E.ForestSettings(seed=args.seed))
    plan.skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    plan.iterative = plan.iterative and not args.no_iterative
    context = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "commit": commit, "command": " ".join(["python", *sys.argv]),
               "cohort": args.cohort, "test patients": args.test_cohort or "complete patients of the val split",
               "models": str(models) + (" (trained by this run)" if trained else ""),
               "mode": "quick (small recipe, subsampled, fewer runs: not the paper's numbers)" if args.quick
               else "full"}
    if trained:
        context["training seconds"] = trained
    run_all(data, out, plan, context)
    print(f"wrote {out / 'report.md'} in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
