"""Fit the mean stacking and the residual head of experts trained before cohere fitted them,
in place, without retraining their networks.

    python scripts/fit_heads.py --models MODELS [--cohort DIR] [--seed 0]

Every expert in MODELS/experts that lacks them gets them from the same code as training: its
latents are rebuilt as ``cohere experts train`` builds them (the encoders in MODELS, the
cohort's training split for ``--seed``). Stacking (:func:`cohere.experts.add_stacking`): ridge
is fitted on the training rows its recipe keeps and the weight alpha is chosen on the held-out
rows it carves out; the recomputed held-out scores must equal the recorded ones (else the
expert is left as it is and the command fails). Residual head (:func:`cohere.experts.add_head`):
ridge from the condition latents to the target's :func:`cohere.training.feature_residuals` on
all its training rows. Multi-condition models are not changed. A model retrained with the
current ``cohere experts train`` gets the same artifact.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga-pancan"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--cohort", type=Path, default=Path(os.environ.get("COHERE_SHARED_COHORT", SHARED)))
    ap.add_argument("--seed", type=int, default=0, help="the seed of the training split (experts train --seed)")
    args = ap.parse_args()

    from cohere.cohort import Cohort
    from cohere.diffusion.train import TrainConfig
    from cohere.encoders import load_encoder
    from cohere.errors import CohereError
    from cohere.experts import Expert, add_head, add_stacking, list_models, load_model
    from cohere.training import make_jobs

    todo = [(folder, model) for folder, model in ((f, load_model(f)) for f in list_models(args.models))
            if isinstance(model, Expert) and (model.stack is None or model.head is None)]
    cohort = Cohort.read(args.cohort)
    train_ids = cohort.ids_in("train", args.seed)
    needed = sorted({m for _, model in todo for m in (model.source, model.target)})
    encoders = {m: load_encoder(args.models / "encoders" / m) for m in needed}
    latents = {m: encoders[m].encode_cohort(cohort, cohort.tables[m].index.intersection(train_ids)) for m in needed}
    # the jobs `cohere experts train` makes: the same rows, in the same order, and the same residuals
    # (their recipe is not used: each expert's own is)
    jobs = make_jobs([(model.source, model.target) for _, model in todo], latents, encoders, TrainConfig(),
                     tables=cohort.tables)

    failed = 0
    for (folder, model), job in zip(todo, jobs):
        c, x = job.latents[model.source], job.latents[model.target]
        try:
            model.check_encoders(encoders)
            fitted = model if model.stack is not None else add_stacking(model, c, x)
            fitted = fitted if fitted.head is not None else add_head(fitted, c, job.residuals)
        except CohereError as e:
            print(f"{model.id}: {e}", file=sys.stderr)
            failed += 1
            continue
        fitted.save(folder)
        h = fitted.metrics["held_out"]
        print(f"{model.id}: alpha {fitted.stack_alpha:.1f}; held-out r2_mean {h['r2_mean']} -> {h['stacked_r2_mean']} "
              f"(ridge {h['ridge_r2']}), energy {h['energy']} -> {h['stacked_energy']} "
              f"(ridge+resboot {h['ridge_resboot_energy']}); residual head over {fitted.head.weight.shape[0]} features; "
              f"{fitted.digest[:12]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
