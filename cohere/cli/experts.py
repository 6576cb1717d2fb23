"""``cohere experts train`` and ``cohere experts list``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import CohereError
from .common import check_device, check_paths, note_imputation, progress, quality, quality_line, read_cohort
from .encoders import encoder_dir

# the training recipe's defaults (cohere.diffusion.train.TrainConfig), shown in --help without
# importing it (and torch) to build the app; tests/test_cli.py checks that they agree
SHOWN_RECIPE = {"steps": 20000, "batch_size": 256, "lr": 0.006, "hidden": 256, "layers": 4}
MIN_PAIRED = 20  # training samples with both modalities that an expert needs at least


def _plan(ids: list[str], all_: bool, modalities: list[str]) -> list[tuple[str, str]]:
    """(source or 'multi', target) pairs to train."""
    if all_ == bool(ids):
        raise CohereError("give model ids (e.g. rnaseq->cna, multi->cna) or --all")
    if all_:
        if len(modalities) < 2:
            raise CohereError(f"--all needs at least two modalities with encoders; found {', '.join(modalities) or 'none'}")
        pairs = [(s, t) for t in modalities for s in modalities if s != t]
        return pairs + [("multi", t) for t in modalities]
    from ..experts import parse_id

    plan = []
    for i in ids:
        s, t = parse_id(i)
        for m in ([t] if s == "multi" else [s, t]):
            if m not in modalities:
                raise CohereError(f"{i}: no {m!r} in the cohort with an encoder (available: "
                                  f"{', '.join(modalities)}); train it with 'cohere encoders train'")
        if s == "multi" and len(modalities) < 2:
            raise CohereError(f"{i}: a multi-condition model needs at least one other modality with an encoder")
        plan.append((s, t))
    return plan


def train(
    ids: list[str] = typer.Argument(None, metavar="[ID]...", help="Model ids: SOURCE->TARGET or multi->TARGET."),
    cohort: Path = typer.Option(..., help="Cohort folder (the same one the encoders were trained on)."),
    models: Path = typer.Option(..., help="Models folder with encoders/<modality>/; writes experts/<source>_to_<target>/."),
    all_: bool = typer.Option(False, "--all", help="Every ordered pair of modalities with encoders + one multi model per target."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(0, help="Random seed (weights, batches, validation rows)."),
    steps: Optional[int] = typer.Option(None, help=f"Optimizer steps per model (default {SHOWN_RECIPE['steps']})."),
    batch_size: Optional[int] = typer.Option(None, help=f"Batch size (default {SHOWN_RECIPE['batch_size']})."),
    lr: Optional[float] = typer.Option(None, help=f"Peak learning rate (default {SHOWN_RECIPE['lr']})."),
    hidden: Optional[int] = typer.Option(None, help=f"Hidden width (default {SHOWN_RECIPE['hidden']})."),
    layers: Optional[int] = typer.Option(None, help=f"Hidden layers (default {SHOWN_RECIPE['layers']})."),
    select: Optional[str] = typer.Option(None, help="Checkpoint criterion: energy (default) or mse (the paper's)."),
    search: int = typer.Option(0, min=0, help="Random search over the paper's grid: N configurations per model (0 = off)."),
):
    """Train diffusion experts on the training split's latents and save them as artifacts.

    Examples:
      cohere experts train rnaseq->cna --cohort data/ --models models/
      cohere experts train --all --cohort data/ --models models/
    """
    dev = check_device(device)
    check_paths(cohort=cohort, folders={"--models": models})
    from ..diffusion.train import TrainConfig
    from ..encoders import load_encoder
    from ..experts import Expert, MultiConditionModel, model_dir

    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, hidden=hidden, layers=layers,
                                       select=select).items() if v is not None}
    config = dataclasses.replace(TrainConfig(seed=seed, device=dev), **overrides)

    found = sorted(p.name for p in (models / "encoders").glob("*") if (p / "config.json").is_file())
    if not found:
        raise CohereError(f"no encoders in {models / 'encoders'}; train them first with "
                          f"'cohere encoders train --all --cohort {cohort} --models {models}'")
    c = read_cohort(cohort)
    modalities = [m for m in c.modalities if m in found]
    missing = [m for m in c.modalities if m not in found]
    if missing:
        typer.echo(f"note: no encoder for {', '.join(missing)} in {models / 'encoders'}; skipping "
                   f"(train with 'cohere encoders train --modality M --cohort {cohort} --models {models}')", err=True)
    plan = _plan(list(ids or []), all_, modalities)

    needed = sorted({m for s, t in plan for m in ([t] + (modalities if s == "multi" else [s]))})
    train_ids = c.ids_in("train", seed)
    encoders, latents = {}, {}
    for m in needed:
        enc = load_encoder(encoder_dir(models, m))
        encoders[m] = enc
        latents[m] = enc.encode_cohort(c, c.tables[m].index.intersection(train_ids))
        typer.echo(f"{m}: {len(latents[m])} training samples encoded with encoder {enc.digest[:12]}", err=True)
        note_imputation(enc.imputation_)
    for s, t in plan:  # every expert's pair checked before any training
        both = latents[t].index.intersection(latents[s].index) if s != "multi" else None
        if both is not None and len(both) < MIN_PAIRED:
            raise CohereError(f"{s}->{t}: only {len(both)} training samples have both {s} and {t}; "
                              f"at least {MIN_PAIRED} are needed")

    name = c.path.name if c.path else ""
    t_all = time.perf_counter()
    trained = []
    for i, (s, t) in enumerate(plan, 1):
        model_id = f"{s}->{t}"
        info = {"cohort": name, "seed": seed}
        with progress(f"[{i}/{len(plan)}] {model_id}", config.steps) as update:
            def report(step, total, hist, update=update):
                update(step)

            if s == "multi":
                sources = [m for m in modalities if m != t]
                target = latents[t]
                src = {m: latents[m].reindex(target.index) for m in sources}
                info["description"] = (f"{len(target)} training samples of cohort '{name}' with {t}; "
                                       f"sources {', '.join(sources)} with their real missingness.")
                model = MultiConditionModel.fit(t, target, src, encoders, config, search=search,
                                                progress=report, training=info)
            else:
                both = latents[s].index.intersection(latents[t].index)
                info["description"] = f"{len(both)} training samples of cohort '{name}' with both {s} and {t}."
                model = Expert.fit(s, t, latents[s].loc[both], latents[t].loc[both], encoders, config,
                                   search=search, progress=report, training=info)
        mt = model.metrics
        typer.echo(f"{model_id}: trained  n_train={model.training['n_train']}  {model.fit_seconds:.0f}s  "
                   f"{quality_line(mt)}".rstrip())
        trained.append(model)
    for model in trained:  # saved once every model is trained: a failure writes nothing
        folder = model_dir(models, model.id)
        typer.echo(f"{model.id}: saved {folder}  digest {model.save(folder)[:12]}")
    typer.echo(f"trained {len(plan)} model(s) in {time.perf_counter() - t_all:.0f}s")


def list_(
    models: Path = typer.Option(..., help="Models folder with experts/."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List the experts and multi-condition models of a models folder with their metrics."""
    import pandas as pd

    from ..experts import list_models, load_model

    rows = []
    for folder in list_models(models):
        m = load_model(folder)
        rows.append({"id": m.id, "kind": m.kind, "folder": str(folder), "n_train": m.training.get("n_train"),
                     "val_loss": m.metrics.get("val_loss"), "val_r2": m.metrics.get("val_r2"),
                     "held_out": m.metrics.get("held_out", {}), "encoders": m.encoders, "digest": m.digest})
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no experts in {models / 'experts'}; train them with 'cohere experts train --all "
                   f"--cohort DIR --models {models}'")
        return
    table = pd.DataFrame([{"id": r["id"], "kind": r["kind"], "n_train": r["n_train"],
                           **quality(r["held_out"])} for r in rows])
    typer.echo(table.to_string(index=False))
    held = next((r["held_out"] for r in rows if r["held_out"]), None)
    if held:
        typer.echo(f"held-out rows of the training split, {held.get('draws')} draws per row with the default "
                   "sampler: r2_mean = R^2 of the draws' mean beside ridge's R^2, energy = energy score (lower is "
                   "better) beside ridge + a bootstrapped residual, cov90 = coverage of the central 90% interval "
                   f"({held.get('coverage90_calibrated')} is calibrated at {held.get('draws')} draws)")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Train and inspect diffusion experts (C->X) and multi-condition models.",
                        no_args_is_help=True)
    group.command("train")(train)
    group.command("list")(list_)
    app.add_typer(group, name="experts")
