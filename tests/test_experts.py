"""Experts and multi-condition models as artifacts, the sampling loop, and the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from cohere.artifacts import load_artifact, save_artifact, sha256_file
from cohere.cli import main
from cohere.diffusion import Denoiser, DenoiserConfig, NoiseSchedule
from cohere.diffusion.train import TrainConfig
from cohere.errors import CohereError
from cohere.experts import Expert, MultiConditionModel, folder_name, load_model, model_dir, parse_id
from cohere.sampling import Member, sample_latents

TINY = TrainConfig(hidden=32, layers=2, time_dim=16, cond_emb_dim=8, steps=40, eval_every=20, batch_size=32,
                   val_steps=4)
DIGESTS = {"rnaseq": "a" * 64, "cna": "b" * 64, "rppa": "c" * 64}


class Enc:  # stands in for a loaded encoder: only the digest matters to the contract
    def __init__(self, digest):
        self.digest = digest


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    c = rng.standard_normal((120, 32)).astype(np.float32)
    x = (np.tanh(c[:, ::-1]) + 0.1 * rng.standard_normal((120, 32))).astype(np.float32)
    return c, x


@pytest.fixture(scope="module")
def expert(data):
    c, x = data
    return Expert.fit("rnaseq", "cna", c, x, DIGESTS, TINY)


@pytest.fixture(scope="module")
def multi(data):
    c, x = data
    r = np.where(np.arange(120)[:, None] < 40, np.nan, c[:, :16].repeat(2, 1)).astype(np.float32)
    return MultiConditionModel.fit("cna", x, {"rnaseq": c, "rppa": r}, DIGESTS, TINY)


# ----------------------------------------------------------------------------- ids


def test_ids_and_folders():
    assert parse_id("rnaseq->cna") == ("rnaseq", "cna") and folder_name("multi->cna") == "multi_to_cna"
    assert model_dir("M", "rnaseq->cna").as_posix() == "M/experts/rnaseq_to_cna"
    for bad in ("cna", "cna->cna", "->cna", "a->b->c"):
        with pytest.raises(CohereError, match="model id|must differ"):
            parse_id(bad)


# ----------------------------------------------------------------------------- sampling loop


def _model(seed=0, k=1):
    torch.manual_seed(seed)
    return Denoiser(DenoiserConfig(latent_dim=8, cond_dims=(5,) * k, hidden=16, layers=2, time_dim=8, cond_emb_dim=4)).eval()


@pytest.mark.parametrize("method,steps,eta", [("ddpm", None, 0.0), ("ddim", 10, 0.0), ("ddim", 7, 1.0), ("dpmpp2m", 8, 0.0)])
def test_one_member_equals_the_schedule_loop(method, steps, eta):
    model, sched = _model(), NoiseSchedule(100)
    c = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    got = sample_latents([Member(model, [c])], sched, 6, method=method, steps=steps, eta=eta,
                         generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 8, generator=g)
    with torch.no_grad():
        if method == "ddpm":
            for t in range(99, -1, -1):
                x = sched.ddpm_step(model(x, t, [c]), t, x, generator=g).prev_sample
        else:
            ts = sched.ddim_timesteps(steps).tolist()
            last_x0 = last_t = None
            for t, tp in zip(ts, ts[1:] + [-1]):
                if method == "ddim":
                    x = sched.ddim_step(model(x, t, [c]), t, tp, x, eta=eta, generator=g).prev_sample
                else:
                    out = sched.dpmpp_2m_step(model(x, t, [c]), t, tp, x, last_x0, last_t)
                    x, last_x0, last_t = out.prev_sample, out.pred_original_sample, t
    assert torch.equal(got, x)


def test_consensus_is_the_weighted_mean_of_member_predictions():
    m1, m2, sched = _model(0), _model(1, k=2), NoiseSchedule(50)
    c = torch.randn(4, 5)
    mask = torch.tensor([[1.0, 0.0]] * 4)
    seen = []
    x = sample_latents([Member(m1, [c], weight=3.0), Member(m2, [c, c], mask, weight=1.0)], sched, 4,
                       steps=5, generator=torch.Generator().manual_seed(0), on_step=seen.append)
    assert x.shape == (4, 8) and len(seen) == 5 and seen[0].t == 49
    s = seen[2]
    assert torch.allclose(s.weights, torch.tensor([0.75, 0.25]))
    with torch.no_grad():
        e1, e2 = m1(s.x_t, s.t, [c]), m2(s.x_t, s.t, [c, c], mask)
    torch.testing.assert_close(s.eps, 0.75 * e1 + 0.25 * e2)
    # two copies of one member = that member alone
    one = sample_latents([Member(m1, [c])], sched, 4, steps=5, generator=torch.Generator().manual_seed(0))
    two = sample_latents([Member(m1, [c], weight=0.2), Member(m1, [c], weight=0.2)], sched, 4, steps=5,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one, two)


def test_sampling_input_errors():
    m, sched, c = _model(), NoiseSchedule(50), torch.randn(4, 5)
    with pytest.raises(CohereError, match="training mode"):
        sample_latents([Member(_model().train(), [c])], sched, 4)
    with pytest.raises(CohereError, match="unknown sampling method"):
        sample_latents([Member(m, [c])], sched, 4, method="euler")
    with pytest.raises(CohereError, match="runs all 50 steps"):
        sample_latents([Member(m, [c])], sched, 4, method="ddpm", steps=10)
    with pytest.raises(CohereError, match="condition has 4 rows, expected n = 3"):
        sample_latents([Member(m, [c])], sched, 3)
    with pytest.raises(CohereError, match="weights sum to zero"):
        sample_latents([Member(m, [c], weight=0.0)], sched, 4)
    with pytest.raises(CohereError, match="at least one member"):
        sample_latents([], sched, 4)


# ----------------------------------------------------------------------------- artifacts


def test_expert_round_trip_is_bit_exact(tmp_path, expert, data):
    c, _ = data
    folder = tmp_path / "experts" / expert.folder_name
    digest = expert.save(folder)
    assert digest == sha256_file(folder / "model.safetensors") and folder.name == "rnaseq_to_cna"
    back = load_model(folder, {m: Enc(d) for m, d in DIGESTS.items()})
    assert isinstance(back, Expert) and back.id == "rnaseq->cna" and back.digest == digest
    sb, se = back.model.state_dict(), expert.model.state_dict()
    assert all(torch.equal(sb[k], se[k]) and sb[k].dtype == se[k].dtype for k in se)  # incl. long num_batches_tracked
    assert np.array_equal(back.sample(c[:10], n_draws=3, seed=5), expert.sample(c[:10], n_draws=3, seed=5))
    assert np.array_equal(back.sample(c[:10], method="ddpm", seed=1), expert.sample(c[:10], method="ddpm", seed=1))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kind"] == "expert" and cfg["source"] == "rnaseq" and cfg["target"] == "cna"
    assert cfg["encoders"] == {"rnaseq": DIGESTS["rnaseq"], "cna": DIGESTS["cna"]}
    assert cfg["schedule"] == {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                               "beta_schedule": "linear", "prediction_type": "epsilon"}
    assert {"val_loss", "val_r2", "val_energy"} <= set(cfg["metrics"]) and cfg["n_train"] == 108
    assert cfg["training"]["recipe"]["hidden"] == 32 and back.train_config == expert.train_config
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: cohere") and "- cohere-expert" in card
    assert "Research use only" in card and DIGESTS["rnaseq"] in card and 'id: "rnaseq->cna"' in card


def test_multi_round_trip_and_masking(tmp_path, multi, data):
    c, _ = data
    assert multi.id == "multi->cna" and multi.sources == ["rnaseq", "rppa"]
    assert multi.training["n_with_source"] == {"rnaseq": 120, "rppa": 80}
    folder = tmp_path / multi.folder_name
    multi.save(folder)
    back = load_model(folder)
    assert isinstance(back, MultiConditionModel) and folder.name == "multi_to_cna"
    conds = {"rnaseq": c[:8], "rppa": c[:8, :16].repeat(2, 1)}
    assert np.array_equal(back.sample(conds, n_draws=2, seed=0), multi.sample(conds, n_draws=2, seed=0))
    # a masked source's values are never used: omitted == NaN rows; garbage under NaN is impossible
    only = back.sample({"rnaseq": c[:8]}, seed=1)
    assert np.array_equal(only, back.sample({"rnaseq": c[:8], "rppa": np.full((8, 32), np.nan)}, seed=1))
    assert not np.array_equal(only, back.sample(conds, seed=1))
    rows = back.sample({"rnaseq": pd.DataFrame(c[:8]), "rppa": np.where(np.arange(8)[:, None] < 4, np.nan, conds["rppa"])}, seed=1)
    assert rows.shape == (1, 8, 32)
    assert back.sample({}, n=5, seed=0).shape == (1, 5, 32)  # the empty set
    card = (folder / "README.md").read_text()
    assert "- cohere-multi" in card and "rnaseq, rppa" in card
    with pytest.raises(CohereError, match="unknown source modality 'wsi'"):
        back.sample({"wsi": c[:8]})
    with pytest.raises(CohereError, match="partly NaN"):
        back.sample({"rnaseq": np.where(np.eye(8, 32) > 0, np.nan, c[:8])})
    with pytest.raises(CohereError, match="number of rows n"):
        back.sample({})


def test_tampered_weights_are_refused(tmp_path, expert):
    folder = tmp_path / "e"
    expert.save(folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CohereError, match="does not match the recorded"):
        load_model(folder)


def test_config_and_weights_must_agree(tmp_path, expert):
    folder = tmp_path / "e"
    expert.save(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architecture"]["hidden"] = 64  # the weights are 32 wide
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CohereError, match=r"field 'architecture.hidden' was changed after saving \(saved 32, found 64\)"):
        load_model(folder)
    # a config sealed as it is but not matching its tensors: the strict shape check refuses it
    expert.save(tmp_path / "ok")
    save_artifact(folder, cfg, load_artifact(tmp_path / "ok").tensors, "card")
    with pytest.raises(CohereError, match="has shape .* expected"):
        load_model(folder)
    cfg["architecture"]["hidden"], cfg["kind"], cfg["id"] = 32, "encoder", "cna"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CohereError, match="expected an expert or a multi-condition model"):
        load_model(folder)


def test_encoder_digest_mismatch_is_refused_naming_both(tmp_path, expert):
    folder = tmp_path / "e"
    expert.save(folder)
    other = "d" * 64
    with pytest.raises(CohereError, match=f"digest {DIGESTS['cna']}.*digest {other}"):
        load_model(folder, {"rnaseq": Enc(DIGESTS["rnaseq"]), "cna": Enc(other)})
    with pytest.raises(CohereError, match=f"rnaseq encoder with digest {DIGESTS['rnaseq']}"):
        expert.check_encoders({"rnaseq": other})
    expert.check_encoders({"rnaseq": Enc(DIGESTS["rnaseq"])})  # a subset is checked, no error
    with pytest.raises(CohereError, match="no encoder given for modality 'cna'"):
        Expert.fit("rnaseq", "cna", np.zeros((20, 32)), np.zeros((20, 32)), {"rnaseq": Enc("x")}, TINY)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    """60 patients, cna (all) + rppa (40), 40 features each, PCA encoders."""
    from cohere.cohort import Cohort
    from cohere.encoders import make_encoder
    from cohere.plugins import get_modality

    rng = np.random.default_rng(0)
    ids = [f"P{i:03d}" for i in range(60)]
    z = rng.standard_normal((60, 4))
    cna = pd.DataFrame(np.clip(0.3 * z @ rng.standard_normal((4, 40)), -2, 2), index=ids,
                       columns=[f"g{j}" for j in range(40)]).astype(np.float32)
    rppa = pd.DataFrame(z @ rng.standard_normal((4, 40)) + 0.3 * rng.standard_normal((60, 40)), index=ids,
                        columns=[f"p{j}" for j in range(40)]).astype(np.float32).iloc[:40]
    split = pd.Series(["train"] * 50 + ["val"] * 10, index=ids, name="split")
    root = tmp_path_factory.mktemp("cli")
    Cohort({"cna": cna, "rppa": rppa}, split=split).write(root / "cohort")
    for m, table in (("cna", cna), ("rppa", rppa)):
        make_encoder(get_modality(m), kind="pca").fit(table.iloc[:35]).save(root / "models" / "encoders" / m)
    return root


def cli(args) -> int:
    """Run the console entry point; return its exit code."""
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_trains_all_and_writes_artifacts(tiny_cohort, capsys):
    root = tiny_cohort
    assert cli(["experts", "train", "--all", "--cohort", str(root / "cohort"), "--models", str(root / "models"),
                "--steps", "20", "--hidden", "32", "--layers", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    folders = sorted(p.name for p in (root / "models" / "experts").iterdir())
    assert folders == ["cna_to_rppa", "multi_to_cna", "multi_to_rppa", "rppa_to_cna"]
    assert "trained 4 model(s)" in out
    cfg = json.loads((root / "models" / "experts" / "multi_to_cna" / "config.json").read_text())
    enc = json.loads((root / "models" / "encoders" / "rppa" / "config.json").read_text())
    assert cfg["encoders"]["rppa"] == enc["files"]["model.safetensors"] and cfg["sources"] == ["rppa"]
    assert cfg["training"]["recipe"]["steps"] == 20 and cfg["training"]["recipe"]["seed"] == 1
    # experts get the mean stacking and the residual head; their request records both
    exp = json.loads((root / "models" / "experts" / "rppa_to_cna" / "config.json").read_text())
    features = len(json.loads((root / "models" / "encoders" / "cna" / "config.json").read_text())
                   ["preprocessing"]["features"])
    assert 0 <= exp["stacking"]["alpha"] <= 1 and exp["residual_head"]["features"] == features
    assert exp["training"]["request"]["stacking"] and len(exp["training"]["request"]["residuals_sha256"]) == 64
    assert "stacking" not in cfg and "residual_head" not in cfg  # the multi-condition model has neither
    assert cli(["experts", "list", "--models", str(root / "models")]) == 0
    assert "multi->rppa" in capsys.readouterr().out


def test_cli_errors_are_one_line(tiny_cohort, tmp_path, capsys):
    root = tiny_cohort
    code = cli(["experts", "train", "--all", "--cohort", str(root / "cohort"), "--models", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "no encoders in" in err and "cohere encoders train --all" in err
    assert err.count("\n") == 1
    for args, msg in ((["rnaseq->cna"], "no 'rnaseq' in the cohort with an encoder"),
                      ([], "give model ids"), (["cna->rppa", "--device", "tpu"], "expected one of cpu, cuda")):
        assert cli(["experts", "train", *args, "--cohort", str(root / "cohort"), "--models", str(root / "models")]) != 0
        assert msg in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli(["experts", "train", "cna->rppa", "--device", "cuda", "--cohort", str(root / "cohort"),
                    "--models", str(root / "models")]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err


# ----------------------------------------------------------------------------- mean stacking


def test_recenter_moves_the_mean_of_the_draws_and_keeps_their_spread():
    from cohere.sampling import recenter

    g = torch.Generator().manual_seed(0)
    x, p = torch.randn(5, 7, 3, generator=g), torch.randn(7, 3, generator=g)
    r = recenter(x, p, 0.3)
    torch.testing.assert_close(r.mean(0), 0.3 * x.mean(0) + 0.7 * p)
    torch.testing.assert_close(r - r.mean(0), x - x.mean(0))
    assert torch.equal(recenter(x, p, 1.0), x) and torch.equal(recenter(x[:1], p, 0.3), x[:1])  # one draw: no mean


def test_stack_weight_prefers_the_better_mean_and_blends_equal_ones():
    from cohere.experts import stack_weight

    rng = np.random.default_rng(0)
    y = rng.standard_normal((400, 4))
    spread = rng.standard_normal((20, 400, 4))
    good, noisy = y + 0.1 * rng.standard_normal((400, 4)), y + rng.standard_normal((400, 4))
    assert stack_weight(y, good + spread, noisy) >= 0.9  # the network's mean is the better one
    assert stack_weight(y, noisy + spread, good) <= 0.1  # ridge's is
    other = y + rng.standard_normal((400, 4))  # as good as `noisy`, independent errors: the blend wins
    assert 0.3 <= stack_weight(y, noisy + spread, other) <= 0.7


def test_experts_record_their_stacking_and_older_artifacts_get_the_same_one(tmp_path, data, monkeypatch):
    from cohere.diffusion.train import cpu_threads
    from cohere.experts import add_stacking

    c, x = data
    with cpu_threads(TINY):  # as training jobs run (Job.fit)
        fresh = Expert.fit("rnaseq", "cna", c, x, DIGESTS, TINY)
    h = fresh.metrics["held_out"]
    assert fresh.stack is not None and fresh.stack_alpha == h["stack_alpha"] and 0 <= fresh.stack_alpha <= 1
    assert h["stacked_energy"] <= h["energy"] + 1e-9  # alpha = 1 is on the grid
    fresh.save(tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    assert cfg["stacking"]["alpha"] == fresh.stack_alpha
    loaded = Expert.load(tmp_path / "new")
    assert loaded.stack_alpha == fresh.stack_alpha and torch.equal(loaded.stack.weight, fresh.stack.weight)
    # the same expert as an artifact from before stacking: loads without it, and add_stacking
    # (scripts/fit_stacking.py) gives it exactly the artifact that training gives
    held = {k: v for k, v in h.items() if not k.startswith(("stack", "stacked"))}
    old = Expert("rnaseq", "cna", fresh.model, fresh.schedule, fresh.encoders, TINY, {**fresh.metrics, "held_out": held},
                 fresh.training, fresh.x0_bounds, fresh.mean, fresh.noise_error, fresh.spread)
    old.save(tmp_path / "old")
    before = Expert.load(tmp_path / "old")
    assert before.stack is None and before.stack_alpha == 1.0 and "stacking" not in json.loads(
        (tmp_path / "old" / "config.json").read_text())
    assert add_stacking(before, c, x).pack()[0] == fresh.pack()[0]
    def never(*args, **kwargs):
        raise AssertionError("calibrated before the rows were checked")

    monkeypatch.setattr("cohere.experts.calibrate_spread", never)  # the check comes first: refused in seconds
    with pytest.raises(CohereError, match=r"rnaseq->cna: the held-out rows of these latents do not reproduce the "
                                          r"recorded noise-error profile; give the latents it was trained on, or "
                                          r"retrain it"):
        add_stacking(before, c[::-1].copy(), x[::-1].copy())


def _save_with_sampling(model, folder, key, value) -> None:
    """Save ``model`` with its config's ``sampling[key]`` set to ``value`` (None: absent), as an
    earlier version, or a hand edit, wrote it."""
    cfg = model._config()
    if value is None:
        del cfg["sampling"][key]
    else:
        cfg["sampling"][key] = value
    edited = copy.copy(model)
    edited._config = lambda: cfg
    edited.save(folder)


def test_an_artifact_calibrated_for_another_step_count_is_recalibrated_to_what_training_gives(tmp_path, data):
    from cohere.diffusion.train import cpu_threads
    from cohere.experts import LEGACY_STEPS, SAMPLER_STEPS, recalibrate

    c, x = data
    with cpu_threads(TINY):
        fresh = Expert.fit("rnaseq", "cna", c, x, DIGESTS, TINY)
    assert fresh.sampler_steps == SAMPLER_STEPS
    fresh.save(tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    assert cfg["sampling"]["steps"] == SAMPLER_STEPS and cfg["sampling"]["spread"] == fresh.spread
    assert f"(DDIM, {SAMPLER_STEPS} steps, analytic variance" in (tmp_path / "new" / "README.md").read_text()
    # the same network as an artifact of an earlier version, calibrated at 20 steps (another spread, alpha)
    old = copy.copy(fresh)
    old.sampler_steps, old.spread, old.stack_alpha = LEGACY_STEPS, 4.0, 1.0
    old.save(tmp_path / "old")
    before = Expert.load(tmp_path / "old")
    assert before.sampler_steps == LEGACY_STEPS and before.spread == 4.0
    after = recalibrate(before, x, {"rnaseq": c})
    assert after.sampler_steps == SAMPLER_STEPS and after.spread == fresh.spread
    assert after.pack()[0] == fresh.pack()[0]
    with pytest.raises(CohereError, match=r"rnaseq->cna: give the rnaseq latents it was trained on"):
        recalibrate(before, x, {})
    # a config without a step count is from before it was recorded (20 steps); a bad one is refused
    for value in (None, 0, "12", True, 5000):
        _save_with_sampling(before, tmp_path / f"edited-{value}", "steps", value)
        if value is None:
            assert Expert.load(tmp_path / f"edited-{value}").sampler_steps == LEGACY_STEPS
        else:
            with pytest.raises(CohereError, match=r"unsupported sampling.steps .*; cohere models record the DDIM step "
                                                  r"count their spread was calibrated at \(an int in 1..1000\)"):
                Expert.load(tmp_path / f"edited-{value}")


def test_the_spread_is_calibrated_on_the_draws_as_delivered_recentred_on_the_stacked_mean(monkeypatch):
    """A known truth: the network's draws of a row are its mean m = y + e (e ~ N(0, 1)) plus
    kappa * z (z ~ N(0, 1)), so kappa = 1 calibrates them. Recentred on a better point (error
    0.3 e'), the draws over-cover at kappa = 1: the spread calibrated on the stacked draws is
    narrower."""
    from cohere.experts import SPREADS, calibrate_spread

    rng = np.random.default_rng(0)
    n, d, K, unit = 500, 8, 20, 0.01
    y = rng.standard_normal((n, d))
    m, z = y + rng.standard_normal((n, d)), rng.standard_normal((K, n, d))

    def draws(model, schedule, x0, conds, mask_value, offset, noise_error, bounds, k, seed):
        return m[None] + float(noise_error[0, 0]) / unit * z  # the factor calibrate_spread tries

    monkeypatch.setattr("cohere.experts._held_out_draws", draws)
    val = (torch.from_numpy(y).float(), [torch.zeros(n, 2)], torch.ones(n, 1))
    profile = torch.full((2, 1000), unit)
    network = calibrate_spread(None, None, val, None, profile, draws=K)
    stacked = calibrate_spread(None, None, val, None, profile, draws=K,
                               point=y + 0.3 * rng.standard_normal((n, d)))
    assert network == 1.0 and stacked in SPREADS and stacked <= 0.6


def test_a_noise_error_profile_of_some_presence_patterns_measures_those_only(multi, data):
    """Checkpoint scoring measures only the patterns its rows have: the first pattern measured
    alone is the full profile's (same noise), and the others stay at 1 (knows nothing)."""
    from cohere.experts import noise_error_profile

    c, x = data
    conds = [torch.from_numpy(c), torch.from_numpy(c[:, :16].repeat(2, 1))]
    val = (torch.from_numpy(x), conds, torch.ones(len(x), 2))
    full = noise_error_profile(multi.model, multi.schedule, val, every=100, repeats=1)
    some = noise_error_profile(multi.model, multi.schedule, val, every=100, repeats=1, patterns={0})
    assert torch.equal(some[0], full[0]) and bool((full[1:] < 1).any())
    assert bool((some[1:] == 1).all())


@pytest.mark.parametrize("truth", [0.5, 0.7071, 2.0, 4.0])
def test_the_spread_search_walks_to_the_grids_best_factor_without_trying_them_all(monkeypatch, truth):
    """Draws m + kappa z of rows whose mean m misses y by truth * e: kappa = truth calibrates
    them. The walk from 1 returns the factor an exhaustive search of the grid picks, with
    fewer generations than the grid has factors (all but the far end's)."""
    from cohere import scores
    from cohere.experts import SPREADS, calibrate_spread

    rng = np.random.default_rng(1)
    n, d, K, unit = 400, 8, 20, 0.01
    y = rng.standard_normal((n, d))
    m, z = y + truth * rng.standard_normal((n, d)), rng.standard_normal((K, n, d))
    tried = []

    def draws(model, schedule, x0, conds, mask_value, offset, noise_error, bounds, k, seed):
        tried.append(round(float(noise_error[0, 0]) / unit, 4))
        return m[None] + tried[-1] * z

    def miss(kappa):
        x = m[None] + kappa * z
        return sum(abs(scores.interval_coverage(y, x, p) - scores.calibrated_coverage(p, K)) for p in (0.5, 0.9))

    monkeypatch.setattr("cohere.experts._held_out_draws", draws)
    val = (torch.from_numpy(y).float(), [torch.zeros(n, 2)], torch.ones(n, 1))
    found = calibrate_spread(None, None, val, None, torch.full((2, 1000), unit), draws=K)
    grid_best = min(SPREADS, key=lambda kappa: (miss(kappa), kappa))
    assert found == grid_best == truth
    assert tried[0] == 1.0 and len(set(tried)) == len(tried) < len(SPREADS) - 1


def test_an_experts_spread_records_what_it_was_calibrated_on_and_older_ones_are_recalibrated(tmp_path, data):
    from cohere.diffusion.train import cpu_threads
    from cohere.experts import recalibrate

    c, x = data
    with cpu_threads(TINY):
        fresh = Expert.fit("rnaseq", "cna", c, x, DIGESTS, TINY)
    h = fresh.metrics["held_out"]
    assert fresh.spread_on == "stacked" and 0 <= h["stacked_coverage50"] <= h["stacked_coverage90"] <= 1
    fresh.save(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["sampling"]["spread_on"] == "stacked"
    assert "chosen on the draws as generation delivers them" in (tmp_path / "new" / "README.md").read_text()
    assert Expert.load(tmp_path / "new").spread_on == "stacked"
    # an expert of an earlier version, its spread calibrated on the network's own draws
    old = copy.copy(fresh)
    old.spread_on, old.spread = "network", 4.0
    old.save(tmp_path / "old")
    before = Expert.load(tmp_path / "old")
    assert before.spread_on == "network" and before.spread == 4.0
    assert recalibrate(before, x, {"rnaseq": c}).pack()[0] == fresh.pack()[0]
    for value in (None, "draws", 1, ["stacked"]):
        _save_with_sampling(before, tmp_path / f"edited-{value}", "spread_on", value)
        if value is None:  # before it was recorded: the network's draws
            assert Expert.load(tmp_path / f"edited-{value}").spread_on == "network"
        else:
            with pytest.raises(CohereError, match=r"unsupported sampling.spread_on .*; cohere models record one of "
                                                  r"'network', 'stacked' \(the draws their spread was calibrated on\)"):
                Expert.load(tmp_path / f"edited-{value}")


def test_the_residual_head_is_fitted_recorded_and_added_to_older_artifacts(tmp_path, data):
    from cohere.experts import add_head

    c, x = data
    rng = np.random.default_rng(1)
    resid = (c[:, :5] @ rng.standard_normal((5, 7)) + 0.01 * rng.standard_normal((120, 7))).astype(np.float32)
    fresh = Expert.fit("rnaseq", "cna", c, x, DIGESTS, TINY, target_residuals=resid)
    shift = fresh.head_shift([torch.from_numpy(c)]).numpy()
    assert shift.shape == (120, 7) and 1 - ((resid - shift) ** 2).sum() / ((resid - resid.mean(0)) ** 2).sum() > 0.95
    fresh.save(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["residual_head"]["features"] == 7
    loaded = Expert.load(tmp_path / "new")
    assert torch.equal(loaded.head.weight, fresh.head.weight)
    old = Expert("rnaseq", "cna", fresh.model, fresh.schedule, fresh.encoders, TINY, fresh.metrics, fresh.training,
                 fresh.x0_bounds, fresh.mean, fresh.noise_error, fresh.spread, fresh.stack, fresh.stack_alpha,
                 spread_on=fresh.spread_on)
    old.save(tmp_path / "old")
    before = Expert.load(tmp_path / "old")
    assert before.head is None and before.head_shift([torch.from_numpy(c)]) is None
    assert add_head(before, c, resid).pack()[0] == fresh.pack()[0]
    with pytest.raises(CohereError, match=r"residuals: expected a finite array of shape \(120, F\)"):
        add_head(before, c, resid[:10])



class _LinearDecoder:
    """A known linear decoder (latent -> 7 features), standing in for a target encoder."""

    def __init__(self, d: int, seed: int = 3):
        self.A = np.random.default_rng(seed).standard_normal((d, 7)) / np.sqrt(d)

    def decode(self, z):
        out = np.asarray(z, np.float64) @ self.A
        out.flags.writeable = False  # as some encoders' decode returns (the demo's did)
        return pd.DataFrame(out, copy=False)


def test_feature_stack_weight_keeps_the_better_of_the_two_means():
    from cohere.experts import feature_stack_weight

    y = np.random.default_rng(0).standard_normal((50, 6))
    assert feature_stack_weight(y, y, y + 1) == 0.0      # the draws' own mean is exact
    assert feature_stack_weight(y, y + 1, y) == 1.0      # ridge's is exact
    assert feature_stack_weight(y, y + 1, y - 1) == 0.5  # opposite errors: the blend is exact
    assert feature_stack_weight(y, y + 1, y + 1) == 0.0  # a tie keeps the draws' own mean


def test_feature_stacking_is_chosen_on_held_out_rows_recorded_and_added_to_older_artifacts(tmp_path, data):
    from cohere.experts import add_feature_stacking, add_head

    c, x = data
    dec = _LinearDecoder(x.shape[1])
    rng = np.random.default_rng(1)
    # features outside the latent that the condition predicts linearly: ridge to the features
    # sees them, the tiny network's decoded draws do not
    resid = (c[:, :5] @ rng.standard_normal((5, 7)) + 0.01 * rng.standard_normal((120, 7))).astype(np.float32)
    fresh = Expert.fit("rnaseq", "cna", c, x, DIGESTS, TINY, target_residuals=resid, target_encoder=dec)
    h = fresh.metrics["held_out_features"]
    assert fresh.fstack is not None and fresh.fstack.weight.shape == (7, 32) and fresh.fstack_beta == h["beta"]
    assert h["n"] == 12 and h["draws"] == 20 and h["r2_stacked"] >= max(h["r2_decoded_mean"], h["r2_ridge"]) - 0.02
    fresh.save(tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    assert cfg["feature_stacking"]["features"] == 7 and cfg["feature_stacking"]["beta"] == fresh.fstack_beta
    loaded = Expert.load(tmp_path / "new")
    assert torch.equal(loaded.fstack.weight, fresh.fstack.weight) and loaded.fstack_beta == fresh.fstack_beta
    # an artifact from before the feature stacking loads without it, and gets the same one added
    old = Expert("rnaseq", "cna", fresh.model, fresh.schedule, fresh.encoders, TINY,
                 {k: v for k, v in fresh.metrics.items() if k != "held_out_features"}, fresh.training,
                 fresh.x0_bounds, fresh.mean, fresh.noise_error, fresh.spread, fresh.stack, fresh.stack_alpha,
                 fresh.head, spread_on=fresh.spread_on)
    old.save(tmp_path / "old")
    before = Expert.load(tmp_path / "old")
    assert before.fstack is None and before.fstack_beta == 0.0
    assert add_feature_stacking(before, dec, c, x, resid).pack()[0] == fresh.pack()[0]
    headless = Expert("rnaseq", "cna", fresh.model, fresh.schedule, fresh.encoders, TINY)
    with pytest.raises(CohereError, match=r"rnaseq->cna: feature stacking needs the residual head; add it first"):
        add_feature_stacking(headless, dec, c, x, resid)
    with pytest.raises(CohereError, match=r"residuals: expected a finite array of shape \(120, 7\), got \(10, 7\)"):
        add_feature_stacking(add_head(headless, c, resid), dec, c, x, resid[:10])
    for bad in ({"beta": 2, "features": 7}, {"beta": 0.5, "features": "7"}, "yes"):
        edited = copy.copy(fresh)
        edited._config = lambda bad=bad: {**fresh._config(), "feature_stacking": bad}
        edited.save(tmp_path / "edited")
        with pytest.raises(CohereError, match=r"unsupported feature_stacking .*; cohere experts record "
                                              r"\{'beta': a number in \[0, 1\], 'features': a positive int"):
            Expert.load(tmp_path / "edited")
