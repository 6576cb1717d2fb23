"""``cohere encoders train`` and ``cohere encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import ids
from ..errors import CohereError
from ..modalities import registry
from .common import (check_choice, check_paths, note_imputation, parse_forms, progress, read_cohort, resolve_form,
                     write_tables)


def encoder_dir(models: Path, modality: str) -> Path:
    return models / "encoders" / ids.modality(modality)


def train(
    cohort: Path = typer.Option(..., help="Cohort folder: one table per modality (+ clinical.csv, split.csv)."),
    models: Path = typer.Option(..., help="Models folder; writes MODELS/encoders/<modality>/."),
    modality: list[str] = typer.Option(None, "--modality", "-m", help="Modality to train (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Train an encoder for every modality of the cohort."),
    input_form: list[str] = typer.Option(None, help="MODALITY=FORM, e.g. cna=absolute (repeatable)."),
    kind: Optional[str] = typer.Option(None, help="autoencoder or pca (default: the modality's)."),
    max_epochs: int = typer.Option(200, min=1, help="Autoencoder epochs at most (early stopping on validation MSE)."),
    latent_dim: Optional[int] = typer.Option(None, min=2, max=1024,
                                             help="Width of the latent (default: the paper's 32). A wider one keeps "
                                                  "more of a modality's features; experts train in its width."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Fit preprocessing + encoder on the training samples and save the artifacts (all of
    them once every one is fitted: a failure writes nothing).

    Example: cohere encoders train --cohort data/ --modality cna --models models/
    """
    if all_ == bool(modality):
        raise CohereError("give either --modality M (repeatable) or --all")
    check_choice("--kind", kind, ("autoencoder", "pca"))
    forms = parse_forms(input_form)
    check_paths(cohort=cohort, folders={"--models": models})
    from ..encoders import make_encoder

    c = read_cohort(cohort, None if all_ else list(modality), forms)
    chosen = {m: resolve_form(c, m) for m in c.modalities}  # every form checked before any fitting
    train_ids, val_ids = c.ids_in("train", seed), c.ids_in("val", seed)
    fitted = []
    for m, form in chosen.items():
        table = c.tables[m]
        tr = table.loc[table.index.intersection(train_ids)]
        va = table.loc[table.index.intersection(val_ids)]
        mod = registry.get(m)
        extra = {"max_epochs": max_epochs} if (kind or mod.encoder) == "autoencoder" else {}
        typer.echo(f"{m}: fitting {kind or mod.encoder} on {len(tr)} training samples ...")
        width = {} if latent_dim is None else {"latent_dim": latent_dim}
        enc = make_encoder(mod, form, kind, seed=seed, **width, **extra)
        with progress(f"{m}: epochs", extra.get("max_epochs")) as update:
            enc.fit(tr, progress=lambda epoch, total: update(epoch))
        metrics = {"train_r2": round(enc.reconstruction_r2(tr), 4)}
        if len(va):
            metrics["val_r2"] = round(enc.reconstruction_r2(va), 4)
        training = {"cohort": str(c.path.name if c.path else ""), "n_train": len(tr), "n_val": len(va),
                    "seed": seed,
                    "description": f"{len(tr)} training samples of cohort '{c.path.name if c.path else ''}'; "
                                   f"validation on {len(va)} held-out samples."}
        if hasattr(enc, "epochs_"):
            training["epochs"] = enc.epochs_
        fitted.append((m, enc, metrics, training))
    for m, enc, metrics, training in fitted:
        digest = enc.save(encoder_dir(models, m), metrics, training)
        typer.echo(f"{m}: saved {encoder_dir(models, m)}  digest {digest[:12]}  "
                   + "  ".join(f"{k}={v}" for k, v in metrics.items()) + f"  {enc.fit_seconds_:.0f}s")


def encode(
    models: Path = typer.Option(..., help="Models folder with encoders/<modality>/."),
    cohort: Path = typer.Option(..., help="Cohort folder to encode."),
    out: Path = typer.Option(..., help="Output table (.parquet, .csv or .tsv)."),
    modality: list[str] = typer.Option(None, "--modality", "-m", help="Only these modalities."),
):
    """Encode every modality that has an encoder into standardised latents.

    Columns are <modality>.z00 ... <modality>.z31; NaN where a sample lacks the modality.
    Example: cohere encode --models models/ --cohort data/ --out latents.parquet
    """
    check_paths(cohort=cohort, tables={"--out": out})
    import pandas as pd

    from ..encoders import load_encoder

    found = sorted(p.name for p in (models / "encoders").glob("*") if (p / "config.json").exists())
    if not found:
        raise CohereError(f"no encoders in {models / 'encoders'}; train them first with "
                          f"'cohere encoders train --all --cohort DIR --models {models}'")
    c = read_cohort(cohort, list(modality) if modality else None)
    use = [m for m in c.modalities if m in found]
    if not use:
        raise CohereError(f"none of the cohort's modalities ({', '.join(c.modalities)}) has an "
                          f"encoder in {models} (found: {', '.join(found)})")
    parts = []
    for m in use:
        enc = load_encoder(encoder_dir(models, m))
        z = enc.encode_cohort(c)
        z.columns = [f"{m}.{col}" for col in z.columns]
        parts.append(z)
        typer.echo(f"{m}: encoded {len(z)} samples with encoder {enc.digest[:12]}", err=True)
        note_imputation(enc.imputation_)
    table = pd.concat(parts, axis=1).reindex(c.samples())
    write_tables({out: table})
    typer.echo(f"wrote {out} ({table.shape[0]} samples x {table.shape[1]} latent columns)")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Train and inspect modality encoders.", no_args_is_help=True)
    group.command("train")(train)
    app.add_typer(group, name="encoders")
    app.command("encode")(encode)
