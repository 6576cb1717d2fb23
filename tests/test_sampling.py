"""Coherent Denoising: consensus, coherence, rejection, determinism."""

from __future__ import annotations

import pytest
import torch

from cohere.diffusion import Denoiser, DenoiserConfig, NoiseSchedule
from cohere.errors import CohereError
from cohere.sampling import Member, coherence, generate, sample_latents


def denoiser(seed: int, bias: float | None = None) -> Denoiser:
    torch.manual_seed(seed)
    net = Denoiser(DenoiserConfig(latent_dim=4, cond_dims=(3,), hidden=16, layers=2, time_dim=8,
                                  cond_emb_dim=4)).eval()
    if bias is not None:                      # a constant eps: every output = bias
        with torch.no_grad():
            net.out.weight.zero_()
            net.out.bias.fill_(bias)
    return net


@pytest.fixture
def cond():
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(1))


def test_coherence_values():
    a = torch.randn(5, 8)
    w = torch.tensor([0.5, 0.5])
    assert torch.allclose(coherence(torch.stack([a, -a]), w), torch.full((5,), 2.0), atol=1e-6)
    assert torch.allclose(coherence(torch.stack([a, a]), w), torch.zeros(5), atol=1e-6)
    assert torch.equal(coherence(a[None], torch.tensor([1.0])), torch.zeros(5))
    # pair weights (w_i + w_j) / 2: the pair of the two heavy members dominates
    b = torch.randn(5, 8)
    three = torch.stack([a, a, b])
    d_ab = 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
    w3 = torch.tensor([0.4, 0.4, 0.2])
    expected = (0.4 * 0 + 0.3 * d_ab + 0.3 * d_ab) / (0.4 + 0.3 + 0.3)
    assert torch.allclose(coherence(three, w3), expected, atol=1e-6)


@pytest.mark.parametrize("method, steps", [("ddim", 10), ("dpmpp2m", 10), ("ddpm", None)])
def test_consensus_of_identical_experts_equals_one_expert(method, steps, cond):
    net, sched = denoiser(0), NoiseSchedule(num_train_timesteps=50 if method == "ddpm" else 1000)
    one = generate([Member(net, [cond])], sched, 6, draws=2, method=method, steps=steps, seed=3)
    three = generate([Member(net, [cond], weight=w) for w in (0.2, 0.5, 0.3)], sched, 6, draws=2,
                     method=method, steps=steps, seed=3)
    assert torch.allclose(one.draws, three.draws, atol=1e-5)
    assert bool(three.accepted.all()) and int(three.attempts.max()) == 1


def test_zero_weight_expert_has_no_effect(cond):
    good, wild = denoiser(0), denoiser(1, bias=-50.0)
    sched = NoiseSchedule()
    alone = generate([Member(good, [cond])], sched, 6, draws=3, steps=10, seed=0)
    both = generate([Member(good, [cond], weight=1.0), Member(wild, [cond], weight=0.0)], sched, 6,
                    draws=3, steps=10, seed=0)
    assert torch.equal(alone.draws, both.draws) and torch.equal(alone.attempts, both.attempts)


def test_rejection_triggers_on_conflicting_experts_only(cond):
    sched = NoiseSchedule()
    up, down, up2 = denoiser(0, bias=1.0), denoiser(1, bias=-1.0), denoiser(2, bias=1.0)
    conflict = generate([Member(up, [cond], weight=0.5), Member(down, [cond], weight=0.5)], sched, 6, draws=2,
                        steps=10, seed=0, threshold=1.0, fraction=0.1, attempts=4)
    assert not conflict.accepted.any()
    assert torch.equal(conflict.attempts, torch.full((2, 6), 4))           # every try rejected
    assert torch.allclose(conflict.bad_fraction, torch.ones(2, 6))
    agree = generate([Member(up, [cond], weight=0.5), Member(up2, [cond], weight=0.5)], sched, 6, draws=2,
                     steps=10, seed=0, attempts=4)
    assert agree.accepted.all() and int(agree.attempts.max()) == 1
    assert torch.equal(agree.bad_fraction, torch.zeros(2, 6))


class SignOfCondition(Denoiser):
    """eps = sign(c[:, 0]) everywhere: agrees with a +1 expert only where c[:, 0] > 0."""

    def forward(self, x_t, t, conds=(), mask=None):
        return torch.sign(conds[0][:, :1]).expand_as(x_t).contiguous()


def test_only_rejected_rows_are_regenerated(cond):
    sched = NoiseSchedule()
    up = denoiser(0, bias=1.0)
    sign = SignOfCondition(up.config).eval()
    members = [Member(up, [cond], weight=0.5), Member(sign, [cond], weight=0.5)]
    res = generate(members, sched, 6, draws=2, steps=10, seed=0, attempts=3)
    agree = cond[:, 0] > 0
    assert agree.any() and not agree.all()
    assert torch.equal(res.accepted, agree.repeat(2, 1))
    assert torch.equal(res.attempts, torch.where(agree, 1, 3).repeat(2, 1))
    once = generate(members, sched, 6, draws=2, steps=10, seed=0, attempts=1)
    assert torch.equal(res.draws[:, agree], once.draws[:, agree])    # kept their first trajectory


def test_same_seed_same_draws_other_seed_differs(cond):
    nets = [Member(denoiser(0), [cond], weight=0.6), Member(denoiser(1), [cond], weight=0.4)]
    sched = NoiseSchedule()
    a = generate(nets, sched, 6, draws=4, steps=10, seed=11)
    b = generate(nets, sched, 6, draws=4, steps=10, seed=11)
    c = generate(nets, sched, 6, draws=4, steps=10, seed=12)
    assert torch.equal(a.draws, b.draws) and not torch.equal(a.draws, c.draws)
    assert a.draws.shape == (4, 6, 4) and a.variance.shape == (6, 4) and (a.variance > 0).all()


def test_draws_are_one_batch_matching_single_loop(cond):
    net, sched = denoiser(0), NoiseSchedule()
    res = generate([Member(net, [cond])], sched, 6, draws=2, method="ddim", steps=10, eta=0.0, seed=5)
    g = torch.Generator().manual_seed(5)
    x = sample_latents([Member(net, [cond.repeat(2, 1)])], sched, 12, "ddim", 10, 0.0, g)
    assert torch.allclose(res.draws.reshape(12, -1), x)


def test_argument_errors(cond):
    m = [Member(denoiser(0), [cond])]
    sched = NoiseSchedule()
    with pytest.raises(CohereError, match="draws must be a positive int"):
        generate(m, sched, 6, draws=0)
    with pytest.raises(CohereError, match="fraction must be in \\[0, 1\\]"):
        generate(m, sched, 6, fraction=1.5)
    with pytest.raises(CohereError, match="attempts must be an int >= 1"):
        generate(m, sched, 6, attempts=0)
    with pytest.raises(CohereError, match="no member with a positive weight"):
        generate([Member(m[0].model, [cond], weight=0.0)], sched, 6)
