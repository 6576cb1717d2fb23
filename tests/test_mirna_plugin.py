"""A third-party modality on real data: the cohere-mirna plugin (plugins/cohere-mirna).

With the plugin installed (CI: ``pip install -e plugins/cohere-mirna``): train the mirna
encoder and the experts mirna<->rnaseq on the shared TCGA ``mirna.parquet``, install them
into a store next to the existing cna->rnaseq and rppa->rnaseq experts, and generate
rnaseq from {cna, rppa, mirna} with a Coherent Denoising consensus, without retraining or
changing any existing expert. A small quick recipe; scripts/mirna_gain.py measures the gain.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("cohere_mirna", reason="the mirna plugin is not installed: pip install -e plugins/cohere-mirna")

from cohere import plugins  # noqa: E402
from cohere.artifacts import sha256_file  # noqa: E402
from cohere.cohort import read_table  # noqa: E402
from cohere.diffusion.train import TrainConfig  # noqa: E402
from cohere.encoders import load_encoder, make_encoder  # noqa: E402
from cohere.experts import Expert, model_dir  # noqa: E402
from cohere.sampling import sample_latents  # noqa: E402
from cohere.store import Store  # noqa: E402

RECIPE = TrainConfig(hidden=64, layers=2, time_dim=16, cond_emb_dim=16, steps=300, batch_size=64,
                     eval_every=100, val_steps=10, seed=0)


@pytest.fixture
def with_mirna(monkeypatch):
    """Load the installed mirna plugin (and no other), whatever the environment says."""
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-mirna")
    plugins.reset()
    yield
    plugins.reset()


def test_mirna_joins_the_consensus_without_touching_existing_experts(with_mirna, real, real_cna, real_path,
                                                                     tmp_path, monkeypatch):
    assert "mirna" in plugins.modality_names()
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    tables = {"cna": real_cna.tables["cna"], "rnaseq": real.tables["rnaseq"], "rppa": real.tables["rppa"],
              "mirna": read_table(real_path / "mirna.parquet")}
    # patients with all four modalities (343 train, 31 val): small, and enough for mechanics
    ids = tables["mirna"].index
    for t in tables.values():
        ids = ids.intersection(t.index)
    split = real.split.reindex(ids)
    train, val = ids[split.eq("train").to_numpy()], ids[split.eq("val").to_numpy()]
    assert len(train) > 300 and len(val) >= 20

    models = tmp_path / "models"
    # the existing side: built-in encoders (PCA keeps it quick) and two experts for rnaseq
    for m in ("cna", "rppa", "rnaseq"):
        make_encoder(plugins.get_modality(m), None, "pca").fit(tables[m].loc[train]).save(
            models / "encoders" / m, {}, {"cohort": "tcga-pancan"})
    # the plugin's modality: its own preprocessing and its autoencoder definition
    enc = make_encoder(plugins.get_modality("mirna"), None, None, hidden=(64,), max_epochs=8)
    enc.fit(tables["mirna"].loc[train])
    assert enc.kind == "autoencoder" and enc.preprocessor_.form == "log2_rpm"
    assert enc.reconstruction_r2(tables["mirna"].loc[val]) > 0.3
    enc.save(models / "encoders" / "mirna", {}, {"cohort": "tcga-pancan"})
    encoders = {m: load_encoder(models / "encoders" / m) for m in tables}  # with their digests
    latents = {m: encoders[m].encode(t.loc[ids]) for m, t in tables.items()}

    def fit(source, target):
        ex = Expert.fit(source, target, latents[source].loc[train], latents[target].loc[train], encoders, RECIPE,
                        training={"cohort": "tcga-pancan"})
        ex.save(model_dir(models, ex.id))

    store = Store()
    for m in ("cna", "rppa", "rnaseq"):
        store.add("encoders", m, models)
    for source in ("cna", "rppa"):
        fit(source, "rnaseq")
        store.add("experts", f"{source}->rnaseq", models)
    existing = {p: sha256_file(p) for p in sorted((tmp_path / "home" / "experts").rglob("*")) if p.is_file()}

    # add the new modality: its encoder and pairwise experts only
    fit("mirna", "rnaseq")
    fit("rnaseq", "mirna")
    store.add("encoders", "mirna", models)
    store.add("experts", "mirna->rnaseq", models)
    store.add("experts", "rnaseq->mirna", models)
    assert {p: sha256_file(p) for p in existing} == existing  # nothing existing was retrained or changed

    experts = store.load_experts("rnaseq")
    assert list(experts) == ["cna->rnaseq", "mirna->rnaseq", "rppa->rnaseq"]
    draws = 4
    members = [ex.member({ex.source: latents[ex.source].loc[val]}, weight=1 / ex.val_loss, n_draws=draws)
               for ex in experts.values()]
    x = sample_latents(members, next(iter(experts.values())).schedule, n=draws * len(val), method="ddim", steps=20,
                       eta=1.0, generator=torch.Generator().manual_seed(0))
    z = x.view(draws, len(val), -1).numpy()                                   # (draws, n, 32)
    assert np.isfinite(z).all()  # quality needs the full recipe: scripts/mirna_gain.py measures it
    generated = encoders["rnaseq"].decode(pd.DataFrame(z.mean(0), index=val))
    assert generated.shape == (len(val), len(encoders["rnaseq"].preprocessor_.features_))
