"""Reading, validating and splitting cohorts (real shared cohort + constructed tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohere.cohort import Cohort, atomic_write_table, read_table, stratified_split
from cohere.errors import CohereError

KNOWN = ["cna", "rnaseq", "rppa", "wsi"]


def test_reads_the_real_cohort_as_is(real_path):
    c = Cohort.read(real_path, modalities=["rppa"])
    t = c.tables["rppa"]
    assert t.shape == (6534, 295) and t.dtypes.eq(np.float32).all()
    assert t.index.name == "sample" and t.index.is_monotonic_increasing
    assert c.clinical["cancer_type"].nunique() == 33
    assert set(c.split.unique()) == {"train", "val"}


def test_real_cohort_skips_unknown_tables_and_val_is_complete(real_path):
    c = Cohort.read(real_path)
    assert c.modalities == ["cna", "rnaseq", "rppa"]
    assert c.ignored == ["mirna.parquet"]                    # no mirna plugin installed here
    val = c.ids_in("val")
    assert len(val) == 324
    assert set(val) <= set(c.samples(["cna", "rnaseq", "rppa"]))   # README: val is complete
    # real missingness: many patients lack RNA
    p = c.presence()
    assert ((p["cna"] & p["rppa"]) & ~p["rnaseq"]).sum() > 1000


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_missing_modality_is_absent_row_or_all_nan(tmp_path):
    _write(tmp_path, "rppa.csv", "id,a,b\ns1,1,2\ns2,,\ns3,3,\n")
    _write(tmp_path, "cna.csv", "id,g1,g2\ns1,0.1,0.2\n")
    c = Cohort.read(tmp_path, known=KNOWN)
    assert list(c.tables["rppa"].index) == ["s1", "s3"]      # the all-NaN row is dropped
    assert list(c.samples()) == ["s1", "s3"]
    assert list(c.samples(["cna", "rppa"])) == ["s1"]
    assert np.isnan(c.tables["rppa"].loc["s3", "b"])


@pytest.mark.parametrize("text, message", [
    ("id,a\ns1,1\ns1,2\n", "duplicate sample id 's1'"),
    ("id,a\ns1,1\ns2,high\n", "non-numeric value 'high' in column 'a'"),
    ("id,a\ns1,1\ns2,inf\n", "infinite value in column 'a'"),
    ("id,a\n", "the table is empty"),
    ("id\ns1\n", "the table is empty"),
    ("id,a\ns1,\ns2,\n", "every row is entirely missing"),
])
def test_table_validation_errors(tmp_path, text, message):
    path = _write(tmp_path, "rppa.csv", text)
    with pytest.raises(CohereError, match=message):
        read_table(path)


def test_parquet_and_tsv_tables(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["x", "y"], name="patient"))
    df.to_parquet(tmp_path / "cna.parquet")
    df.to_csv(tmp_path / "rppa.tsv", sep="\t")
    c = Cohort.read(tmp_path, known=KNOWN)
    assert c.tables["cna"].equals(c.tables["rppa"])


def test_clinical_ids_must_match(tmp_path):
    _write(tmp_path, "cna.csv", "id,g\ns1,0.1\n")
    _write(tmp_path, "clinical.csv", "id,cancer_type\nother,BRCA\n")
    with pytest.raises(CohereError, match="none of its sample ids matches"):
        Cohort.read(tmp_path, known=KNOWN)


def test_clinical_os_event_checked(tmp_path):
    _write(tmp_path, "cna.csv", "id,g\ns1,0.1\n")
    _write(tmp_path, "clinical.csv", "id,os_event\ns1,2\n")
    with pytest.raises(CohereError, match="os_event must be 0"):
        Cohort.read(tmp_path, known=KNOWN)


def test_unknown_and_missing_modalities(tmp_path):
    _write(tmp_path, "cna.csv", "id,g\ns1,0.1\n")
    _write(tmp_path, "methylation.csv", "id,g\ns1,0.1\n")
    assert Cohort.read(tmp_path, known=KNOWN).ignored == ["methylation.csv"]
    with pytest.raises(CohereError, match="unknown modality 'methylation'; known modalities: cna"):
        Cohort.read(tmp_path, modalities=["methylation"], known=KNOWN)
    with pytest.raises(CohereError, match="no table for modality 'rppa'"):
        Cohort.read(tmp_path, modalities=["rppa"], known=KNOWN)
    with pytest.raises(CohereError, match="does not exist"):
        Cohort.read(tmp_path / "nope", known=KNOWN)


def test_bad_split_label(tmp_path):
    _write(tmp_path, "cna.csv", "id,g\ns1,0.1\n")
    _write(tmp_path, "split.csv", "id,split\ns1,holdout\n")
    with pytest.raises(CohereError, match="unknown split 'holdout'"):
        Cohort.read(tmp_path, known=KNOWN)


def test_stratified_split_mirrors_the_paper(real_path):
    c = Cohort.read(real_path, modalities=["rnaseq", "rppa"])
    s = stratified_split(c, val_fraction=0.05, test_fraction=0.15, seed=1)
    complete = set(c.samples(["rnaseq", "rppa"]))
    held = s.index[s != "train"]
    assert set(held) <= complete                        # val/test only from complete samples
    types = c.clinical["cancer_type"].reindex(s.index)
    for t in ["BRCA", "LUAD", "KIRC"]:                  # per-type fractions, capped by complete
        members = s[types == t]
        assert abs((members == "test").sum() - round(0.15 * len(members))) <= 1
    assert s.equals(stratified_split(c, 0.05, 0.15, seed=1))
    assert not s.equals(stratified_split(c, 0.05, 0.15, seed=2))
    with pytest.raises(CohereError, match="sum below 1"):
        stratified_split(c, 0.6, 0.5)


def test_write_read_round_trip(tmp_path, real):
    small = Cohort({m: t.iloc[:50] for m, t in real.tables.items()}, real.clinical, real.split,
                   {"rppa": "normalized"})
    small.write(tmp_path / "c")
    back = Cohort.read(tmp_path / "c", known=KNOWN)
    for m in small.tables:
        pd.testing.assert_frame_equal(back.tables[m], small.tables[m])
    assert back.input_forms == {"rppa": "normalized"}


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    with pytest.raises(CohereError, match="expected a .parquet, .csv or .tsv"):
        atomic_write_table(pd.DataFrame({"a": [1]}), tmp_path / "out.xlsx")

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_table(Boom({"a": [1]}), tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []
