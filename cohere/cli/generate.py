"""``cohere generate``: the main job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..cohort import atomic_write_table
from ..errors import CohereError
from ..generation import (DEFAULT_ETA, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_WEIGHTING, ModelSource,
                          generate_missing)
from .common import note_imputation, read_cohort


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def generate(
    target: str = typer.Option(..., help="Modality to generate, e.g. cna."),
    have: str = typer.Option("", help="Conditioning modalities, comma-separated, e.g. rnaseq,rppa."),
    cohort: Path = typer.Option(..., help="Cohort folder with the conditioning tables."),
    out: Path = typer.Option(..., help="Output table: .parquet, .csv or .tsv (written atomically)."),
    models: Optional[Path] = typer.Option(None, help="Models folder (default: the installed store)."),
    method: str = typer.Option("coherent", help="coherent (ensemble of experts) or multi (masked multi-condition model)."),
    draws: int = typer.Option(1, help="Draws per patient (K)."),
    steps: int = typer.Option(DEFAULT_STEPS, help="Reverse steps for ddim / dpmpp2m (ddpm runs all T)."),
    sampler: str = typer.Option(DEFAULT_SAMPLER, help="ddim, dpmpp2m, or ddpm (the paper's T = 1000 steps)."),
    eta: float = typer.Option(DEFAULT_ETA, help="DDIM eta: 0 deterministic, 1 ancestral."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives identical output."),
    patients: Optional[str] = typer.Option(None, help="Only these sample ids (comma-separated)."),
    experts: Optional[str] = typer.Option(None, help="Explicit expert ids, e.g. rnaseq->cna,rppa->cna."),
    weighting: str = typer.Option(DEFAULT_WEIGHTING, help="Consensus weights: inverse, softmax or uniform (of validation loss)."),
    weights: Optional[str] = typer.Option(None, help='Explicit weights as JSON, e.g. \'{"rnaseq->cna": 2, "rppa->cna": 1}\'.'),
    threshold: float = typer.Option(1.0, help="Coherence threshold (weighted mean pairwise cosine distance)."),
    fraction: float = typer.Option(0.10, help="Reject a trajectory incoherent on more than this fraction of steps."),
    attempts: int = typer.Option(10, help="Trajectories per draw at most (rejected ones are regenerated)."),
    decode: bool = typer.Option(False, help="Write decoded features instead of latents."),
    aggregate: bool = typer.Option(False, help="Write one row per patient: the mean of the draws."),
    diagnostics: Optional[Path] = typer.Option(None, help="Also write per-patient diagnostics (acceptance, attempts, variance)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    allow_unconditional: bool = typer.Option(False, help="Allow generation without any condition (privacy risk)."),
    n_samples: Optional[int] = typer.Option(None, help="Rows to generate unconditionally."),
):
    """Generate a missing modality for every patient that has the --have modalities.

    Example: cohere generate --target cna --have rnaseq,rppa --cohort data/ --models models/ --out cna.parquet
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CohereError("--device cuda: no CUDA GPU is available; use --device cpu")
    try:
        explicit = json.loads(weights) if weights else None
    except json.JSONDecodeError as e:
        raise CohereError(f"--weights: not valid JSON ({e}); expected e.g. '{{\"rnaseq->cna\": 1}}'") from None
    have_list = _split(have)
    c = read_cohort(cohort, [*have_list] or None)
    source = ModelSource.folder(models) if models else ModelSource.store()
    result = generate_missing(
        c, target, have_list, source, method=method, patients=_split(patients) or None, draws=draws,
        sampler=sampler, steps=steps, eta=eta, seed=seed, weighting=weighting, weights=explicit,
        experts=_split(experts) or None, threshold=threshold, fraction=fraction, attempts=attempts,
        device=device, allow_unconditional=allow_unconditional, n_unconditional=n_samples)
    for record in result.imputation.values():
        note_imputation(record)
    table = result.to_frame(decode=decode, aggregate=aggregate)
    atomic_write_table(table.set_index("sample"), out)
    diag = result.diagnostics()
    if diagnostics:
        atomic_write_table(diag, diagnostics)
    typer.echo(f"generated {target} for {len(result.samples)} patients x {draws} draws with "
               f"{method} ({', '.join(f'{m} w={w:.2f}' for m, w in zip(result.models, result.weights))}); "
               f"accepted {diag['accepted'].mean():.1%}, mean attempts {diag['attempts'].mean():.2f} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
