"""NoiseSchedule: closed forms of DDPM (Ho et al. 2020) and parity with diffusers' schedulers."""

import math

import numpy as np
import pytest
import torch

from cohere.diffusion import NoiseSchedule, StepOutput

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore:__array__ implementation:DeprecationWarning"  # diffusers' own internals
)

T = 1000
BETAS64 = np.linspace(1e-4, 0.02, T)  # independent float64 reference schedule
ABAR64 = np.cumprod(1.0 - BETAS64)
MU = torch.linspace(-1.0, 1.0, 32)


def abar(t):
    return 1.0 if t < 0 else float(ABAR64[t])


def eps_fn(x, t):
    """Deterministic, smooth 'model': the exact eps for data N(MU, 0.25 I), slightly perturbed."""
    a = abar(t)
    return (math.sqrt(1 - a) * (x - math.sqrt(a) * MU) / (0.25 * a + 1 - a) + 0.05 * torch.sin(3 * x)).float()


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule()


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def x_init(n=16, d=32, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- buffers


def test_schedule_has_only_float32_buffers(sched):
    assert list(sched.parameters()) == [] and sched.state_dict() == {}
    for name in ["betas", "alphas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "posterior_variance"]:
        buf = getattr(sched, name)
        assert buf.dtype == torch.float32 and buf.shape == (T,)
    torch.testing.assert_close(sched.alphas_cumprod, torch.tensor(ABAR64, dtype=torch.float32), rtol=1e-6, atol=0)
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(0.02)
    assert NoiseSchedule(num_train_timesteps=10).alphas_cumprod.shape == (10,)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_train_timesteps must be an int >= 2"):
        NoiseSchedule(num_train_timesteps=1)
    with pytest.raises(ValueError, match="0 < beta_start <= beta_end < 1"):
        NoiseSchedule(beta_start=0.1, beta_end=0.01)


# ----------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_add_noise_statistics(sched, t):
    n, x0 = 100_000, torch.tensor([[1.5, -2.0, 0.0, 0.5]])  # (1, 4)
    noise = torch.randn(n, 4, generator=torch.Generator().manual_seed(t))
    xt = sched.add_noise(x0.expand(n, 4), noise, torch.full((n,), t, dtype=torch.long))  # (n, 4)
    a = abar(t)
    se = math.sqrt(1 - a) / math.sqrt(n)  # standard error of the mean
    torch.testing.assert_close(xt.mean(0), math.sqrt(a) * x0[0], atol=5 * se, rtol=0)
    torch.testing.assert_close(xt.var(0), torch.full((4,), 1 - a), atol=5 * (1 - a) * math.sqrt(2 / n), rtol=0)


def test_add_noise_per_row_timesteps_and_int(sched):
    x0, noise = x_init(3, 5), x_init(3, 5, seed=1)
    t = torch.tensor([0, 10, 999])
    xt = sched.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(xt[i], math.sqrt(abar(ti)) * x0[i] + math.sqrt(1 - abar(ti)) * noise[i])
    torch.testing.assert_close(sched.add_noise(x0, noise, 10), sched.add_noise(x0, noise, torch.full((3,), 10)))


def test_add_noise_rejects_bad_timesteps(sched):
    x0 = x_init(3, 5)
    with pytest.raises(ValueError, match=r"t must be an integer tensor of shape \(3,\)"):
        sched.add_noise(x0, x0, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="t must be an integer tensor"):
        sched.add_noise(x0, x0, torch.zeros(3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        sched.add_noise(x0, x0, torch.tensor([0, 1, 1000]))
    with pytest.raises(ValueError, match="same shape"):
        sched.add_noise(x0, x0[:, :2], 1)


# ----------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize("t", [1, 2, 50, 500, 998, 999])
def test_ddpm_step_mean_is_true_posterior_mean(sched, t):
    """Given the true noise, the step's mean is the mean of q(x_{t-1} | x_t, x_0) (Ho et al., eq. 7)."""
    x0, noise = x_init(), x_init(seed=1)
    xt = sched.add_noise(x0, noise, t)
    out = sched.ddpm_step(noise, t, xt, noise=torch.zeros_like(xt))
    assert isinstance(out, StepOutput)
    a_t, a_p, beta = abar(t), abar(t - 1), float(BETAS64[t])
    x0_, xt_ = x0.double(), xt.double()
    post_mean = (math.sqrt(a_p) * beta / (1 - a_t)) * x0_ + (math.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)) * xt_
    torch.testing.assert_close(out.prev_sample.double(), post_mean, atol=1e-5, rtol=0)
    # same mean in Ho et al.'s eq. 11 form, 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps)
    mu11 = (xt_ - beta / math.sqrt(1 - a_t) * noise.double()) / math.sqrt(1 - beta)
    torch.testing.assert_close(out.prev_sample.double(), mu11, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pred_original_sample, x0, atol=2e-3 / math.sqrt(a_t), rtol=0)
    # the ancestral noise has variance sigma_t^2 = beta_t ("fixed_large")
    z = x_init(seed=2)
    torch.testing.assert_close(sched.ddpm_step(noise, t, xt, noise=z).prev_sample - out.prev_sample, math.sqrt(beta) * z, atol=1e-5, rtol=0)


def test_ddpm_step_at_t0_is_deterministic(sched):
    x, eps, g = x_init(), x_init(seed=1), torch.Generator().manual_seed(3)
    state = g.get_state()
    out = sched.ddpm_step(eps, 0, x, generator=g)
    assert torch.equal(g.get_state(), state)  # no noise drawn
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample)  # abar_{-1} = 1: x_{-1} = x0_hat


# ----------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_ddim_eta1_full_steps_has_ddpm_mean(sched, t):
    """DDIM with S = T and eta = 1 has DDPM's mean; its variance is beta_tilde (not beta)."""
    x, eps, zero = x_init(), x_init(seed=1), torch.zeros(16, 32)
    ddim = sched.ddim_step(eps, t, t - 1, x, eta=1.0, noise=zero)
    ddpm = sched.ddpm_step(eps, t, x, noise=zero)
    torch.testing.assert_close(ddim.prev_sample, ddpm.prev_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ddim.pred_original_sample, ddpm.pred_original_sample)
    z = x_init(seed=2)
    beta_tilde = (1 - abar(t - 1)) / (1 - abar(t)) * float(BETAS64[t])
    diff = sched.ddim_step(eps, t, t - 1, x, eta=1.0, noise=z).prev_sample - ddim.prev_sample
    torch.testing.assert_close(diff, math.sqrt(beta_tilde) * z, atol=1e-5, rtol=0)


def test_ddim_final_step_returns_x0_hat(sched):
    x, eps = x_init(), x_init(seed=1)
    out = sched.ddim_step(eps, 19, -1, x)
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample)


def test_ddim_timesteps(sched, diffusers):
    for S in [1, 2, 7, 10, 30, 48, 50, 100, 999, 1000]:
        ours = sched.ddim_timesteps(S)
        assert ours.dtype == torch.long and len(ours) == S and ours[0] == T - 1
        assert (ours[:-1] > ours[1:]).all() and ours[-1] >= 0
        for cls in (diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler):
            ref = cls(timestep_spacing="trailing")
            ref.set_timesteps(S)
            assert ours.tolist() == ref.timesteps.tolist(), (cls.__name__, S)
        ref = diffusers.DDIMScheduler(timestep_spacing="leading")
        ref.set_timesteps(S)
        assert sched.ddim_timesteps(S, spacing="leading").tolist() == ref.timesteps.tolist()
    # diffusers' float arange gives S + 1 timesteps, the last one -1, for some S: we keep the first S
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(61)
    assert sched.ddim_timesteps(61).tolist() == ref.timesteps.tolist()[:61] and sched.ddim_timesteps(61)[-1] >= 0


def test_ddim_timesteps_rejects_bad_arguments(sched):
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 1000\]"):
        sched.ddim_timesteps(0)
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 1000\]"):
        sched.ddim_timesteps(1001)
    with pytest.raises(ValueError, match="spacing must be 'trailing' or 'leading'"):
        sched.ddim_timesteps(10, spacing="linspace")


# ----------------------------------------------------------------------------- DPM-Solver++(2M)


def test_dpmpp_first_order_is_ddim(sched):
    x, eps = x_init(), x_init(seed=1)
    torch.testing.assert_close(sched.dpmpp_2m_step(eps, 999, 979, x).prev_sample, sched.ddim_step(eps, 999, 979, x).prev_sample)
    out = sched.dpmpp_2m_step(eps, 19, -1, x, last_x0=x, last_t=39)  # last step: first order, exactly x0_hat
    assert torch.equal(out.prev_sample, out.pred_original_sample)


def test_dpmpp_second_order_reduces_to_first_order_for_constant_x0(sched):
    """D1 is the x0_hat difference between steps: with an unchanged x0_hat the 2M step is the DDIM step."""
    x, eps = x_init(), x_init(seed=1)
    x0 = sched.predict_x0(eps, 979, x)
    two = sched.dpmpp_2m_step(eps, 979, 959, x, last_x0=x0, last_t=999)
    one = sched.dpmpp_2m_step(eps, 979, 959, x)
    torch.testing.assert_close(two.prev_sample, one.prev_sample)


# ----------------------------------------------------------------------------- parity with diffusers


def run_ddpm(step, timesteps, seed=1):
    g, x = torch.Generator().manual_seed(seed), x_init()
    for t in timesteps:
        x = step(eps_fn(x, t), t, x, generator=g).prev_sample
    return x


def float64_schedule(ref):
    """Give a diffusers scheduler our (float64-computed) alphas_cumprod instead of its float32 cumprod."""
    ref.alphas_cumprod = torch.tensor(ABAR64)
    return ref


@pytest.mark.parametrize("exact", [True, False], ids=["f64-abar", "stock"])
def test_ddpm_loop_matches_diffusers(sched, diffusers, exact):
    ref = diffusers.DDPMScheduler(beta_schedule="linear", variance_type="fixed_large", clip_sample=False)
    ref = float64_schedule(ref) if exact else ref
    ts = list(range(T - 1, -1, -1))
    assert ref.timesteps.tolist() == ts
    ours, theirs = run_ddpm(sched.ddpm_step, ts), run_ddpm(ref.step, ts)
    # stock diffusers drifts by ~3e-5 over 1000 steps: its abar is a float32 cumprod
    torch.testing.assert_close(ours, theirs, atol=1e-5 if exact else 1e-4, rtol=0)
    assert ours.abs().max() < 5  # a sane sample, not a clipped or exploded one


@pytest.mark.parametrize("exact", [True, False], ids=["f64-abar", "stock"])
@pytest.mark.parametrize("S, eta", [(10, 0.0), (50, 0.0), (50, 1.0), (30, 0.5), (1000, 1.0)])
def test_ddim_loop_matches_diffusers(sched, diffusers, S, eta, exact):
    ref = diffusers.DDIMScheduler(beta_schedule="linear", timestep_spacing="trailing", clip_sample=False)
    ref = float64_schedule(ref) if exact else ref
    ref.set_timesteps(S)
    ts = sched.ddim_timesteps(S).tolist()
    assert ts == ref.timesteps.tolist()
    # diffusers' DDIM steps to t - T // S; that is the next listed timestep only when S divides T
    prev = {t: max(t - T // S, -1) for t in ts}
    if T % S == 0:
        assert [prev[t] for t in ts] == ts[1:] + [-1]
    ours = run_ddpm(lambda e, t, x, generator: sched.ddim_step(e, t, prev[t], x, eta=eta, generator=generator), ts)
    theirs = run_ddpm(lambda e, t, x, generator: ref.step(e, t, x, eta=eta, generator=generator), ts)
    torch.testing.assert_close(ours, theirs, atol=1e-5 if exact or S < 1000 else 1e-4, rtol=0)


@pytest.mark.parametrize("exact", [True, False], ids=["f64-abar", "stock"])
@pytest.mark.parametrize("S", [5, 10, 20, 50])
def test_dpmpp_2m_loop_matches_diffusers(sched, diffusers, S, exact):
    ref = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, timestep_spacing="trailing", thresholding=False,
    )
    assert ref.config.final_sigmas_type == "zero"  # the default we match: the last step lands on x0_hat
    ref = float64_schedule(ref) if exact else ref
    ref.set_timesteps(S)
    ts = sched.ddim_timesteps(S).tolist()
    assert ts == ref.timesteps.tolist()
    x_ours = x_theirs = x_init()
    last_x0 = last_t = None
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x_theirs = ref.step(eps_fn(x_theirs, t), t, x_theirs).prev_sample
        out = sched.dpmpp_2m_step(eps_fn(x_ours, t), t, t_prev, x_ours, last_x0, last_t)
        x_ours, last_x0, last_t = out.prev_sample, out.pred_original_sample, t
    torch.testing.assert_close(x_ours, x_theirs, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- arguments


def test_steps_reject_bad_arguments(sched):
    x, eps = x_init(), x_init(seed=1)
    with pytest.raises(ValueError, match=r"t must be in \[0, 999\], got 1000"):
        sched.ddpm_step(eps, 1000, x)
    with pytest.raises(ValueError, match="t must be an int timestep"):
        sched.ddpm_step(eps, 1.5, x)
    with pytest.raises(ValueError, match="eps and x_t must have the same shape"):
        sched.ddpm_step(eps[:, :3], 5, x)
    with pytest.raises(ValueError, match="either generator or noise, not both"):
        sched.ddpm_step(eps, 5, x, generator=torch.Generator(), noise=eps)
    with pytest.raises(ValueError, match="noise must have the sample's shape"):
        sched.ddpm_step(eps, 5, x, noise=eps[:2])
    with pytest.raises(ValueError, match="t_prev must be smaller than t"):
        sched.ddim_step(eps, 5, 5, x)
    with pytest.raises(ValueError, match=r"t_prev must be in \[-1, 999\]"):
        sched.ddim_step(eps, 5, -2, x)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sched.ddim_step(eps, 5, 4, x, eta=-1.0)
    with pytest.raises(ValueError, match="last_x0 and last_t together"):
        sched.dpmpp_2m_step(eps, 5, 4, x, last_x0=x)
    with pytest.raises(ValueError, match="last_t must be larger"):
        sched.dpmpp_2m_step(eps, 5, 4, x, last_x0=x, last_t=5)


def test_steps_accept_tensor_timesteps_and_keep_dtype(sched):
    x, eps = x_init().double(), x_init(seed=1).double()
    out = sched.ddim_step(eps, torch.tensor(500), torch.tensor(480), x)
    assert out.prev_sample.dtype == torch.float64
    torch.testing.assert_close(out.prev_sample, sched.ddim_step(eps, 500, 480, x).prev_sample)
