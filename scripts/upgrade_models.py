"""Bring models trained by an earlier cohere up to this version, in place, without retraining
their networks.

    python scripts/upgrade_models.py --models MODELS [--cohort DIR] [--seed 0]

Every model in MODELS/experts is rebuilt from the same code as training, on latents rebuilt as
``cohere experts train`` builds them (the encoders in MODELS, the cohort's training split for
``--seed``):
- a model calibrated for another sampler step count than this version's default
  (``cohere.experts.SAMPLER_STEPS``) is recalibrated (:func:`cohere.experts.recalibrate`): its
  spread, held-out report and stacking weight are chosen anew on the held-out rows its recipe
  carves out, which must reproduce its recorded noise-error profile (else it is left as it is
  and the command fails); so is an expert whose spread was calibrated on its network's own
  draws rather than on its stacked draws, as generation delivers them (``sampling.spread_on``),
  and its feature-stacking weight is then chosen anew;
- an expert without mean stacking gets it, and where the cohort's clinical.csv records the
  cancer type an expert whose stacking does not see it gets a stacking that does
  (:class:`cohere.experts.TypedStackMean`); both through :func:`cohere.experts.recalibrate`
  with the stacking refitted, which recalibrates too, and the feature-stacking weight is then
  chosen anew (it is chosen on draws recentred as generation does);
- where the cohort's clinical.csv records the cancer type, an expert whose feature stacking
  does not see it gets one that does (:class:`cohere.experts.TypedRidge`, its weight chosen
  anew);
- a typed stacking or feature stacking from before ``unknown_type`` (a patient of unknown type
  given the types' training frequencies) is refitted to predict such a patient's type from the
  condition;
- an expert without a residual head gets one (:func:`cohere.experts.add_head`): ridge from the
  condition latents to the target's :func:`cohere.training.feature_residuals` on all its
  training rows;
- an expert without feature stacking gets it (:func:`cohere.experts.add_feature_stacking`):
  ridge from the condition latents to the target's features on the training rows of its split,
  and its weight beta chosen on its held-out rows.
A model retrained with the current ``cohere experts train`` gets the same artifact.
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
    from cohere.experts import (COVARIATE, SAMPLER_STEPS, Expert, MultiConditionModel, TypedRidge, add_feature_stacking,
                                add_head, list_models, load_model, recalibrate)
    from cohere.training import make_jobs

    cohort_has_types = False  # set below, once the cohort is read

    def untyped(model) -> bool:  # an expert whose stacking could also see the cancer type
        return isinstance(model, Expert) and model.stack is not None and model.covariate_types is None \
            and cohort_has_types

    def untyped_fstack(model) -> bool:  # an expert whose feature stacking could also see the cancer type
        return isinstance(model, Expert) and model.fstack is not None and not isinstance(model.fstack, TypedRidge) \
            and cohort_has_types

    def frequencies(model) -> bool:  # a typed ridge that gives a patient of unknown type the frequencies
        return isinstance(model, Expert) and cohort_has_types and any(
            getattr(r, "types", None) is not None and r.type_from is None for r in (model.stack, model.fstack))

    def unstacked_spread(model) -> bool:  # an expert with stacking whose spread was calibrated on the raw draws
        return isinstance(model, Expert) and model.stack is not None and model.spread_on != "stacked"

    def stale(model) -> bool:
        lacks = isinstance(model, Expert) and None in (model.stack, model.head, model.fstack)
        return (model.sampler_steps != SAMPLER_STEPS or lacks or untyped(model) or unstacked_spread(model)
                or untyped_fstack(model) or frequencies(model))

    cohort = Cohort.read(args.cohort)
    cohort_has_types = cohort.clinical is not None and COVARIATE in cohort.clinical.columns
    todo = [(folder, model) for folder, model in ((f, load_model(f)) for f in list_models(args.models))
            if isinstance(model, (Expert, MultiConditionModel)) and stale(model)]
    if not todo:
        print(f"{args.models}: every model is up to date ({SAMPLER_STEPS} sampler steps, stacking (with the cancer "
              "type where the cohort records it), residual heads, feature stacking)")
        return 0
    train_ids = cohort.ids_in("train", args.seed)
    needed = sorted({m for _, model in todo for m in (*model.sources, model.target)})
    encoders = {m: load_encoder(args.models / "encoders" / m) for m in needed}
    latents = {m: encoders[m].encode_cohort(cohort, cohort.tables[m].index.intersection(train_ids)) for m in needed}
    # the jobs `cohere experts train` makes: the same rows, in the same order, and the same residuals
    # (their recipe is not used: each model's own is)
    pairs = [("multi" if isinstance(model, MultiConditionModel) else model.source, model.target) for _, model in todo]
    jobs = make_jobs(pairs, latents, encoders, TrainConfig(), tables=cohort.tables, clinical=cohort.clinical)

    failed = 0
    for (folder, model), job in zip(todo, jobs):
        x, sources = job.latents[model.target], {m: job.latents[m] for m in model.sources}
        old = (model.sampler_steps, model.spread, model.stack_alpha)
        try:
            model.check_encoders(encoders)
            typed = (untyped(model) or frequencies(model)) and job.covariates is not None
            if isinstance(model, Expert) and (model.stack is None or typed):
                # the stacking (re)fitted, with the cancer type where the cohort has it; the spread and the
                # held-out report are recomputed on the same rows, as a training with this version does
                fitted = recalibrate(model, x, sources, stacking=True, covariates=job.covariates)
            elif model.sampler_steps != SAMPLER_STEPS or unstacked_spread(model):
                fitted = recalibrate(model, x, sources, covariates=job.covariates)
            else:
                fitted = model
            if isinstance(fitted, Expert) and fitted.head is None:
                fitted = add_head(fitted, sources[model.source], job.residuals)
            if isinstance(fitted, Expert) and (fitted.fstack is None or typed or fitted is not model
                                               or untyped_fstack(fitted)):
                # its weight is chosen on draws recentred as generation does, so after the stacking changed
                fitted = add_feature_stacking(fitted, encoders[model.target], sources[model.source], x, job.residuals,
                                              covariates=job.covariates)
        except CohereError as e:
            print(f"{model.id}: {e}", file=sys.stderr)
            failed += 1
            continue
        fitted.save(folder)
        h = fitted.metrics["held_out"]
        line = (f"{model.id}: {old[0]} -> {fitted.sampler_steps} steps, spread {old[1]:g} -> {fitted.spread:g}; "
                f"held-out cov50 {h['coverage50']} (calibrated {h['coverage50_calibrated']}), "
                f"cov90 {h['coverage90']} ({h['coverage90_calibrated']}), energy {h['energy']}")
        if "stacked_coverage50" in h:
            line += f"; stacked cov50 {h['stacked_coverage50']}, cov90 {h['stacked_coverage90']}"
        if isinstance(fitted, Expert):
            line += (f"; alpha {old[2]:.1f} -> {fitted.stack_alpha:.1f}, stacked r2_mean {h['stacked_r2_mean']} "
                     f"(ridge {h['ridge_r2']}), stacked energy {h['stacked_energy']} "
                     f"(ridge+resboot {h['ridge_resboot_energy']}); residual head over "
                     f"{fitted.head.weight.shape[0]} features")
            f = fitted.metrics.get("held_out_features", {})
            line += (f"; feature stacking beta {fitted.fstack_beta:.1f}: held-out feature r2 {f.get('r2_decoded_mean')} "
                     f"-> {f.get('r2_stacked')} (ridge {f.get('r2_ridge')})")
        print(f"{line}; {fitted.digest[:12]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
