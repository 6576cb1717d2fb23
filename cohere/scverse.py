"""A cohort as one MuData ``.h5mu`` file (scverse): one AnnData ("mod") per modality.

Layout::

    mdata.mod["cna"]        X = samples x features (float32; a sparse X is read as dense),
    mdata.mod["rnaseq"] ... obs_names = sample ids (text, exactly), var_names = feature names;
                            a sample without the modality is absent from that mod's obs
    mdata.obs               clinical columns (cancer_type, os_time, ...) and ``split``;
                            index = every sample of any mod
    mdata.uns["cohere"]     {"input_forms": {"cna": "absolute", ...}, ...}

Example::

    cohort = read_h5mu("tcga.h5mu")               # or Cohort.read("tcga.h5mu")
    write_h5mu(cohort, "out.h5mu", obs={"cna": provenance}, layers={"cna": {"sd": sd}})

The tables are validated as a folder's are (an all-NaN row is a missing sample). A mod that
is no known modality is skipped and listed in ``Cohort.ignored``. Global obs columns named
``mod:column`` are MuData's copies of per-mod columns, not clinical ones; a global obs row
with no clinical value is no clinical row. Per-mod obs columns and layers (provenance,
standard deviations) are written on request and not read into a cohort. Clinical and split
rows of samples that have no table are not written. Without ``mudata``/``anndata``
installed, reading or writing says how to install them.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import writing
from .cohort import Cohort, _check_orientation, check_clinical, check_split, sample_ids, validate_table
from .errors import CohereError
from .modalities import registry


def _packages(doing: str):
    """``(anndata, mudata)``, imported here: they are an optional extra."""
    try:
        import anndata
        import mudata
    except ImportError:
        raise CohereError(f"{doing} .h5mu files needs mudata and anndata: "
                          "pip install 'cohere-denoising[scverse]'") from None
    return anndata, mudata


@contextlib.contextmanager
def _quiet(mudata):
    """MuData's upcoming behaviour (no pulling of mod columns into the global obs), without
    its notices: shared feature names across mods are expected here."""
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="var_names are not unique")
        warnings.filterwarnings("ignore", message="The HDF5 file was not created by muon/mudata")
        yield


# ---------------------------------------------------------------- reading


def read_h5mu(path: str | os.PathLike, modalities: list[str] | None = None,
              known: list[str] | None = None, split: bool = True) -> Cohort:
    """Read a cohort from an ``.h5mu`` file; the arguments are those of :meth:`Cohort.read`."""
    _, mudata = _packages("reading")
    path = Path(path)
    if not path.is_file():
        raise CohereError(f"cohort {str(path)!r} does not exist; expected a folder or an .h5mu file")
    try:
        with _quiet(mudata):
            mdata = mudata.read_h5mu(path)
    except Exception as e:  # h5py, anndata and mudata each raise their own kinds for a bad file
        raise CohereError(f"{path.name}: cannot read the file ({type(e).__name__}: {e}); expected a "
                          "MuData .h5mu file (mudata.write_h5mu)") from None
    if known is None:
        known = registry.names()
    mods = sorted(mdata.mod)
    wanted = [m for m in mods if m in known] if modalities is None else list(modalities)
    for m in wanted:
        if m not in known:
            raise CohereError(f"unknown modality {m!r}; known modalities: {', '.join(known)} "
                              "(install a plugin that provides it, or rename the mod)")
        if m not in mdata.mod:
            raise CohereError(f"no mod for modality {m!r} in {path.name}; its mods: {', '.join(mods) or 'none'}")
    if not wanted:
        raise CohereError(f"no mod of a known modality ({', '.join(known)}) in {path.name}; expected "
                          "mods named after their modality, such as 'cna'")
    names = {m: f"{path.name} mod {m!r}" for m in wanted}
    tables = {m: _table(mdata.mod[m], names[m]) for m in wanted}

    obs = _global_obs(path, mdata)
    obs.index = sample_ids(obs.index, f"{path.name} obs")
    for c in obs.columns:
        obs[c] = _uncategorical(obs[c])
    clinical = obs[[c for c in obs.columns if ":" not in str(c) and c != "split"]]
    clinical = clinical[clinical.notna().any(axis=1)].sort_index()
    clinical = check_clinical(clinical, f"{path.name} obs") if clinical.size else None
    labels = None
    if split and "split" in obs:
        labels = obs["split"].dropna().astype(str).rename("split").sort_index()
        labels = check_split(labels, f"{path.name} obs column 'split'") if len(labels) else None
    _check_orientation(tables, names, {} if clinical is None else {f"{path.name} obs": clinical.index})

    forms = {m: mdata.mod[m].uns["input_form"] for m in wanted if "input_form" in mdata.mod[m].uns}
    meta = mdata.uns.get("cohere", {})
    given = meta.get("input_forms", {}) if isinstance(meta, Mapping) else {}
    if not isinstance(given, Mapping):
        raise CohereError(f"{path.name}: uns['cohere']['input_forms'] is a {type(given).__name__}; "
                          "expected a mapping such as {'cna': 'absolute'}")
    forms.update(given)
    forms = {str(m): str(f) for m, f in forms.items() if m in tables}
    cohort = Cohort(tables, clinical, labels, forms, path)
    cohort.ignored = [f"mod {m!r}" for m in mods if m not in known]
    return cohort


def _global_obs(path: Path, mdata) -> pd.DataFrame:
    """The global obs as stored: ``mdata.obs`` has been through MuData's ``update()``, whose
    ``convert_dtypes`` turns float columns of whole numbers into integers."""
    import h5py

    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    with h5py.File(path, "r") as f:
        return read_elem(f["obs"]) if "obs" in f else mdata.obs.copy()


def _table(adata, name: str) -> pd.DataFrame:
    """A mod's X as a validated float32 table (rows = obs_names, columns = var_names)."""
    x = adata.X
    if x is None:
        raise CohereError(f"{name}: the mod has no X; expected X = samples x features")
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return validate_table(pd.DataFrame(x, index=adata.obs_names, columns=adata.var_names), name)


def _uncategorical(col: pd.Series) -> pd.Series:
    """Text columns come back from HDF5 as categoricals: make them text again, as in a CSV."""
    if isinstance(col.dtype, pd.CategoricalDtype) and pd.api.types.is_string_dtype(col.cat.categories):
        return col.astype(object)
    return col


# ---------------------------------------------------------------- writing


def write_h5mu(cohort: Cohort, path: str | os.PathLike, obs: dict[str, pd.DataFrame] | None = None,
               layers: dict[str, dict[str, pd.DataFrame]] | None = None, uns: dict | None = None) -> Path:
    """Write ``cohort`` to an ``.h5mu`` file atomically (nothing half-written on failure).

    ``obs`` ({modality: DataFrame indexed by that table's samples}) adds per-mod obs columns,
    e.g. ``generated``, ``generated_from``, ``latent_variance``; ``layers`` ({modality:
    {name: DataFrame shaped as the table}}) adds per-mod layers, e.g. ``sd``; ``uns`` (JSON-
    able) is merged into ``mdata.uns["cohere"]`` beside ``input_forms``.
    """
    anndata, mudata = _packages("writing")
    path = Path(path)
    if path.suffix != ".h5mu":
        raise CohereError(f"output {path.name!r}: expected an .h5mu file name")
    for what, given in (("obs", obs), ("layers", layers)):
        for m in given or {}:
            if m not in cohort.tables:
                raise CohereError(f"{what} names modality {m!r}, but the cohort has no {m!r} table; "
                                  f"it has: {', '.join(cohort.tables)}")
    extra = dict(uns or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise CohereError(f"uns: {e}; expected JSON-able values (text, numbers, lists, dicts)") from None
    mods = {}
    for m, table in cohort.tables.items():
        ids = table.index.astype(str).rename(None)
        mod = anndata.AnnData(X=table.to_numpy(np.float32), obs=pd.DataFrame(index=ids),
                              var=pd.DataFrame(index=table.columns.astype(str)))
        if (obs or {}).get(m) is not None:
            mod.obs = _aligned(obs[m], table, f"obs[{m!r}]", columns=False).set_axis(ids)
        for name, frame in ((layers or {}).get(m) or {}).items():
            mod.layers[str(name)] = _aligned(frame, table, f"layers[{m!r}][{name!r}]").to_numpy(np.float32)
        mods[m] = mod
    with _quiet(mudata):
        mdata = mudata.MuData(mods)
        ids = mdata.obs_names
        if cohort.clinical is not None:
            clinical = cohort.clinical
            bad = [c for c in clinical.columns if ":" in str(c) or c == "split"]
            if bad:
                raise CohereError(f"clinical column {bad[0]!r}: 'split' and names with ':' are reserved in "
                                  "an .h5mu file (MuData's mod:column); rename it")
            clinical = clinical.astype({c: "boolean" for c in clinical if pd.api.types.is_bool_dtype(clinical[c])})
            for c, col in clinical.reindex(ids).items():
                mdata.obs[str(c)] = col.values
        if cohort.split is not None:
            mdata.obs["split"] = cohort.split.reindex(ids).values
        forms = {str(m): str(f) for m, f in cohort.input_forms.items() if m in cohort.tables}
        mdata.uns["cohere"] = {**extra, "input_forms": forms}
        with writing(path) as tmp:
            mudata.write_h5mu(tmp, mdata)
    return path


def _aligned(frame: pd.DataFrame, table: pd.DataFrame, name: str, columns: bool = True) -> pd.DataFrame:
    """``frame`` in the table's row order (and column order, with ``columns``), refusing other
    samples (or features) than the table's."""
    frame = frame.set_axis(frame.index.astype(str), axis=0)
    if columns:
        frame = frame.set_axis(frame.columns.astype(str), axis=1)
    same_rows = len(frame) == len(table) and set(frame.index) == set(table.index)
    if not same_rows or (columns and (frame.shape[1] != table.shape[1] or set(frame.columns) != set(table.columns))):
        shape = " and features (columns)" if columns else ""
        raise CohereError(f"{name}: expected a DataFrame with the {len(table)} samples (index){shape} of "
                          f"the table, got {frame.shape[0]} x {frame.shape[1]} that differ")
    frame = frame.reindex(index=table.index, columns=table.columns if columns else None)
    return frame.set_axis(frame.columns.astype(str), axis=1).rename_axis(index=None)
