"""``cohere generate``: the main job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import CohereError
from .common import (check_choice, check_device, check_modalities, check_paths, note_imputation, progress,
                     read_cohort, write_tables)

# the library's defaults (cohere.generation.DEFAULT_*), shown in --help without importing it
# (and torch) to build the app; tests/test_cli.py checks that they agree
SHOWN_DEFAULTS = {"sampler": "ddim", "steps": 20, "eta": 1.0, "weighting": "inverse"}


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def generate(
    target: str = typer.Option(..., help="Modality to generate, e.g. cna."),
    have: str = typer.Option("", help="Conditioning modalities, comma-separated, e.g. rnaseq,rppa."),
    cohort: Path = typer.Option(..., help="Cohort folder with the conditioning tables."),
    out: Path = typer.Option(..., help="Output table: .parquet, .csv or .tsv (written atomically)."),
    models: Optional[Path] = typer.Option(None, help="Models folder (default: the installed store)."),
    method: str = typer.Option("coherent", help="coherent (ensemble of experts) or multi (masked multi-condition model)."),
    draws: int = typer.Option(1, min=1, help="Draws per patient (K)."),
    steps: Optional[int] = typer.Option(None, min=1, show_default=str(SHOWN_DEFAULTS["steps"]),
                                        help="Reverse steps for ddim / dpmpp2m (ddpm runs all T)."),
    sampler: Optional[str] = typer.Option(None, show_default=SHOWN_DEFAULTS["sampler"],
                                          help="ddim, dpmpp2m, or ddpm (the paper's T = 1000 steps)."),
    eta: Optional[float] = typer.Option(None, min=0.0, show_default=str(SHOWN_DEFAULTS["eta"]),
                                        help="DDIM eta: 0 deterministic, 1 ancestral."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives identical output."),
    patients: Optional[str] = typer.Option(None, help="Only these sample ids (comma-separated)."),
    experts: Optional[str] = typer.Option(None, help="Explicit expert ids, e.g. rnaseq->cna,rppa->cna."),
    weighting: Optional[str] = typer.Option(None, show_default=SHOWN_DEFAULTS["weighting"],
                                            help="Consensus weights: inverse, softmax or uniform (of validation loss)."),
    weights: Optional[str] = typer.Option(None, help='Explicit weights as JSON, e.g. \'{"rnaseq->cna": 2, "rppa->cna": 1}\'.'),
    threshold: float = typer.Option(1.0, min=0.0, help="Coherence threshold (weighted mean pairwise cosine distance)."),
    fraction: float = typer.Option(0.10, min=0.0, max=1.0, help="Reject a trajectory incoherent on more than this fraction of steps."),
    attempts: int = typer.Option(10, min=1, help="Trajectories per draw at most (rejected ones are regenerated)."),
    decode: bool = typer.Option(False, help="Write decoded features instead of latents."),
    aggregate: bool = typer.Option(False, help="Write one row per patient: the mean of the draws."),
    diagnostics: Optional[Path] = typer.Option(None, help="Also write per-patient diagnostics (acceptance, attempts, variance)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    allow_unconditional: bool = typer.Option(False, help="Allow generation without any condition (privacy risk)."),
    n_samples: Optional[int] = typer.Option(None, min=1, help="Rows to generate unconditionally."),
):
    """Generate a missing modality for every patient that has the --have modalities.

    Example: cohere generate --target cna --have rnaseq,rppa --cohort data/ --models models/ --out cna.parquet
    """
    # every option and path is checked before any work starts: nothing is read, run or written
    # first, and what needs no torch is checked before torch is imported (seconds)
    have_list = _split(have)
    check_paths(cohort=cohort, inputs={"--models": models}, tables={"--out": out, "--diagnostics": diagnostics})
    check_modalities(target=target, have=have_list)
    check_choice("--method", method, ("coherent", "multi"))
    try:
        explicit = json.loads(weights) if weights else None
    except json.JSONDecodeError as e:
        explicit = e
    if explicit is not None and not isinstance(explicit, dict):
        raise CohereError(f"--weights {weights!r}: expected a JSON object of expert ids and weights, "
                          "e.g. '{\"rnaseq->cna\": 2, \"rppa->cna\": 1}'")
    from ..generation import WEIGHTINGS, ModelSource, generate_missing
    from ..sampling import METHODS

    check_choice("--sampler", sampler, METHODS)
    check_choice("--weighting", weighting, WEIGHTINGS)
    check_device(device)

    c = read_cohort(cohort, [*have_list] or None)
    source = ModelSource.folder(models) if models else ModelSource.store()
    defaults = {k: v for k, v in dict(sampler=sampler, steps=steps, eta=eta, weighting=weighting).items()
                if v is not None}  # the others: the library's defaults
    with progress(f"generating {target} ({method})"):
        result = generate_missing(
            c, target, have_list, source, method=method, patients=_split(patients) or None, draws=draws,
            seed=seed, weights=explicit, experts=_split(experts) or None, threshold=threshold,
            fraction=fraction, attempts=attempts, device=device, allow_unconditional=allow_unconditional,
            n_unconditional=n_samples, **defaults)
    for record in result.imputation.values():
        note_imputation(record)
    table = result.to_frame(decode=decode, aggregate=aggregate)
    diag = result.diagnostics()
    write_tables({out: table.set_index("sample")} | ({diagnostics: diag} if diagnostics else {}))
    typer.echo(f"generated {target} for {len(result.samples)} patients x {draws} draws with "
               f"{method} ({', '.join(f'{m} w={w:.2f}' for m, w in zip(result.models, result.weights))}); "
               f"accepted {diag['accepted'].mean():.1%}, mean attempts {diag['attempts'].mean():.2f} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
