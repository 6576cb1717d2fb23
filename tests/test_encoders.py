"""Encoders and their artifacts: quality vs PCA, bit-exact round trip, tamper refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cohere.artifacts import load_artifact, save_artifact, sha256_file
from cohere.encoders import load_encoder, make_encoder
from cohere.errors import CohereError
from cohere.plugins import get_modality


@pytest.fixture(scope="module")
def rppa_split(real):
    table = real.tables["rppa"]
    train = table.loc[table.index.intersection(real.ids_in("train"))].iloc[:1500]
    val = table.loc[table.index.intersection(real.ids_in("val"))]
    return train, val


@pytest.fixture(scope="module")
def rppa_ae(rppa_split):
    return make_encoder(get_modality("rppa"), "normalized", hidden=(128, 64), max_epochs=8,
                        patience=4).fit(rppa_split[0])


def test_autoencoder_matches_pca_on_real_rppa(rppa_split, rppa_ae):
    train, val = rppa_split
    pca = make_encoder(get_modality("rppa"), "normalized", kind="pca").fit(train)
    ae_r2, pca_r2 = rppa_ae.reconstruction_r2(val), pca.reconstruction_r2(val)
    assert pca_r2 > 0.55
    assert ae_r2 >= pca_r2 - 0.005                 # starts at PCA, keeps only improvements
    z = rppa_ae.encode(val)
    assert z.shape == (len(val), 32) and list(z.index) == list(val.index)
    zt = rppa_ae.encode(train)                     # latents standardised on train
    assert np.allclose(zt.to_numpy().mean(0), 0, atol=1e-3) and np.allclose(zt.to_numpy().std(0), 1, atol=1e-3)


def test_round_trip_is_bit_exact_and_digest_stable(tmp_path, rppa_split, rppa_ae):
    _, val = rppa_split
    d1 = rppa_ae.save(tmp_path / "a", metrics={"val_r2": 0.7})
    d2 = rppa_ae.save(tmp_path / "b", metrics={"val_r2": 0.7})
    assert d1 == d2 == sha256_file(tmp_path / "a" / "model.safetensors")
    back = load_encoder(tmp_path / "a")
    assert back.digest == d1
    assert np.array_equal(back.encode(val).to_numpy(), rppa_ae.encode(val).to_numpy())
    z = rppa_ae.encode(val)
    assert np.array_equal(back.decode(z).to_numpy(), rppa_ae.decode(z).to_numpy())
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: cohere") and "cohere-encoder" in card
    assert "Research use only" in card
    assert json.loads((tmp_path / "a" / "config.json").read_text())["kind"] == "encoder"


def test_tampered_or_truncated_weights_are_refused(tmp_path, rppa_ae):
    folder = tmp_path / "enc"
    rppa_ae.save(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CohereError, match="does not match the recorded"):
        load_encoder(folder)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CohereError, match="does not match the recorded"):
        load_encoder(folder)
    # even with a matching recorded sha256, a truncated file is not loaded
    cfg = json.loads((folder / "config.json").read_text())
    cfg["files"]["model.safetensors"] = sha256_file(weights)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CohereError, match="not a valid safetensors file"):
        load_encoder(folder)


def test_config_and_weights_must_agree(tmp_path, rppa_ae):
    folder = tmp_path / "enc"
    rppa_ae.save(folder)
    tensors = load_artifact(folder).tensors
    original = (folder / "config.json").read_text()
    cfg = json.loads(original)
    cfg["preprocessing"]["features"] = cfg["preprocessing"]["features"][:-1]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CohereError, match=r"field 'preprocessing.features\[\d+\]' was removed after saving"):
        load_encoder(folder)
    # a config sealed as it is but not fitting its tensors: the strict name and shape checks
    save_artifact(folder, cfg, tensors, "card")
    with pytest.raises(CohereError, match="has shape .* expected"):
        load_encoder(folder)
    cfg = json.loads(original)
    cfg["architecture"]["hidden"] = [64]
    save_artifact(folder, cfg, tensors, "card")
    with pytest.raises(CohereError, match="does not match its config"):
        load_encoder(folder)


def test_not_an_artifact(tmp_path):
    with pytest.raises(CohereError, match="not an artifact folder"):
        load_encoder(tmp_path)


def test_wsi_pca_encoder_on_simulated_slides(sim, tmp_path):
    cohort, truth = sim
    table = cohort.tables["wsi"]
    assert table.shape[1] == 768
    train = table.loc[table.index.intersection(cohort.ids_in("train"))]
    val = table.loc[table.index.intersection(cohort.ids_in("val"))]
    enc = make_encoder(get_modality("wsi"), "embedding").fit(train)
    assert enc.kind == "pca"
    assert enc.reconstruction_r2(val) > 0.3
    enc.save(tmp_path / "wsi")
    back = load_encoder(tmp_path / "wsi")
    assert np.array_equal(back.encode(val).to_numpy(), enc.encode(val).to_numpy())


def test_simulated_raw_forms_train(sim):
    cohort, _ = sim
    for m in ("cna", "rnaseq"):
        table = cohort.tables[m]
        enc = make_encoder(get_modality(m), cohort.input_forms[m], hidden=(64,), max_epochs=5).fit(table)
        assert enc.preprocessor_.form == cohort.input_forms[m]
        assert np.isfinite(enc.encode(table).to_numpy()).all()


def test_too_few_samples(real):
    with pytest.raises(CohereError, match="at least 20 are needed"):
        make_encoder(get_modality("rppa")).fit(real.tables["rppa"].iloc[:5])


def test_aggregated_features_are_the_mean_of_the_decoded_draws(rppa_split, rppa_ae):
    """The autoencoder's decoder is not linear: the mean of decoded draws (what
    ``generate --decode --aggregate`` and ``cohere complete`` return) is not decode(mean)."""
    import pandas as pd

    from cohere.generation import aggregate_frame, decoded_draws

    val = rppa_split[1].iloc[:40]
    z = rppa_ae.encode(val).to_numpy()
    draws = z[None] + np.random.default_rng(0).normal(0, 1.0, (20, *z.shape)).astype(np.float32)
    shift = np.full((len(val), len(rppa_ae.preprocessor_.features_)), 0.5, np.float32)
    decoded = decoded_draws(rppa_ae, draws, shift)
    assert decoded.shape == (20, len(val), len(rppa_ae.preprocessor_.features_))
    np.testing.assert_allclose(decoded[3], rppa_ae.decode(draws[3]).to_numpy() + 0.5, atol=1e-5)
    mean = decoded.mean(0, dtype=np.float64)
    assert np.abs(mean - (rppa_ae.decode(draws.mean(0)).to_numpy() + 0.5)).mean() > 1e-3
    diag = pd.DataFrame({"accepted": 1.0, "latent_variance": 1.0}, index=val.index)
    frame = aggregate_frame("rppa", rppa_ae, val.index, mean, diag, decoded=True)
    assert list(frame.columns) == ["sample", *rppa_ae.preprocessor_.features_, "accepted", "latent_variance"]
    np.testing.assert_allclose(frame[rppa_ae.preprocessor_.features_].to_numpy(), mean)
