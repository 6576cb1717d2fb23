"""Reading, validating and splitting cohorts (real shared cohort + constructed tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohere.cohort import Cohort, atomic_write_table, read_table, stratified_split, validate_table
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


# ---------------------------------------------------------------- sample ids are text (issue 11.4)

ODD_IDS = ["0001", "1", "1e3", "1.50", "-0", "007", "NA", "nan", "NaN", "None", "null", "N/A", "#N/A",
           "True", "patient 1", "TCGA-02-0001"]


def _save(df: pd.DataFrame, path):
    """``df`` (index = ids) as the file ``path`` (format by suffix), the id column first."""
    if path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_sample_ids_are_read_exactly_as_written(tmp_path, suffix):
    df = pd.DataFrame({"a": np.arange(len(ODD_IDS), dtype=float), "b": 1.0},
                      index=pd.Index(ODD_IDS, name="id"))
    t = read_table(_save(df, tmp_path / f"rppa{suffix}"))
    assert list(t.index) == sorted(ODD_IDS)                       # no id parsed, none lost
    assert t.loc["0001", "a"] == 0 and t.loc["1", "a"] == 1 and t.loc["NA", "a"] == 6


def test_missing_cells_are_still_missing_next_to_text_ids(tmp_path):
    t = read_table(_write(tmp_path, "rppa.csv", "id,a,b\nNA,NA,1\nnan,,3\n0001,2,N/A\n"))
    assert list(t.index) == ["0001", "NA", "nan"]
    assert t["a"].isna().tolist() == [False, True, True] and t["b"].isna().tolist() == [True, False, False]


def test_integer_ids_become_decimal_strings_other_types_are_refused(tmp_path):
    df = pd.DataFrame({"id": [7, 10, 123], "a": [1.0, 2.0, 3.0]})
    df.to_parquet(tmp_path / "col.parquet", index=False)              # an integer id column
    df.set_index("id").to_parquet(tmp_path / "idx.parquet")           # an integer index
    for name in ("col.parquet", "idx.parquet"):
        assert list(read_table(tmp_path / name).index) == ["10", "123", "7"]
    df.assign(id=[7.0, 10.0, 12.5]).to_parquet(tmp_path / "float.parquet", index=False)
    with pytest.raises(CohereError, match=r"float.parquet: sample ids are float64 values .* store the id "
                                          "column as strings"):
        read_table(tmp_path / "float.parquet")
    df.assign(id=pd.Categorical(["b", "a", "0001"])).to_parquet(tmp_path / "cat.parquet", index=False)
    assert list(read_table(tmp_path / "cat.parquet").index) == ["0001", "a", "b"]
    df.assign(id=pd.array([7, None, 3], dtype="Int64")).to_parquet(tmp_path / "na.parquet", index=False)
    with pytest.raises(CohereError, match="na.parquet: empty sample id in data row 2"):
        read_table(tmp_path / "na.parquet")
    df.assign(id=[True, False, True]).to_parquet(tmp_path / "bool.parquet", index=False)
    with pytest.raises(CohereError, match="bool.parquet: sample ids are bool values"):
        read_table(tmp_path / "bool.parquet")
    mixed = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=pd.Index(["s1", 12, None], dtype=object))
    assert list(validate_table(mixed.iloc[:2], "mixed").index) == ["12", "s1"]   # in memory, too
    with pytest.raises(CohereError, match="mixed: empty sample id in data row 3"):
        validate_table(mixed, "mixed")
    with pytest.raises(CohereError, match=r"dates: sample id Timestamp\('2020-01-01 00:00:00'\) is a Timestamp"):
        validate_table(mixed.set_axis(pd.Index(["s1", pd.Timestamp("2020-01-01"), "s3"], dtype=object)), "dates")


@pytest.mark.parametrize("name", ["rppa.csv", "clinical.csv", "split.csv"])
@pytest.mark.parametrize("first_column, message", [
    ("s1,,s3", r"empty sample id in data row 2 \(1 such rows\); every row needs its sample id"),
    ("s1, s2,s3", r"sample id ' s2' has leading or trailing whitespace"),
    ("s1,s2 ,s3", r"sample id 's2 ' has leading or trailing whitespace"),
    ("NA,s2,NA", r"duplicate sample id 'NA'"),
])
def test_bad_sample_ids_are_refused_in_every_file(tmp_path, name, first_column, message):
    ids = first_column.split(",")
    good = dict.fromkeys(i.strip() for i in ids if i.strip())        # a valid table of the same samples
    _write(tmp_path, "cna.csv", "id,g\n" + "".join(f"{i},0.1\n" for i in good))
    column = {"clinical.csv": "cancer_type,BRCA", "split.csv": "split,train"}.get(name, "a,1")
    header, value = column.split(",")
    _write(tmp_path, name, f"id,{header}\n" + "".join(f"{i},{value}\n" for i in ids))
    with pytest.raises(CohereError, match=f"{name}: {message}"):
        Cohort.read(tmp_path, known=KNOWN)


def test_ids_match_across_csv_tsv_parquet_clinical_and_split(tmp_path):
    ids = ["0001", "1", "1e3", "NA"]                                  # "0001" and "1" are two samples
    pd.DataFrame({"g": [0.1, 0.2, 0.3, 0.4]}, index=pd.Index(ids, name="id")).to_parquet(tmp_path / "cna.parquet")
    _write(tmp_path, "rppa.csv", "id,a\n" + "".join(f"{i},{k}\n" for k, i in enumerate(ids)))
    _write(tmp_path, "rnaseq.tsv", "id\tx\n" + "".join(f"{i}\t{k}\n" for k, i in enumerate(ids)))
    _write(tmp_path, "clinical.csv", "id,cancer_type\n" + "".join(f"{i},T{k}\n" for k, i in enumerate(ids)))
    _write(tmp_path, "split.csv", "id,split\n0001,train\n1,val\n1e3,train\nNA,test\n")
    c = Cohort.read(tmp_path, known=KNOWN)
    assert list(c.samples(["cna", "rnaseq", "rppa"])) == sorted(ids)
    assert c.tables["rppa"].loc["1e3", "a"] == 2 and c.tables["rnaseq"].loc["NA", "x"] == 3
    assert c.clinical.loc["0001", "cancer_type"] == "T0" and c.clinical.loc["1", "cancer_type"] == "T1"
    assert list(c.ids_in("val")) == ["1"] and list(c.ids_in("test")) == ["NA"]


def test_split_ids_must_match(tmp_path):
    _write(tmp_path, "cna.csv", "id,g\ns1,0.1\n")
    _write(tmp_path, "split.csv", "id,split\nother,train\n")
    with pytest.raises(CohereError, match="split.csv: none of its sample ids matches"):
        Cohort.read(tmp_path, known=KNOWN)
    Cohort.read(tmp_path, known=KNOWN, split=False)                   # a test cohort ignores it


# ---------------------------------------------------------------- separators, transposed tables (11.7)


@pytest.mark.parametrize("name, sep, message", [
    ("rppa.csv", ";", r"rppa.csv: the header is semicolon-separated \(3 columns\), but a .csv file is read "
                      r"as comma-separated; re-save it comma-separated$"),
    ("rppa.csv", "\t", r"rppa.csv: the header is tab-separated \(3 columns\), but a .csv file is read as "
                       r"comma-separated; rename it to rppa.tsv or re-save it comma-separated$"),
    ("rppa.csv", "|", "rppa.csv: the header is pipe-separated"),
    ("rppa.tsv", ",", r"rppa.tsv: the header is comma-separated \(3 columns\), but a .tsv file is read as "
                      r"tab-separated; rename it to rppa.csv or re-save it tab-separated$"),
    ("rppa.tsv", ";", "rppa.tsv: the header is semicolon-separated"),
    ("clinical.csv", ";", r"clinical.csv: the header is semicolon-separated .* re-save it comma-separated$"),
    ("split.csv", "\t", r"split.csv: the header is tab-separated .* re-save it comma-separated$"),
])
def test_a_separator_other_than_the_suffix_is_named(tmp_path, name, sep, message):
    pd.DataFrame({"g": [0.1] * 240}, index=pd.Index([f"s{i}" for i in range(240)], name="id")).to_parquet(
        tmp_path / "cna.parquet")
    cols = {"clinical.csv": ["cancer_type", "stage"], "split.csv": ["split", "note"]}.get(name, ["a", "b"])
    rows = "".join(sep.join([f"s{i}", "train" if name == "split.csv" else "1", "2"]) + "\n" for i in range(240))
    _write(tmp_path, name, sep.join(["id", *cols]) + "\n" + rows)
    with pytest.raises(CohereError, match=message):
        Cohort.read(tmp_path, known=KNOWN)


def test_other_separators_inside_a_well_formed_header_are_fine(tmp_path):
    t = read_table(_write(tmp_path, "rppa.csv", 'id,"a;b",c|d\ns1,1,2\n'))
    assert list(t.columns) == ["a;b", "c|d"]
    with pytest.raises(CohereError, match="the table is empty"):      # one column: nothing to sniff
        read_table(_write(tmp_path, "cna.csv", "id\ns1\n"))


def _transposed_rppa(real, tmp_path, n=60):
    """``n`` real rppa patients (who also have rnaseq), written transposed (antibodies as rows)."""
    t = real.tables["rppa"].loc[real.samples(["rnaseq", "rppa"])[:n]]
    t.T.to_csv(tmp_path / "rppa.csv")
    return t


@pytest.mark.parametrize("reference", ["clinical", "split", "table"])
def test_a_transposed_table_is_refused(real, tmp_path, reference):
    t = _transposed_rppa(real, tmp_path)
    if reference == "table":                                 # no clinical/split: another table's rows
        real.tables["rnaseq"].loc[t.index].to_parquet(tmp_path / "rnaseq.parquet")
        source = "rnaseq.parquet"
    else:
        getattr(real, reference).loc[t.index].to_csv(tmp_path / f"{reference}.csv")
        source = f"{reference}.csv"
        pd.DataFrame({"g": [0.1]}, index=pd.Index([t.index[0]], name="id")).to_csv(tmp_path / "cna.csv")
    with pytest.raises(CohereError, match=rf"rppa.csv: the table looks transposed \(\d+ of its 60 column "
                                          rf"names are sample ids of {source}\); .* transpose it"):
        Cohort.read(tmp_path, known=KNOWN)


def test_wide_tables_in_the_usual_orientation_are_not_transposed(real, tmp_path):
    """Far more features than samples is normal (a small cohort): only ids decide."""
    ids = real.tables["rnaseq"].index[:5]
    for m in ("rnaseq", "rppa"):
        real.tables[m].reindex(ids).to_csv(tmp_path / f"{m}.csv")
    real.clinical.loc[ids].to_csv(tmp_path / "clinical.csv")
    c = Cohort.read(tmp_path, known=KNOWN)
    assert c.tables["rnaseq"].shape == (5, 1526)


def test_two_transposed_look_alikes_are_left_to_the_encoder(tmp_path):
    """Two tables with the same feature names, one transposed, no clinical/split: which one is
    transposed cannot be told from ids alone, so reading accepts both (encoding refuses)."""
    ids, genes = [f"p{i}" for i in range(8)], [f"G{i}" for i in range(6)]
    table = pd.DataFrame(np.ones((8, 6)), index=pd.Index(ids, name="id"), columns=genes)
    table.to_csv(tmp_path / "cna.csv")
    table.T.to_csv(tmp_path / "rnaseq.csv")
    assert Cohort.read(tmp_path, known=KNOWN).tables["rnaseq"].shape == (6, 8)
