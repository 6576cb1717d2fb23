"""Denoiser: shapes, parameter names, exact masking of absent conditions, input checks."""

import dataclasses

import pytest
import torch

from cohere.diffusion import Denoiser, DenoiserConfig

SMALL = dict(latent_dim=8, hidden=16, layers=3, time_dim=8, cond_emb_dim=4)


def make(cond_dims=(5, 3), seed=0, **kw):
    torch.manual_seed(seed)
    return Denoiser(DenoiserConfig(cond_dims=cond_dims, **{**SMALL, **kw}))


def batch(n=6, cond_dims=(5, 3), seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, SMALL["latent_dim"], generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    conds = [torch.randn(n, c, generator=g) for c in cond_dims]
    return x, t, conds


def test_default_config_is_the_papers_expert():
    cfg = DenoiserConfig()
    assert (cfg.latent_dim, cfg.cond_dims, cfg.hidden, cfg.layers, cfg.time_dim, cfg.cond_emb_dim) == (32, (32,), 512, 5, 128, 32)
    model = Denoiser()
    assert model.config == cfg and len(model.blocks) == 5
    assert model.blocks[0].linear.in_features == 32 + 128 + 32
    assert all(b.linear.in_features == 512 + 128 for b in model.blocks[1:])
    assert (model.out.in_features, model.out.out_features) == (512 + 128, 32)
    x = torch.randn(4, 32)
    assert model(x, torch.tensor([0, 1, 500, 999]), [torch.randn(4, 32)]).shape == (4, 32)


def test_parameter_names_are_stable():
    keys = set(make(layers=2).state_dict())
    expected = {"time_proj.weight", "time_proj.bias", "out.weight", "out.bias"}
    expected |= {f"cond_proj.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    expected |= {f"blocks.{j}.linear.{p}" for j in range(2) for p in ("weight", "bias")}
    expected |= {f"blocks.{j}.norm.{p}" for j in range(2) for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert keys == expected


def test_timesteps_long_float_and_scalar():
    model = make().eval()
    x, t, conds = batch()
    out = model(x, t, conds)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, model(x, t.float(), conds))
    assert torch.equal(model(x, 7, conds), model(x, torch.full((6,), 7), conds))
    assert not torch.equal(out, model(x, t + 1, conds))  # time matters


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_masked_condition_values_never_matter(train):
    model = make().train(train)
    x, t, conds = batch()
    mask = torch.ones(6, 2)
    mask[[1, 4], 0] = 0  # condition 0 absent in rows 1 and 4
    mask[:, 1] = 0  # condition 1 absent everywhere
    ref = model(x, t, conds, mask)
    for fill in (torch.randn(1).item(), 1e30, float("inf"), float("-inf"), float("nan")):
        c0, c1 = conds[0].clone(), torch.full_like(conds[1], fill)
        c0[[1, 4]] = fill
        out = model(x, t, [c0, c1], mask)
        assert torch.equal(out, ref), fill
    # ... while a present condition does matter
    c0 = conds[0].clone()
    c0[0] += 1.0
    assert not torch.equal(model(x, t, [c0, conds[1]], mask), ref)


def test_nan_in_masked_condition_gives_finite_gradients():
    model = make().train()
    x, t, conds = batch()
    conds[0][2] = float("nan")
    mask = torch.ones(6, 2)
    mask[2, 0] = 0
    model(x, t, conds, mask).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_masked_condition_embeds_to_exact_zero():
    """A condition absent from every row is the same as the condition's projection not existing."""
    model = make().eval()
    x, t, conds = batch()
    mask = torch.tensor([[1.0, 0.0]]).expand(6, 2)
    with torch.no_grad():
        model.cond_proj[1].bias.fill_(3.0)  # ReLU(bias) > 0: only the mask can zero it
    out = model(x, t, conds, mask)
    with torch.no_grad():
        model.cond_proj[1].bias.zero_()
    assert torch.equal(out, model(x, t, [conds[0], torch.zeros(6, 3)], mask))


def test_mask_none_bool_and_float_agree():
    model = make().eval()
    x, t, conds = batch()
    ref = model(x, t, conds)
    assert torch.equal(ref, model(x, t, conds, torch.ones(6, 2)))
    assert torch.equal(ref, model(x, t, conds, torch.ones(6, 2, dtype=torch.bool)))


def test_unconditional_model():
    model = make(cond_dims=()).eval()
    x, t, _ = batch(cond_dims=())
    assert len(model.cond_proj) == 0 and model.blocks[0].linear.in_features == 8 + 8
    out = model(x, t)
    assert out.shape == (6, 8)
    assert torch.equal(out, model(x, t, [], torch.ones(6, 0)))
    model.train()(x, t).sum().backward()


def test_config_survives_a_json_round_trip():
    cfg = DenoiserConfig(cond_dims=(32, 16), layers=2)
    back = DenoiserConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()})
    assert back == cfg and back.cond_dims == (32, 16)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(time_dim=7), "time_dim must be even"),
        (dict(hidden=0), "hidden must be a positive int"),
        (dict(layers=1.5), "layers must be a positive int"),
        (dict(cond_dims=32), "cond_dims must be a sequence of ints"),
        (dict(cond_dims=(32, 0)), "cond_dims must hold positive ints"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        DenoiserConfig(**kw)


def test_bad_inputs_raise():
    model = make()
    x, t, conds = batch()
    with pytest.raises(ValueError, match=r"expected a list of 2 condition tensors \(cond_dims=\(5, 3\)\), got 1"):
        model(x, t, conds[:1])
    with pytest.raises(ValueError, match="expected a list of 2 condition tensors"):
        model(x, t, conds[0])
    with pytest.raises(ValueError, match=r"conds\[1\] must have shape \(6, 3\), got \(6, 4\)"):
        model(x, t, [conds[0], torch.randn(6, 4)])
    with pytest.raises(ValueError, match=r"conds\[0\] must have shape \(6, 5\), got \(5, 5\)"):
        model(x, t, [conds[0][:5], conds[1]])
    with pytest.raises(ValueError, match=r"x_t must be a tensor of shape \(n, 8\), got \(6, 9\)"):
        model(torch.randn(6, 9), t, conds)
    with pytest.raises(ValueError, match=r"t must have shape \(6,\) or be a scalar"):
        model(x, t[:3], conds)
    with pytest.raises(ValueError, match=r"mask must have shape \(6, 2\)"):
        model(x, t, conds, torch.ones(6, 3))
    with pytest.raises(ValueError, match="config must be a DenoiserConfig"):
        Denoiser({"latent_dim": 8})
