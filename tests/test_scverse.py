"""Cohorts as MuData .h5mu files: round trips with the folder layout, extras, atomicity, errors."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from cohere.cli.common import check_paths
from cohere.cohort import Cohort
from cohere.errors import CohereError
from cohere.scverse import read_h5mu, write_h5mu

ad = pytest.importorskip("anndata")
md = pytest.importorskip("mudata")

KNOWN = ["cna", "rnaseq", "rppa", "wsi"]
pytestmark = pytest.mark.filterwarnings("ignore:var_names are not unique")   # genes shared by mods


@pytest.fixture(autouse=True)
def _mudata_0_4():
    """The tests' own MuData calls as from mudata 0.4 (no pulling of mod columns, no notices)."""
    with md.set_options(pull_on_update=False):
        yield


@pytest.fixture(scope="module")
def small(real_path):
    """60 real patients (every 130th), first 50 features per table: patients lack modalities."""
    full = Cohort.read(real_path, modalities=["cna", "rnaseq", "rppa"])
    ids = full.samples()[::130][:60]
    tables = {m: t.loc[t.index.intersection(ids)].iloc[:, :50] for m, t in full.tables.items()}
    return Cohort(tables, full.clinical.loc[ids], full.split.loc[ids], {"cna": "absolute", "rppa": "normalized"})


def _same(a: Cohort, b: Cohort) -> None:
    assert list(a.tables) == list(b.tables)
    for m in a.tables:
        pd.testing.assert_frame_equal(a.tables[m], b.tables[m])
        assert b.tables[m].dtypes.eq(np.float32).all() and b.tables[m].index.name == "sample"
    pd.testing.assert_frame_equal(a.clinical.sort_index(), b.clinical.sort_index())
    pd.testing.assert_series_equal(a.split.sort_index(), b.split.sort_index())
    assert a.input_forms == b.input_forms


def test_folder_h5mu_folder_round_trip(small, tmp_path):
    small.write(tmp_path / "folder")
    c1 = Cohort.read(tmp_path / "folder")
    assert {m: len(t) for m, t in c1.tables.items()} == {"cna": 58, "rnaseq": 25, "rppa": 42}
    assert c1.write(tmp_path / "c.h5mu") == tmp_path / "c.h5mu"
    c2 = Cohort.read(tmp_path / "c.h5mu")
    assert c2.path == tmp_path / "c.h5mu" and c2.ignored == []
    _same(c1, c2)
    c2.write(tmp_path / "again")
    _same(c1, Cohort.read(tmp_path / "again"))
    # the file is plain MuData: one mod per modality, clinical and split in the global obs
    mdata = md.read_h5mu(tmp_path / "c.h5mu")
    assert sorted(mdata.mod) == ["cna", "rnaseq", "rppa"] and mdata.n_obs == 60
    assert {"cancer_type", "os_time", "split"} <= set(mdata.obs.columns)
    assert mdata.uns["cohere"]["input_forms"] == {"cna": "absolute", "rppa": "normalized"}
    # split=False ignores the split, as for a folder
    assert Cohort.read(tmp_path / "c.h5mu", split=False).split is None
    assert list(Cohort.read(tmp_path / "c.h5mu", modalities=["rppa"]).tables) == ["rppa"]


def test_ids_that_look_like_numbers_survive(tmp_path):
    ids = ["0001", "1e3", "NA", "7"]
    t = pd.DataFrame(np.arange(8, dtype=np.float32).reshape(4, 2), index=pd.Index(ids, name="sample"),
                     columns=["1", "2.0"])
    c = Cohort({"rppa": t}, split=pd.Series(["train", "val", "test", "train"], index=t.index, name="split"))
    back = read_h5mu(write_h5mu(c, tmp_path / "ids.h5mu"), known=KNOWN)
    assert sorted(back.tables["rppa"].index) == sorted(ids)
    assert list(back.tables["rppa"].columns) == ["1", "2.0"]
    assert back.split.to_dict() == dict(zip(ids, ["train", "val", "test", "train"]))
    assert back.clinical is None and back.input_forms == {}


def test_unknown_mod_is_skipped_and_listed(tmp_path):
    mods = {name: ad.AnnData(X=np.ones((2, 3), np.float32), obs=pd.DataFrame(index=["s1", "s2"]),
                             var=pd.DataFrame(index=["a", "b", "c"])) for name in ("cna", "methylation")}
    mods["cna"].uns["input_form"] = "absolute"          # per-mod form, when uns["cohere"] lacks one
    md.MuData(mods).write(tmp_path / "m.h5mu")
    c = Cohort.read(tmp_path / "m.h5mu", known=KNOWN)
    assert c.modalities == ["cna"] and c.ignored == ["mod 'methylation'"]
    assert c.input_forms == {"cna": "absolute"} and c.clinical is None and c.split is None
    with pytest.raises(CohereError, match="unknown modality 'methylation'; known modalities: cna"):
        Cohort.read(tmp_path / "m.h5mu", modalities=["methylation"], known=KNOWN)
    with pytest.raises(CohereError, match="no mod for modality 'rppa' in m.h5mu; its mods: cna, methylation"):
        Cohort.read(tmp_path / "m.h5mu", modalities=["rppa"], known=KNOWN)


def test_sparse_x_and_table_validation(tmp_path):
    from scipy import sparse

    x = sparse.csr_matrix(np.array([[0, 1], [2, 0]], np.float64))
    mod = ad.AnnData(X=x, obs=pd.DataFrame(index=["b", "a"]), var=pd.DataFrame(index=["g1", "g2"]))
    md.MuData({"cna": mod}).write(tmp_path / "s.h5mu")
    t = read_h5mu(tmp_path / "s.h5mu", known=KNOWN).tables["cna"]
    assert t.dtypes.eq(np.float32).all() and t.loc["a"].tolist() == [2, 0] and list(t.index) == ["a", "b"]
    bad = ad.AnnData(X=np.array([[1, np.inf]], np.float32), obs=pd.DataFrame(index=["s1"]),
                     var=pd.DataFrame(index=["g1", "g2"]))
    md.MuData({"cna": bad}).write(tmp_path / "bad.h5mu")
    with pytest.raises(CohereError, match=r"bad.h5mu mod 'cna': infinite value in column 'g2'"):
        read_h5mu(tmp_path / "bad.h5mu", known=KNOWN)
    (tmp_path / "junk.h5mu").write_text("not hdf5")
    with pytest.raises(CohereError, match="junk.h5mu: cannot read the file .*expected a MuData .h5mu file"):
        Cohort.read(tmp_path / "junk.h5mu", known=KNOWN)


def test_obs_and_layers_extras_are_written_but_not_read_into_the_cohort(small, tmp_path):
    cna = small.tables["cna"]
    prov = pd.DataFrame({"generated": np.arange(len(cna)) % 2 == 0, "generated_from": "rnaseq",
                         "latent_variance": np.linspace(0, 1, len(cna))}, index=cna.index[::-1])
    sd = pd.DataFrame(0.5, index=cna.index[::-1], columns=cna.columns[::-1])   # any row and column order
    write_h5mu(small, tmp_path / "x.h5mu", obs={"cna": prov}, layers={"cna": {"sd": sd}},
               uns={"model": "multi->cna", "seed": 3})
    mdata = md.read_h5mu(tmp_path / "x.h5mu")
    obs = mdata["cna"].obs
    assert list(obs.index) == list(cna.index)
    assert obs["generated"].tolist() == prov["generated"].reindex(cna.index).tolist()
    assert set(obs["generated_from"]) == {"rnaseq"}
    np.testing.assert_allclose(obs["latent_variance"], prov["latent_variance"].reindex(cna.index))
    assert mdata["cna"].layers["sd"].shape == cna.shape and (mdata["cna"].layers["sd"] == 0.5).all()
    assert mdata.uns["cohere"]["model"] == "multi->cna" and mdata.uns["cohere"]["seed"] == 3
    assert not any(c.startswith("cna:") for c in mdata.obs.columns)
    back = read_h5mu(tmp_path / "x.h5mu")
    _same(small, back)
    with pytest.raises(CohereError, match=r"layers\['cna'\]\['sd'\]: expected a DataFrame with the 58 samples"):
        write_h5mu(small, tmp_path / "y.h5mu", layers={"cna": {"sd": sd.iloc[:3]}})
    with pytest.raises(CohereError, match="obs names modality 'wsi', but the cohort has no 'wsi' table"):
        write_h5mu(small, tmp_path / "y.h5mu", obs={"wsi": prov})
    with pytest.raises(CohereError, match="uns: .*expected JSON-able values"):
        write_h5mu(small, tmp_path / "y.h5mu", uns={"x": object()})
    assert not (tmp_path / "y.h5mu").exists()


def test_failed_write_leaves_nothing(small, tmp_path, monkeypatch):
    real = md.write_h5mu

    def broken(path, mdata):
        real(path, mdata)                                # a complete temporary file, then a failure
        raise OSError("disk full")

    monkeypatch.setattr(md, "write_h5mu", broken)
    with pytest.raises(OSError, match="disk full"):
        small.write(tmp_path / "c.h5mu")
    assert list(tmp_path.iterdir()) == []


def test_reserved_clinical_column_is_refused(small, tmp_path):
    c = Cohort(small.tables, small.clinical.rename(columns={"stage": "cna:stage"}))
    with pytest.raises(CohereError, match="clinical column 'cna:stage': 'split' and names with ':' are reserved"):
        write_h5mu(c, tmp_path / "c.h5mu")
    with pytest.raises(CohereError, match="output 'c.zarr': expected an .h5mu file name"):
        write_h5mu(small, tmp_path / "c.zarr")


def test_missing_packages_say_how_to_install(small, tmp_path, monkeypatch):
    small.write(tmp_path / "c.h5mu")
    monkeypatch.setitem(sys.modules, "mudata", None)
    with pytest.raises(CohereError, match=r"reading .h5mu files needs mudata and anndata: pip install "
                                          r"'cohere-denoising\[scverse\]'"):
        Cohort.read(tmp_path / "c.h5mu")
    with pytest.raises(CohereError, match=r"writing .h5mu files needs mudata and anndata"):
        small.write(tmp_path / "d.h5mu")


def test_paths(small, tmp_path):
    small.write(tmp_path / "c.h5mu")
    check_paths(cohort=tmp_path / "c.h5mu", tables={"--out": tmp_path / "g.csv"}, folders={"--models": tmp_path / "m"})
    for path, what in ((tmp_path / "none.h5mu", "does not exist"), (tmp_path / "c.h5mu" / "x", "does not exist")):
        with pytest.raises(CohereError, match=f"--cohort '.*' {what}; expected a folder or an .h5mu file"):
            check_paths(cohort=path)
    (tmp_path / "t.csv").write_text("id,a\n")
    with pytest.raises(CohereError, match="--cohort '.*t.csv' exists but is not a folder; expected a folder or an"):
        check_paths(cohort=tmp_path / "t.csv")
    with pytest.raises(CohereError, match="cohort '.*none.h5mu' does not exist; expected a folder .* or an .h5mu file"):
        Cohort.read(tmp_path / "none.h5mu")
    with pytest.raises(CohereError, match="cohort '.*t.csv' is a file; expected a folder"):
        Cohort.read(tmp_path / "t.csv")
