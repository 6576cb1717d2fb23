"""``cohere evaluate <experiment>``: the paper's experiments on your cohort; ``cohere prioritize``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CohereError
from .common import check_choice, check_modalities, check_paths, read_cohort, write_tables

COHORT = typer.Option(..., help="Cohort folder (training split for the models; val split = test patients).")
MODELS = typer.Option(..., help="Models folder with encoders/ and experts/ (6 experts + multi models).")
OUT = typer.Option(..., help="Report folder: report.md, CSV/JSON, PNG figures.")
TEST = typer.Option(None, help="Report on the complete patients of this cohort instead of the val split.")
MODS = typer.Option("cna,rnaseq,rppa", help="Modalities, comma-separated.")
SEED = typer.Option(0, help="Random seed.")


def _count(default: int, help: str):
    """A count option (runs, draws, trees...): at least 1."""
    return typer.Option(default, min=1, help=help)


def _data(out: Path, cohort: Path, models: Path, test_cohort: Optional[Path], modalities: str, seed: int,
          max_test=None):
    """Check every path before any work, then load the evaluation data."""
    check_paths(cohort=cohort, inputs={"--models": models, "--test-cohort": test_cohort}, folders={"--out": out})
    mods = [m.strip() for m in modalities.split(",") if m.strip()]
    check_modalities(modalities=mods)
    from ..evaluation.experiments import EvalData

    if not (models / "encoders").is_dir():
        raise CohereError(f"no encoders in {models / 'encoders'}; train them with 'cohere encoders train' "
                          "or run scripts/reproduce_paper.py")
    return EvalData.load(cohort, models, mods, test_cohort=test_cohort, max_test=max_test, seed=seed)


def _run(out: Path, data, plan, only: str) -> None:
    from ..evaluation.pipeline import EXPERIMENTS, run_all

    plan.skip = tuple(e for e in EXPERIMENTS if e != only)
    run_all(data, out, plan, {"experiment": only}, log=lambda s: typer.echo(s, err=True))
    typer.echo((out / "report.md").read_text())


def reconstruction(cohort: Path = COHORT, models: Path = MODELS, out: Path = OUT, test_cohort: Optional[Path] = TEST,
                   modalities: str = MODS, draws: int = _count(50, "Draws per patient (K)."),
                   iterative: bool = typer.Option(True, help="Include the iterative (MICE) baselines."),
                   seed: int = SEED):
    """R^2 (single draw, mean of 10 and of K draws), output variance, energy score, CRPS and
    interval coverage of every target x conditioning set x {expert, multi, coherent} beside the
    point and distributional baselines (gauss, resboot, MICE draws)."""
    from ..evaluation.pipeline import Plan

    _run(out, _data(out, cohort, models, test_cohort, modalities, seed),
         Plan(recon_draws=draws, iterative=iterative, seed=seed), "reconstruction")


def manifold(cohort: Path = COHORT, models: Path = MODELS, out: Path = OUT, test_cohort: Optional[Path] = TEST,
             modalities: str = MODS, reducer: str = typer.Option("auto", help="umap, pca, or auto (umap if installed)."),
             seed: int = SEED):
    """Real vs multi vs coherent patients (all modalities concatenated), one map fitted on real."""
    from ..evaluation.pipeline import Plan

    check_choice("--reducer", reducer, ("umap", "pca", "auto"))
    _run(out, _data(out, cohort, models, test_cohort, modalities, seed), Plan(draws=2, reducer=reducer, seed=seed),
         "manifold")


def privacy(cohort: Path = COHORT, models: Path = MODELS, out: Path = OUT, test_cohort: Optional[Path] = TEST,
            modalities: str = MODS, runs: int = _count(10, "Generation runs."),
            reference: int = _count(2000, "Training patients per modality used as the reference."),
            seed: int = SEED):
    """Unconditional generation vs the training set: precision/recall F1, energy distance, DCR."""
    from ..evaluation.pipeline import Plan

    _run(out, _data(out, cohort, models, test_cohort, modalities, seed),
         Plan(privacy_runs=runs, privacy_reference=reference, seed=seed), "privacy")


def signal(cohort: Path = COHORT, models: Path = MODELS, out: Path = OUT, test_cohort: Optional[Path] = TEST,
           modalities: str = MODS, runs: int = _count(10, "Generation runs."),
           trees: int = _count(500, "Trees per random forest."), seed: int = SEED):
    """Cancer type and stage classifiers trained on real latents, tested on real vs generated."""
    from ..evaluation.pipeline import Plan

    _run(out, _data(out, cohort, models, test_cohort, modalities, seed),
         Plan(draws=runs, signal_trees=trees, seed=seed), "signal")


def _forests(trees: int, rsf_trees: int, seed: int):
    from ..evaluation.experiments import ForestSettings

    return ForestSettings(rf_trees=trees, rsf_trees=rsf_trees, seed=seed)


def downstream(cohort: Path = COHORT, models: Path = MODELS, out: Path = OUT, test_cohort: Optional[Path] = TEST,
               modalities: str = MODS, runs: int = _count(10, "Generation runs (single-draw completions)."),
               draws: int = _count(50, "Draws per generated cell (K), pooled by multiple imputation and by their "
                                   "mean (cohere complete's default); raised to --runs if smaller."),
               trees: int = _count(500, "Trees of the stage classifier."),
               rsf_trees: int = _count(100, "Trees of the random survival forest."),
               resamples: int = _count(2000, "Bootstrap resamples of the patients for the intervals against KNN."),
               seed: int = SEED):
    """Stage F1 and survival C-index with modalities removed, generated or imputed (Table 2)."""
    from ..evaluation.pipeline import Plan

    _run(out, _data(out, cohort, models, test_cohort, modalities, seed),
         Plan(draws=runs, completion_draws=draws, resamples=resamples,
              forests=_forests(trees, rsf_trees, seed), seed=seed), "downstream")


def counterfactual(cohort: Path = COHORT, models: Path = MODELS, out: Path = OUT, test_cohort: Optional[Path] = TEST,
                   modalities: str = MODS, modality: str = typer.Option("rnaseq", help="The costly modality."),
                   repeats: int = _count(10, "Repeats with new generation seeds."),
                   orders: int = _count(30, "Random orders averaged."),
                   draws: int = _count(10, "Generated versions per patient (K)."),
                   trees: int = _count(500, "Trees of the stage classifier."),
                   rsf_trees: int = _count(100, "Trees of the random survival forest."), seed: int = SEED):
    """Informed vs random acquisition order of a costly modality: F1 / C-index curves and AUCs."""
    from ..evaluation.pipeline import Plan

    _run(out, _data(out, cohort, models, test_cohort, modalities, seed),
         Plan(draws=draws, cf_modality=modality, cf_repeats=repeats, cf_orders=orders,
              forests=_forests(trees, rsf_trees, seed), seed=seed), "counterfactual")


def prioritize(
    modality: str = typer.Option(..., help="The modality to acquire, e.g. rnaseq."),
    cohort: Path = typer.Option(..., help="Cohort folder; its training split trains the downstream forests."),
    models: Path = typer.Option(..., help="Models folder with encoders/ and experts/."),
    task: str = typer.Option("stage", help="stage (classifier disagreement) or survival (risk change)."),
    modalities: str = MODS,
    draws: int = _count(10, "Generated versions per patient (K)."),
    trees: int = _count(200, "Trees of the stage classifier."),
    rsf_trees: int = _count(50, "Trees of the random survival forest."),
    top: int = typer.Option(20, help="Rows to print (0 = all)."),
    out: Optional[Path] = typer.Option(None, help="Also write the full ranking (.csv, .tsv or .parquet)."),
    seed: int = SEED,
):
    """Rank the patients who lack MODALITY (and have the others) by how much acquiring it could
    change their prediction: the counterfactual score over K generated versions.

    Example: cohere prioritize --modality rnaseq --cohort data/ --models models/
    """
    check_choice("--task", task, ("stage", "survival"))
    check_paths(cohort=cohort, inputs={"--models": models}, tables={"--out": out})
    mods = [m.strip() for m in modalities.split(",") if m.strip()]
    check_modalities(modality=modality, modalities=mods)
    from ..evaluation.experiments import prioritize as rank
    from ..generation import ModelSource

    c = read_cohort(cohort, mods)
    table = rank(c, ModelSource.folder(models), modality, task=task, draws=draws,
                 settings=_forests(trees, rsf_trees, seed), seed=seed, modalities=mods)
    if out:
        write_tables({out: table.set_index("sample")})
    shown = table if top <= 0 else table.head(top)
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"{len(table)} patients lack {modality}; ranked by {task} counterfactual score"
               + (f" -> {out}" if out else ""), err=True)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Reproduce the paper's experiments on a cohort (one report folder each).",
                        no_args_is_help=True)
    for fn in (reconstruction, manifold, privacy, signal, downstream, counterfactual):
        group.command(fn.__name__)(fn)
    app.add_typer(group, name="evaluate")
    app.command("prioritize")(prioritize)
