"""Complete a cohort: generate every modality each patient lacks from all the modalities it has.

Patients are grouped by presence pattern. For each target modality and each pattern of the
patients who lack it, the target is generated from every modality of the pattern that a
model can condition on (Coherent Denoising: the experts ``m->target`` that are available;
``method="multi"``: the masked multi-condition model), K draws per patient, with
:func:`cohere.generation.generate_missing`. A patient with nothing to condition on is left
empty and reported.

    done = complete(cohort, ModelSource.installed(), draws=50, keep_draws=5)
    done.cohort          # the real tables with the generated rows filled in (mean of the K draws)
    done.provenance      # one row per generated (patient, modality) cell: from what, with which models
    done.sd["cna"]       # per generated patient, the SD of each decoded feature across the draws
    done.copies          # keep_draws completed cohorts (multiple imputation)
    write_completion(done, "completed/")          # a folder, or "completed.h5mu"

Tables keep their columns. A generated row holds the target encoder's features (under the
table's spelling where a column matched one by name); columns the encoder does not model stay
empty in generated rows. Generated values are on the encoder's modelled scale; real rows are
written as given, except a table whose form was converted for the encoder (e.g. log2 counts
to within-cancer-type z-scores) or whose form's modelled scale differs from it (``absolute``
copy numbers are modelled as log2 ratios), which is written on the modelled scale throughout
(``Modality.modelled_form`` names it, and the written cohort.json declares it).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import read_config
from .atomic import writing
from .cohort import Cohort
from .errors import CohereError
from .generation import ModelSource, generate_missing
from .modalities.base import DEFAULT_MIN_COVERAGE

METHODS = ("coherent", "multi")


@dataclass
class Completion:
    """What :func:`complete` returns (see the module docstring)."""

    cohort: Cohort
    provenance: pd.DataFrame                       # one row per generated (sample, modality)
    sd: dict[str, pd.DataFrame]                    # per modality: generated samples x features
    copies: list[Cohort] = field(default_factory=list)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)   # per (target, pattern)
    empty: list[str] = field(default_factory=list)                # patients with nothing to condition on
    coverage: dict[str, dict] = field(default_factory=dict)       # per condition modality: what encoding imputed
    refused: dict[str, str] = field(default_factory=dict)         # condition modalities not used, and why
    latents: dict = field(default_factory=dict, repr=False)       # (target, pattern) -> (ids, (K, n, d) draws)


def _label(mods) -> str:
    return "+".join(mods)


def _seed(seed: int, target: str, have: list[str]) -> int:
    """The seed of one (target, pattern) group: fixed by the seed and the group, not by order."""
    return int(np.random.SeedSequence([seed, zlib.crc32(f"{target}<-{_label(have)}".encode())]).generate_state(1)[0])


def _conditions(source: ModelSource, target: str, method: str) -> set[str]:
    """The modalities a model of ``source`` can condition ``target`` on."""
    if method == "coherent":
        return {i.split("->")[0] for i in source.model_folders
                if i.endswith(f"->{target}") and not i.startswith("multi->")}
    multi = source.model_folders.get(f"multi->{target}")
    return set(read_config(multi)["sources"]) if multi is not None else set()


def complete(cohort: Cohort, source: ModelSource, method: str = "coherent", targets: list[str] | None = None,
             draws: int = 50, keep_draws: int = 0, seed: int = 0, min_coverage: float = DEFAULT_MIN_COVERAGE,
             progress=None, **options) -> Completion:
    """Generate, for every patient, each of ``targets`` (default: the cohort's modalities)
    that it lacks, from all the modalities it has; see the module docstring.

    ``draws`` draws per generated cell (their mean fills the table, their SD is the
    uncertainty); ``keep_draws`` <= ``draws`` completed copies are kept as well.
    ``min_coverage``: a condition table covering less of its encoder's features is not used
    (recorded in ``refused``). ``progress(done, total, message)`` after every group.
    ``options`` go to :func:`cohere.generation.generate_missing` (sampler settings).
    """
    if method not in METHODS:
        raise CohereError(f"unknown method {method!r}; expected coherent or multi")
    for name, v, low in (("draws", draws, 1), ("keep_draws", keep_draws, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise CohereError(f"{name} must be an int >= {low}, got {v!r}")
    if keep_draws > draws:
        raise CohereError(f"keep_draws ({keep_draws}) cannot exceed draws ({draws})")
    if targets:
        targets = list(dict.fromkeys(targets))
        for m in targets:
            if m not in source.encoder_folders:
                raise CohereError(f"no {m!r} encoder in {source.name}; install or train one, or leave {m} out of "
                                  "the targets")
    else:       # the cohort's modalities that can be generated (the others are reported in ``refused``)
        targets = [m for m in cohort.modalities if m in source.encoder_folders]
    encoders = {m: source.encoder(m) for m in sorted(set(targets) | set(cohort.modalities))
                if m in source.encoder_folders}

    # which condition tables can be encoded (coverage), once, before any generation
    coverage, refused, usable = {}, {}, []
    for m in cohort.modalities:
        if m not in encoders:
            refused[m] = f"no {m!r} encoder in {source.name}"
            continue
        try:
            encoders[m].encode_cohort(cohort, min_coverage=min_coverage)
        except CohereError as e:
            refused[m] = str(e)
            continue
        coverage[m] = encoders[m].imputation_.to_dict()
        usable.append(m)

    patients = cohort.samples()
    if cohort.clinical is not None:
        patients = patients.union(cohort.clinical.index).rename("sample")
    presence = pd.DataFrame({m: patients.isin(cohort.tables[m].index) for m in cohort.modalities}, index=patients)
    has_any = presence[usable].any(axis=1) if usable else pd.Series(False, index=patients)
    empty = [str(p) for p in patients[~has_any.to_numpy()]]

    groups = []                       # (target, have, ids)
    summary = []
    for t in targets:
        lacking = patients if t not in presence else patients[~presence[t].to_numpy()]
        can = _conditions(source, t, method) & set(usable) - {t}
        pattern = presence.loc[lacking, sorted(can)] if can else pd.DataFrame(index=lacking)
        keys = pattern.apply(lambda r: tuple(c for c in pattern.columns if r[c]), axis=1) if can else \
            pd.Series([()] * len(lacking), index=lacking, dtype=object)
        for have, ids in keys.groupby(keys, sort=True).groups.items():
            ids = pd.Index(sorted(ids), name="sample")
            have = list(have)
            if have:
                groups.append((t, have, ids))
                summary.append({"target": t, "from": _label(have), "patients": len(ids), "generated": len(ids),
                                "note": ""})
            else:
                owned = presence.loc[ids, usable].any(axis=1) if usable else pd.Series(False, index=ids)
                why = (f"no {method} model to {t} conditions on what they have" if owned.any() else
                       "nothing to condition on")
                summary.append({"target": t, "from": "", "patients": len(ids), "generated": 0, "note": why})

    tables = {t: _base_table(cohort, t, encoders[t]) for t in targets}
    forms = dict(cohort.input_forms)
    for t in targets:
        forms[t] = tables[t][1]
    tables = {t: v[0] for t, v in tables.items()}
    fills: dict[str, list] = {t: [] for t in targets}
    provenance, latents = [], {}
    for i, (t, have, ids) in enumerate(groups):
        res = generate_missing(cohort, t, have, source, method=method, patients=list(ids), draws=draws,
                               seed=_seed(seed, t, have), min_coverage=min_coverage, **options)
        enc = encoders[t]
        K, n, d = res.draws.shape
        values = res.decoded()  # (K, n, F), the residual shift added
        latents[(t, tuple(have))] = (ids, res.draws)
        fills[t].append((ids, values))
        diag = res.diagnostics()
        sd = values.std(axis=0, ddof=1 if K > 1 else 0)
        used = sorted({m for model_id in res.models for m in _sources(model_id, have)})
        for j, p in enumerate(ids):
            provenance.append({"sample": p, "modality": t, "generated_from": _label(used), "available": _label(have),
                               "method": method,
                               "models": ";".join(res.models), "weights": ";".join(f"{w:.3g}" for w in res.weights),
                               "draws": K,
                               "accepted": float(diag["accepted"].iloc[j]),
                               "latent_variance": float(diag["latent_variance"].iloc[j]),
                               "feature_sd": float(sd[j].mean()),
                               "condition_coverage": ";".join(f"{m}={coverage[m]['coverage']:.3f}" for m in have)})
        if progress is not None:
            progress(i + 1, len(groups), f"{t} from {_label(have)}: {len(ids)} patients")

    done_tables, sds, copies = {}, {}, [dict() for _ in range(keep_draws)]
    for t in targets:
        base, enc = tables[t], encoders[t]
        names = _feature_columns(enc, base)
        columns = list(dict.fromkeys([*base.columns, *names]))
        base = base.reindex(columns=columns)
        ids = [i for ids, _ in fills[t] for i in ids]
        if not ids:
            done_tables[t] = base
            for c in copies:
                c[t] = base
            continue
        stack = np.concatenate([v for _, v in fills[t]], axis=1)                      # (K, n, F)
        index = pd.Index(ids, name="sample")

        def rows(x):          # the real rows, then generated rows x (n, F), in sample order
            gen = pd.DataFrame(x, index=index, columns=names).reindex(columns=columns)
            values = np.vstack([base.to_numpy(np.float32), gen.to_numpy(np.float32)])
            return pd.DataFrame(values, index=base.index.append(index).rename("sample"), columns=columns).sort_index()

        done_tables[t] = rows(stack.mean(0))
        sds[t] = pd.DataFrame(stack.std(axis=0, ddof=1 if stack.shape[0] > 1 else 0).astype(np.float32),
                              index=index, columns=names).sort_index()
        for k, c in enumerate(copies):
            c[t] = rows(stack[k])
    for m, table in cohort.tables.items():
        if m not in done_tables:
            done_tables[m] = table
            for c in copies:
                c[m] = table
    split = cohort.split
    out = Cohort(done_tables, cohort.clinical, split, forms)
    prov = pd.DataFrame(provenance, columns=["sample", "modality", "generated_from", "available", "method", "models",
                                             "weights", "draws",
                                             "accepted", "latent_variance", "feature_sd", "condition_coverage"])
    return Completion(out, prov.sort_values(["modality", "sample"], ignore_index=True), sds,
                      [Cohort(c, cohort.clinical, split, forms) for c in copies],
                      pd.DataFrame(summary, columns=["target", "from", "patients", "generated", "note"]),
                      empty, coverage, refused, latents)


def _sources(model_id: str, have: list[str]) -> list[str]:
    """The conditions a model used: its source, or all of ``have`` for a multi model."""
    source = model_id.split("->")[0]
    return list(have) if source == "multi" else [source]


def _base_table(cohort: Cohort, target: str, encoder) -> tuple[pd.DataFrame, str]:
    """The real rows of ``target`` as they are written, and the form they are in."""
    mod = encoder.modality
    trained = encoder.preprocessor_.form
    if target not in cohort.tables:
        return pd.DataFrame(columns=encoder.preprocessor_.features_, dtype=np.float32).rename_axis("sample"), \
            mod.modelled_form(trained)
    table = cohort.tables[target]
    declared = cohort.input_forms.get(target, trained)
    if declared != trained:
        table, _ = encoder._convert(cohort, table, declared, trained)
    if mod.modelled_form(trained) != trained:
        X = mod.transform(table.to_numpy(np.float64), trained)
        table = pd.DataFrame(X, index=table.index, columns=table.columns)
    return table.astype(np.float32), mod.modelled_form(trained)


def _feature_columns(encoder, table: pd.DataFrame) -> list[str]:
    """The encoder's features, each under the table's spelling where a column matched it."""
    back = {f: c for c, f in encoder.preprocessor_.match(table.columns).items()}
    return [back.get(f, f) for f in encoder.preprocessor_.features_]


# ---------------------------------------------------------------- writing


def write_completion(done: Completion, out: str | os.PathLike) -> Path:
    """Write a completed cohort: a folder (tables, clinical.csv, split.csv, cohort.json,
    provenance.csv, uncertainty/<m>.sd.parquet, summary.json, draws/draw_NNN/ cohorts) or
    an ``.h5mu`` file (provenance in each mod's ``obs``, SDs and kept draws as ``layers``,
    the summary as JSON in ``uns["cohere"]["completion"]``).
    Atomic: nothing is left half-written."""
    out = Path(out)
    info = {"summary": done.summary.to_dict(orient="records"), "empty": done.empty,
            "coverage": done.coverage, "refused": done.refused}
    if out.suffix == ".h5mu":
        from .scverse import write_h5mu

        obs, layers = {}, {}
        for m, table in done.cohort.tables.items():
            p = done.provenance[done.provenance["modality"] == m].set_index("sample").reindex(table.index)
            o = pd.DataFrame({"generated": p["generated_from"].notna().to_numpy()}, index=table.index)
            for col in ("generated_from", "models"):
                o[col] = p[col].fillna("").astype(str).to_numpy()
            for col in ("latent_variance", "feature_sd"):
                o[col] = p[col].astype(np.float64).to_numpy()
            obs[m] = o
            ls = {}
            if m in done.sd:
                ls["sd"] = done.sd[m].reindex(index=table.index, columns=table.columns)
            for k, c in enumerate(done.copies):
                ls[f"draw_{k + 1:03d}"] = c.tables[m].reindex(index=table.index, columns=table.columns)
            layers[m] = ls
        # HDF5 attributes hold no lists of records: the summary is one JSON string
        return write_h5mu(done.cohort, out, obs=obs, layers=layers, uns={"completion": _json(info)})
    with writing(out, folder=True) as tmp:
        done.cohort.write(tmp)
        done.provenance.to_csv(tmp / "provenance.csv", index=False)
        if done.sd:
            (tmp / "uncertainty").mkdir()
            for m, sd in done.sd.items():
                sd.to_parquet(tmp / "uncertainty" / f"{m}.sd.parquet")
        for k, c in enumerate(done.copies):
            c.write(tmp / "draws" / f"draw_{k + 1:03d}")
        (tmp / "summary.json").write_text(_json(info, indent=2))
    return out


def _json(x, **kw) -> str:
    """JSON of ``x``; numpy scalars as their Python values."""
    return json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o), **kw)
