"""``cohere experts train`` and ``cohere experts list``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import CohereError
from .common import check_choice, check_device, check_paths, note_imputation, progress, quality, quality_line, read_cohort
from .encoders import encoder_dir

# the training recipe's defaults (cohere.diffusion.train.TrainConfig), shown in --help without
# importing it (and torch) to build the app; tests/test_cli.py checks that they agree
SHOWN_RECIPE = {"steps": 20000, "batch_size": 128, "lr": 0.006, "hidden": 256, "layers": 4}


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
    executor: str = typer.Option("serial", help="Where models train: serial (here, one after another), local "
                                                "(--workers processes on this machine, longest first) or ray "
                                                "(a local Ray on this machine's cores, or the cluster at --address)."),
    workers: Optional[int] = typer.Option(None, min=1, help="--executor local: worker processes (default: this "
                                                            "machine's cores / --cpus-per-model)."),
    address: Optional[str] = typer.Option(None, help="--executor ray: the Ray cluster to use ('auto', or "
                                                      "ray://HEAD:10001); default: start a local Ray."),
    cpus_per_model: int = typer.Option(1, min=1, help="CPU cores (torch threads) per model, or per search trial. "
                                                      "Part of the recipe: the same value gives the same weights "
                                                      "on every executor."),
    ray_storage: Optional[str] = typer.Option(None, help="--executor ray --search: where Ray Tune keeps trial "
                                                          "checkpoints (default a temporary folder; on a cluster "
                                                          "of several machines, a path every node reaches)."),
    force: bool = typer.Option(False, help="Retrain models whose artifacts are already up to date."),
):
    """Train diffusion experts on the training split's latents and save them as artifacts.

    Each model is written as soon as it is trained. A re-run skips the models already up to
    date (same encoders, recipe and training data) and trains only what is missing.

    Examples:
      cohere experts train rnaseq->cna --cohort data/ --models models/
      cohere experts train --all --cohort data/ --models models/ --executor local
      cohere experts train --all --cohort data/ --models models/ --executor ray
    """
    dev = check_device(device)
    check_paths(cohort=cohort, folders={"--models": models})
    check_choice("--executor", executor, ("serial", "local", "ray"))
    if executor != "ray" and (address or ray_storage):
        raise CohereError(f"{'--address' if address else '--ray-storage'} is for --executor ray; add it or drop the option")
    if executor != "local" and workers is not None:
        raise CohereError("--workers is for --executor local; add it or drop the option")
    from ..diffusion.train import TrainConfig
    from ..encoders import load_encoder
    from ..executors import LocalExecutor, RayExecutor, SerialExecutor
    from ..training import make_jobs, plan, train_jobs

    runner = {"serial": SerialExecutor, "local": lambda: LocalExecutor(workers),
              "ray": lambda: RayExecutor(address, cpus_per_model, storage=ray_storage,
                                         gpus_per_model=1 if dev == "cuda" else 0)}[executor]()
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, hidden=hidden, layers=layers,
                                       select=select).items() if v is not None}
    config = dataclasses.replace(TrainConfig(seed=seed, device=dev, threads=cpus_per_model), **overrides)

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
    pairs = plan(list(ids or []), all_, modalities)

    needed = sorted({m for s, t in pairs for m in ([t] + (modalities if s == "multi" else [s]))})
    train_ids = c.ids_in("train", seed)
    encoders, latents = {}, {}
    for m in needed:
        enc = load_encoder(encoder_dir(models, m))
        encoders[m] = enc
        latents[m] = enc.encode_cohort(c, c.tables[m].index.intersection(train_ids))
        typer.echo(f"{m}: {len(latents[m])} training samples encoded with encoder {enc.digest[:12]}", err=True)
        note_imputation(enc.imputation_)
    jobs = make_jobs(pairs, latents, encoders, config, search, c.path.name if c.path else "", tables=c.tables,
                     clinical=c.clinical)

    t_all = time.perf_counter()
    outcome = train_jobs(jobs, models, runner, force=force, log=typer.echo, progress=progress, describe=quality_line)
    typer.echo(f"trained {len(outcome.saved)} model(s) in {time.perf_counter() - t_all:.0f}s on {runner.name}"
               + (f"; {len(outcome.skipped)} up to date" if outcome.skipped else ""))
    outcome.check(models)


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
                   "better) beside ridge + a bootstrapped residual, cov90 = coverage of the central 90% interval; for "
                   "experts, of the draws with the mean stacking, as generation delivers them (cov90: where recorded) "
                   f"({held.get('coverage90_calibrated')} is calibrated at {held.get('draws')} draws)")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Train and inspect diffusion experts (C->X) and multi-condition models.",
                        no_args_is_help=True)
    group.command("train")(train)
    group.command("list")(list_)
    app.add_typer(group, name="experts")
