"""A cohort: one table per modality, plus optional clinical labels and a split.

On disk a cohort is a folder::

    cna.parquet | cna.csv | cna.tsv     rows = samples, first column (or index) = sample id
    rnaseq.parquet ...                  one table per modality, named after the modality
    clinical.csv                        optional: cancer_type, stage, os_time, os_event, ...
    split.csv                           optional: split = train | val | test
    cohort.json                         optional: {"input_forms": {"cna": "absolute", ...}}

or a MuData ``.h5mu`` file with one mod per modality (:mod:`cohere.scverse`).

A sample lacks a modality when its row is absent from that table or entirely NaN. Sample
ids are text exactly as written, in every file (:func:`sample_ids`); every file is read by
:func:`read_frame`. Everything read is validated; problems raise ``CohereError`` with one line that says what
was expected and how to fix it.
"""

from __future__ import annotations

import contextlib

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import writing
from .errors import CohereError
from .modalities import registry

TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")
RESERVED = {"clinical", "split"}
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- reading one file

SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
SUFFIX_SEPARATOR = {".csv": ",", ".tsv": "\t"}


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read one cohort file (Parquet, CSV or TSV by suffix) with its sample ids as the index.

    The one reading path of every table, clinical.csv and split.csv. The ids are the first
    column (or a Parquet file's index), turned into strings by :func:`sample_ids`. In a
    CSV/TSV they are read as text exactly as written: ``0001``, ``1e3`` and ``NA`` are ids,
    not numbers or missing values. Other cells are parsed as pandas does (empty, ``NA``,
    ``nan`` ... are missing).
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
            if isinstance(df.index, pd.RangeIndex) and df.index.name is None and len(df.columns):
                df = df.set_index(df.columns[0])
        else:
            sep = _separator(path)
            df = pd.read_csv(path, sep=sep, index_col=0, dtype={0: str})
            ids = pd.read_csv(path, sep=sep, usecols=[0], dtype=str, keep_default_na=False)
            if len(ids) != len(df):
                raise ValueError(f"{len(ids)} ids for {len(df)} rows")
            df.index = pd.Index(ids.iloc[:, 0].to_numpy(), name=df.index.name)
    except CohereError:
        raise
    except (OSError, ValueError, ImportError) as e:
        raise CohereError(f"{path.name}: cannot read the file ({e}); expected a Parquet/CSV/TSV file "
                          "with sample ids in the first column") from None
    df.index = sample_ids(df.index, path.name)
    return df


def _separator(path: Path) -> str:
    """The separator its suffix implies; refuse a header that is separated by another one."""
    sep = SUFFIX_SEPARATOR.get(path.suffix, ",")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    fields = {s: len(next(csv.reader([header], delimiter=s), [])) for s in SEPARATORS}
    found = max(SEPARATORS, key=lambda s: fields[s])
    if fields[sep] > 1 or fields[found] < 2:
        return sep
    fixes = [f"re-save it {SEPARATORS[sep]}-separated"]
    renamed = {v: k for k, v in SUFFIX_SEPARATOR.items()}.get(found)
    if renamed and path.stem not in RESERVED:
        fixes.insert(0, f"rename it to {path.stem}{renamed}")
    raise CohereError(f"{path.name}: the header is {SEPARATORS[found]}-separated ({fields[found]} "
                      f"columns), but a {path.suffix} file is read as {SEPARATORS[sep]}-separated; "
                      + " or ".join(fixes))


def sample_ids(index, name: str) -> pd.Index:
    """Sample ids as strings: the one conversion for every table, clinical.csv and split.csv.

    Text ids are kept exactly as they are; integer ids (e.g. an integer Parquet column) become
    their decimal strings (``7`` -> ``"7"``). Anything else (floats, dates), an empty or
    missing id, an id with leading or trailing whitespace, and a duplicated id are refused:
    each would silently fail to match the same sample in another file.
    """
    index = pd.Index(index)
    dtype = index.dtype
    if pd.api.types.is_integer_dtype(dtype) and not index.hasnans:
        ids = index.astype(str)
    elif (pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
          or pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)):
        ids = pd.Index([_text_id(v, name) for v in index], dtype=str)
    else:
        example = f" (e.g. {index[0]!r})" if len(index) else ""
        raise CohereError(f"{name}: sample ids are {dtype} values{example}; expected text or integer "
                          "ids: store the id column as strings")
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise CohereError(f"{name}: empty sample id in data row {empty[0] + 1} ({len(empty)} such rows); "
                          "every row needs its sample id in the first column")
    padded = ids[ids != ids.str.strip()]
    if len(padded):
        raise CohereError(f"{name}: sample id {padded[0]!r} has leading or trailing whitespace "
                          f"({len(padded)} such ids); remove it so that ids match across files")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise CohereError(f"{name}: duplicate sample id {dup[0]!r} ({len(dup)} duplicated); "
                          "each sample must have one row")
    return pd.Index(ids, name="sample")


def _text_id(v, name: str) -> str:
    """One id as text: strings as they are, integers in decimal, missing as "" (refused later)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return str(v)
    if pd.isna(v):
        return ""
    raise CohereError(f"{name}: sample id {v!r} is a {type(v).__name__}, not text; store the sample ids "
                      "as strings")


# ---------------------------------------------------------------- one modality table


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read one modality table as float32, validated; all-NaN rows are dropped."""
    path = Path(path)
    return validate_table(read_frame(path), path.name)


def validate_table(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check ids, numbers and shape of a modality table; return it as float32."""
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise CohereError(f"{name}: the table is empty ({df.shape[0]} rows x {df.shape[1]} "
                          "feature columns); expected samples as rows and features as columns")
    df = df.copy()
    df.index = sample_ids(df.index, name)
    df.columns = df.columns.astype(str)
    dupc = df.columns[df.columns.duplicated()]
    if len(dupc):
        raise CohereError(f"{name}: duplicate feature column {dupc[0]!r}; column names must be unique")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            conv = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][conv.isna() & df[col].notna()]
            if len(bad):
                raise CohereError(f"{name}: non-numeric value {bad.iloc[0]!r} in column {col!r} "
                                  f"(sample {bad.index[0]!r}); expected numbers, with empty cells "
                                  "or NaN for missing values")
            df[col] = conv
    values = df.to_numpy(dtype=np.float64)
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise CohereError(f"{name}: infinite value in column {df.columns[c]!r} (sample "
                          f"{df.index[r]!r}); replace +-inf by NaN (missing) or a finite value")
    out = pd.DataFrame(values.astype(np.float32), index=df.index, columns=df.columns)
    out = out[~np.isnan(values).all(axis=1)].sort_index()
    if out.shape[0] == 0:
        raise CohereError(f"{name}: every row is entirely missing; expected at least one measured sample")
    return out


def _read_clinical(path: Path) -> pd.DataFrame:
    return check_clinical(read_frame(path), path.name)


def check_clinical(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the clinical columns cohere reads (os_time, os_event, age); return ``df``."""
    for col in ("os_time", "os_event", "age"):
        if col in df and not pd.api.types.is_numeric_dtype(df[col]):
            raise CohereError(f"{name}: column {col!r} must be numeric")
    if "os_event" in df and not df["os_event"].dropna().isin([0, 1]).all():
        raise CohereError(f"{name}: os_event must be 0 (censored) or 1 (event)")
    return df


def check_split(labels: pd.Series, name: str) -> pd.Series:
    """Every split label is one of train, val, test; return ``labels``."""
    bad = set(labels.unique()) - set(SPLITS)
    if bad:
        raise CohereError(f"{name}: unknown split {sorted(bad)[0]!r}; expected one of {', '.join(SPLITS)}")
    return labels


def _read_split(path: Path) -> pd.Series:
    df = read_frame(path)
    if "split" not in df:
        raise CohereError(f"{path.name}: expected a column named 'split'")
    return df["split"].astype(str)


def _check_orientation(tables: dict[str, pd.DataFrame], names: dict[str, str],
                       id_lists: dict[str, pd.Index]) -> None:
    """Refuse a table that looks transposed: sample ids as column names, features as rows.

    A table looks transposed when more than half of its column names are the sample ids of
    another file (``id_lists``: clinical.csv, split.csv; or the row ids of another table) and
    more of its column names than of its row ids are. Against another table the evidence must
    be one-sided: when that table's column names are in turn mostly this table's row ids (two
    tables with the same feature names, one of them transposed), the two cannot be told apart
    here, and encoding says so (an encoder knows its features). Feature names are not sample
    ids, so a table in the usual orientation never looks transposed.
    """
    refs = [(name, ids, pd.Index([])) for name, ids in id_lists.items()]
    refs += [(names[m], t.index, t.columns) for m, t in tables.items()]
    for m, t in tables.items():
        for ref, ids, cols in refs:
            if ref == names[m]:
                continue
            hits = int(t.columns.isin(ids).sum())
            if 2 * hits <= len(t.columns) or hits <= int(t.index.isin(ids).sum()):
                continue
            if 2 * int(cols.isin(t.index).sum()) > len(cols) > 0:
                continue
            raise CohereError(f"{names[m]}: the table looks transposed ({hits} of its {len(t.columns)} "
                              f"column names are sample ids of {ref}); expected samples as rows and "
                              "features as columns: transpose it (pandas: df.T) and save it again")


# ---------------------------------------------------------------- the cohort


@dataclass
class Cohort:
    """Per-modality tables (float32, rows = samples) plus optional clinical and split."""

    tables: dict[str, pd.DataFrame]
    clinical: pd.DataFrame | None = None
    split: pd.Series | None = None
    input_forms: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    ignored: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.tables:
            raise CohereError("a cohort needs at least one modality table")
        self.tables = {m: self.tables[m] for m in sorted(self.tables)}
        if self.clinical is not None:
            if not self.clinical.index.isin(self.samples()).any():
                raise CohereError("clinical.csv: none of its sample ids matches a sample of the "
                                  "modality tables; the first column must hold the same ids")
        if self.split is not None:
            if not self.split.index.isin(self.samples()).any():
                raise CohereError("split.csv: none of its sample ids matches a sample of the "
                                  "modality tables; the first column must hold the same ids")
            check_split(self.split, "split.csv")

    # -- reading / writing

    @classmethod
    def read(cls, path: str | os.PathLike, modalities: list[str] | None = None,
             known: list[str] | None = None, split: bool = True) -> "Cohort":
        """Read a cohort folder, or a MuData ``.h5mu`` file (:func:`cohere.scverse.read_h5mu`).
        ``known`` are the registered modality names; ``split=False`` ignores split.csv (a
        held-out test cohort, whose every patient is a test patient)."""
        path = Path(path)
        if path.is_file() and path.suffix == ".h5mu":
            from .scverse import read_h5mu

            return read_h5mu(path, modalities=modalities, known=known, split=split)
        if not path.is_dir():
            what = "is a file" if path.exists() else "does not exist"
            raise CohereError(f"cohort {str(path)!r} {what}; expected a folder with one table per "
                              "modality (e.g. cna.parquet, rnaseq.csv) or an .h5mu file")
        if known is None:
            known = registry.names()
        files: dict[str, Path] = {}
        for f in sorted(path.iterdir()):
            if f.suffix in TABLE_SUFFIXES and f.stem not in RESERVED and not f.name.startswith("."):
                if f.stem in files:
                    raise CohereError(f"two tables for modality {f.stem!r} ({files[f.stem].name}, "
                                      f"{f.name}); keep one")
                files[f.stem] = f
        # tables of unknown modalities are skipped (and listed in ``ignored``)
        wanted = [m for m in sorted(files) if m in known] if modalities is None else list(modalities)
        ignored = [files[m].name for m in sorted(files) if m not in known]
        for m in wanted:
            if m not in known:
                raise CohereError(f"unknown modality {m!r}; known modalities: {', '.join(known)} "
                                  "(install a plugin that provides it, or rename the table)")
            if m not in files:
                raise CohereError(f"no table for modality {m!r} in {path}; expected {m}.parquet, "
                                  f"{m}.csv or {m}.tsv")
        if not wanted:
            raise CohereError(f"no table of a known modality ({', '.join(known)}) in {path}; "
                              "expected files such as cna.parquet")
        tables = {m: read_table(files[m]) for m in wanted}
        clinical = _read_clinical(path / "clinical.csv") if (path / "clinical.csv").exists() else None
        labels = _read_split(path / "split.csv") if split and (path / "split.csv").exists() else None
        id_lists = {f"{name}.csv": x.index for name, x in (("clinical", clinical), ("split", labels))
                    if x is not None}
        _check_orientation(tables, {m: files[m].name for m in tables}, id_lists)
        forms = {}
        if (path / "cohort.json").exists():
            try:
                forms = json.loads((path / "cohort.json").read_text()).get("input_forms", {})
            except json.JSONDecodeError as e:
                raise CohereError(f"cohort.json: not valid JSON ({e})") from None
        cohort = cls(tables, clinical, labels, {m: f for m, f in forms.items() if m in tables}, path)
        cohort.ignored = ignored
        return cohort

    def write(self, path: str | os.PathLike) -> Path:
        """Write the cohort folder (Parquet tables, CSV clinical/split, cohort.json), or a
        MuData file when ``path`` ends with ``.h5mu`` (:func:`cohere.scverse.write_h5mu`)."""
        path = Path(path)
        if path.suffix == ".h5mu":
            from .scverse import write_h5mu

            return write_h5mu(self, path)
        path.mkdir(parents=True, exist_ok=True)
        for m, df in self.tables.items():
            df.to_parquet(path / f"{m}.parquet")
        if self.clinical is not None:
            self.clinical.to_csv(path / "clinical.csv")
        if self.split is not None:
            self.split.rename("split").to_csv(path / "split.csv")
        if self.input_forms:
            (path / "cohort.json").write_text(json.dumps({"input_forms": self.input_forms}, indent=2))
        return path

    # -- queries

    @property
    def modalities(self) -> list[str]:
        return list(self.tables)

    def samples(self, modalities: list[str] | None = None) -> pd.Index:
        """Sorted ids of samples that have *all* of ``modalities`` (default: any modality)."""
        if modalities is None:
            ids = sorted(set().union(*(set(t.index) for t in self.tables.values())))
            return pd.Index(ids, name="sample")
        self._check(modalities)
        ids = set(self.tables[modalities[0]].index)
        for m in modalities[1:]:
            ids &= set(self.tables[m].index)
        return pd.Index(sorted(ids), name="sample")

    def presence(self) -> pd.DataFrame:
        """Boolean samples x modalities table of what each sample has."""
        ids = self.samples()
        return pd.DataFrame({m: ids.isin(t.index) for m, t in self.tables.items()}, index=ids)

    def ids_in(self, split: str, seed: int = 0) -> pd.Index:
        """Sample ids in ``split`` (from split.csv, else from :func:`stratified_split`)."""
        labels = self.split if self.split is not None else stratified_split(self, seed=seed)
        labels = labels.reindex(self.samples()).fillna("train")
        return pd.Index(sorted(labels.index[labels == split]), name="sample")

    def _check(self, modalities):
        for m in modalities:
            if m not in self.tables:
                raise CohereError(f"the cohort has no {m!r} table; it has: {', '.join(self.tables)}")


def stratified_split(cohort: Cohort, val_fraction: float = 0.05, test_fraction: float = 0.15,
                     by: str = "cancer_type", seed: int = 0) -> pd.Series:
    """Split as the paper does: per ``by`` group (cancer type), draw validation and test
    samples only from *complete* samples (every modality present); the rest is train.

    Group sizes are the fractions of each group's total, capped by its complete samples.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CohereError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    ids = cohort.samples()
    complete = set(cohort.samples(cohort.modalities))
    if cohort.clinical is not None and by in cohort.clinical:
        groups = cohort.clinical[by].reindex(ids).fillna("unknown").astype(str)
    else:
        groups = pd.Series("all", index=ids)
    rng = np.random.default_rng(seed)
    labels = pd.Series("train", index=ids, name="split")
    for g in sorted(groups.unique()):
        members = groups.index[groups == g]
        pool = np.array(sorted(set(members) & complete))
        rng.shuffle(pool)
        n_test = min(len(pool), int(round(test_fraction * len(members))))
        n_val = min(len(pool) - n_test, int(round(val_fraction * len(members))))
        labels[pool[:n_test]] = "test"
        labels[pool[n_test:n_test + n_val]] = "val"
    return labels


class TableStream:
    """Rows appended in blocks to one Parquet/CSV/TSV file: ``write(df)`` per block, every block
    with the same columns and index name (from :func:`stream_table`)."""

    def __init__(self, path: Path, suffix: str):
        self.path, self.suffix, self.rows = path, suffix, 0
        self._parquet = None

    def write(self, df: pd.DataFrame) -> None:
        if self.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=True)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
        else:
            df.to_csv(self.path, sep="\t" if self.suffix == ".tsv" else ",", mode="a", header=self.rows == 0)
        self.rows += len(df)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


@contextlib.contextmanager
def stream_table(out: str | os.PathLike):
    """Write a table block by block, atomically: the blocks go to a temporary sibling that
    replaces ``out`` only when the ``with`` block ends without an error (memory stays bounded
    by one block, whatever the table's size)."""
    out = Path(out)
    if out.suffix not in TABLE_SUFFIXES:
        raise CohereError(f"output {out.name!r}: expected a .parquet, .csv or .tsv file name")
    with writing(out) as tmp:
        stream = TableStream(tmp, out.suffix)
        try:
            yield stream
        finally:
            stream.close()


def atomic_write_table(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write ``df`` to Parquet/CSV/TSV (by extension) atomically: nothing half-written, no
    temporary file left behind on failure, the permissions of a normal write."""
    out = Path(out)
    if out.suffix not in TABLE_SUFFIXES:
        raise CohereError(f"output {out.name!r}: expected a .parquet, .csv or .tsv file name")
    with writing(out) as tmp:
        write_table_as(df, tmp, out.suffix)
    return out


def write_table_as(df: pd.DataFrame, path: Path, suffix: str) -> None:
    """Write ``df`` to ``path`` in the format of a table ``suffix`` (.parquet, .csv, .tsv)."""
    if suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if suffix == ".tsv" else ",")
