"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path

import typer

from ..cohort import Cohort
from ..errors import CohereError
from ..plugins import get_modality


def parse_forms(values: list[str] | None) -> dict[str, str]:
    """``["cna=absolute", ...]`` -> ``{"cna": "absolute"}``."""
    forms = {}
    for v in values or []:
        if "=" not in v:
            raise CohereError(f"--input-form {v!r}: expected MODALITY=FORM, e.g. cna=absolute")
        m, f = v.split("=", 1)
        forms[m.strip()] = f.strip()
    return forms


def read_cohort(path: Path, modalities: list[str] | None = None, forms: dict | None = None) -> Cohort:
    cohort = Cohort.read(path, modalities=modalities)
    for name in cohort.ignored:
        typer.echo(f"note: ignoring {name} (no installed plugin provides modality "
                   f"{Path(name).stem!r})", err=True)
    for m, f in (forms or {}).items():
        if m not in cohort.tables:
            raise CohereError(f"--input-form names {m!r}, but the cohort has no {m!r} table")
        cohort.input_forms[m] = f
    return cohort


def resolve_form(cohort: Cohort, modality: str) -> str:
    """The input form of a table: --input-form, else cohort.json, else the documented default."""
    mod = get_modality(modality)
    given = cohort.input_forms.get(modality)
    form = mod.resolve_form(given)
    source = "given" if given else "default; set another with --input-form or cohort.json"
    typer.echo(f"{modality}: input form {form!r} ({source})", err=True)
    return form


def note_imputation(record) -> None:
    """Print what encoding a table imputed (an ``Imputation``), if anything, on stderr."""
    note = record.note()
    if note:
        typer.echo(f"note: {note}", err=True)
