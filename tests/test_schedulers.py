import math

import pytest
import torch

from vrcurve.errors import VRCurveError
from vrcurve.schedulers import (
    CosineScheduler,
    DiffusionScheduler,
    DiscreteBetaScheduler,
    LinearScheduler,
    from_description,
    get_scheduler,
)

SCHEDULERS = [LinearScheduler(), LinearScheduler(3.0), LinearScheduler(0.5), CosineScheduler(),
              DiffusionScheduler(), DiffusionScheduler(0.5, 10.0)]
IDS = ["linear", "linear-shift3", "linear-shift0.5", "cosine", "diffusion", "diffusion-0.5-10"]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_derivatives_match_autograd(sched):
    assert_derivatives_match_autograd(sched, torch.linspace(0.01, 0.99, 97, dtype=torch.float64), rtol=1e-10)


def assert_derivatives_match_autograd(sched, t, rtol):
    """a'_t and m'_t equal autograd's derivatives of a_t and m_t at t."""
    t = t.clone().requires_grad_(True)
    for f, df in ((sched.alpha, sched.d_alpha), (sched.sigma, sched.d_sigma)):
        (grad,) = torch.autograd.grad(f(t).sum(), t)
        torch.testing.assert_close(df(t.detach()), grad, rtol=rtol, atol=1e-12)


def _closed_form_h(sched, t):
    if isinstance(sched, LinearScheduler):
        sigma = 1 - t
        return 1 / (sigma * (1 + (sched.shift - 1) * sigma))
    if isinstance(sched, CosineScheduler):
        return math.pi / (2 * torch.cos(math.pi * t / 2))
    u = 1 - t
    B = sched.beta_min * u + 0.5 * (sched.beta_max - sched.beta_min) * u**2
    dB = -sched.beta_min - (sched.beta_max - sched.beta_min) * u
    return -dB * torch.exp(-B / 2) / (2 * (1 - torch.exp(-B)))


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_h_closed_form(sched):
    t = torch.linspace(0.005, 0.995, 199, dtype=torch.float64)
    torch.testing.assert_close(sched.h(t), _closed_form_h(sched, t), rtol=1e-10, atol=0)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_endpoints_have_no_nan(sched):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for fn in (sched.alpha, sched.sigma, sched.d_alpha, sched.d_sigma, sched.h, sched.s):
        assert not torch.isnan(fn(t)).any(), fn.__name__
    assert float(sched.sigma(t)[1]) == 0.0  # pure data at t = 1
    assert float(sched.s(t)[1]) == 0.0
    assert float(sched.h(t)[1]) == math.inf
    if not isinstance(sched, DiffusionScheduler):  # VP never reaches a = 0 exactly
        assert float(sched.alpha(t)[0]) == 0.0 and float(sched.s(t)[0]) == math.inf


def test_shifted_linear_is_the_sd3_time_shift():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = 3.0
    sigma = 1 - t
    torch.testing.assert_close(LinearScheduler(s).sigma(t), s * sigma / (1 + (s - 1) * sigma))
    torch.testing.assert_close(LinearScheduler(s).alpha(t) + LinearScheduler(s).sigma(t), torch.ones_like(t))


def test_vp_is_variance_preserving():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sched = DiffusionScheduler()
    torch.testing.assert_close(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t))


def test_get_scheduler_errors():
    with pytest.raises(VRCurveError, match="unknown scheduler 'lineer'"):
        get_scheduler("lineer")
    with pytest.raises(VRCurveError, match="--shift applies to the linear scheduler only"):
        get_scheduler("cosine", shift=3.0)
    with pytest.raises(VRCurveError, match="positive"):
        get_scheduler("linear", shift=-1.0)
    with pytest.raises(VRCurveError, match="beta_min < beta_max"):
        get_scheduler("diffusion", beta_min=5.0, beta_max=1.0)
    with pytest.raises(VRCurveError, match="needs --custom"):
        get_scheduler("custom")


DISCRETE = [get_scheduler("scaled_linear"), get_scheduler("ddpm_linear"),
            get_scheduler("scaled_linear", beta_min=0.001, beta_max=0.02)]
DISCRETE_IDS = ["scaled_linear", "ddpm_linear", "scaled_linear-0.001-0.02"]


def _alphas_cumprod(sched, dtype=torch.float64):
    """The discrete schedule from its definition: betas over N indices, alphas_cumprod = cumprod(1 - betas)."""
    N = sched.num_train_timesteps
    if sched.kind == "scaled_linear":
        betas = torch.linspace(sched.beta_start**0.5, sched.beta_end**0.5, N, dtype=dtype) ** 2
    else:
        betas = torch.linspace(sched.beta_start, sched.beta_end, N, dtype=dtype)
    return torch.cumprod(1 - betas, 0)


def _index_midpoints(N):
    """t_i = 1 - (i + 0.5) / N, the vrcurve time of discrete index i (the bin sample_indices maps to i)."""
    return 1 - (torch.arange(N, dtype=torch.float64) + 0.5) / N


@pytest.mark.parametrize("sched", DISCRETE, ids=DISCRETE_IDS)
def test_discrete_schedule_is_alphas_cumprod_at_each_index(sched):
    t = _index_midpoints(sched.num_train_timesteps)
    torch.testing.assert_close(sched.alpha(t) ** 2, _alphas_cumprod(sched), rtol=1e-9, atol=0)
    torch.testing.assert_close(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t))


def test_discrete_schedules_published_values():
    """The last alphas_cumprod of SD's scaled_linear schedule (0.00466) and of DDPM's linear one (4.04e-5)."""
    t_last = torch.tensor([0.5 / 1000], dtype=torch.float64)  # index 999
    assert float(get_scheduler("scaled_linear").alpha(t_last) ** 2) == pytest.approx(0.0046601, rel=1e-4)
    assert float(get_scheduler("ddpm_linear").alpha(t_last) ** 2) == pytest.approx(4.0358e-5, rel=1e-4)
    t_first = torch.tensor([1 - 0.5 / 1000], dtype=torch.float64)  # index 0: abar = 1 - beta_start
    assert float(get_scheduler("scaled_linear").sigma(t_first) ** 2) == pytest.approx(0.00085, rel=1e-6)


@pytest.mark.parametrize("beta_schedule, name", [("scaled_linear", "scaled_linear"), ("linear", "ddpm_linear")])
def test_discrete_schedule_matches_diffusers_ddpm_scheduler(beta_schedule, name):
    diffusers = pytest.importorskip("diffusers")
    sched = get_scheduler(name)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, beta_start=sched.beta_start,
                                  beta_end=sched.beta_end).alphas_cumprod.double()
    # diffusers computes in float32: agreement to float32 round-off over 1000 products
    torch.testing.assert_close(sched.alpha(_index_midpoints(1000)) ** 2, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("sched", DISCRETE, ids=DISCRETE_IDS)
def test_discrete_derivatives_match_autograd_and_h_is_vp(sched):
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    assert_derivatives_match_autograd(sched, t, rtol=1e-9)
    a, m, da, dm = sched.alpha(t), sched.sigma(t), sched.d_alpha(t), sched.d_sigma(t)
    torch.testing.assert_close(sched.h(t), da - a * dm / m, rtol=1e-10, atol=0)
    assert (da > 0).all() and torch.isfinite(sched.h(t)).all()
    # DDPM never reaches clean data: m > 0 at t = 1, abar is 1 only at index -1 (half an index beyond t = 1)
    assert float(m[-1]) > 0 and float(sched.alpha(torch.tensor([1 + 0.5 / 1000], dtype=torch.float64))) == 1.0


def test_discrete_schedule_errors_and_defaults():
    assert get_scheduler("scaled_linear") == DiscreteBetaScheduler("scaled_linear", 0.00085, 0.012, 1000)
    assert get_scheduler("ddpm_linear") == DiscreteBetaScheduler("ddpm_linear", 0.0001, 0.02, 1000)
    assert get_scheduler("diffusion") == DiffusionScheduler(0.1, 20.0)
    with pytest.raises(VRCurveError, match="0 < beta_start < beta_end < 1"):
        get_scheduler("scaled_linear", beta_min=0.1, beta_max=20.0)
    with pytest.raises(VRCurveError, match="--beta-min/--beta-max apply to diffusion, scaled_linear"):
        get_scheduler("linear", beta_min=0.1)
    with pytest.raises(VRCurveError, match="--shift applies to the linear scheduler only"):
        get_scheduler("scaled_linear", shift=3.0)


@pytest.mark.parametrize("sched", SCHEDULERS + DISCRETE, ids=IDS + DISCRETE_IDS)
def test_description_round_trip(sched):
    assert from_description(sched.describe()) == sched


CUSTOM_MODULE = '''
import torch
from dataclasses import dataclass

class Methods:
    def alpha(self, t): return t
    def sigma(self, t): return 1 - t
    def d_alpha(self, t): return torch.ones_like(t)
    def d_sigma(self, t): return -torch.ones_like(t)

@dataclass
class Out:
    alpha_t: torch.Tensor
    sigma_t: torch.Tensor
    d_alpha_t: torch.Tensor
    d_sigma_t: torch.Tensor

class FlowMatchingStyle:
    """facebookresearch/flow_matching convention: scheduler(t) -> SchedulerOutput."""
    def __call__(self, t):
        return Out(alpha_t=t, sigma_t=1 - t, d_alpha_t=torch.ones_like(t), d_sigma_t=-torch.ones_like(t))

instance = Methods()
not_a_scheduler = 3
'''


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    (tmp_path / "my_schedules.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_schedules"


@pytest.mark.parametrize("obj", ["Methods", "FlowMatchingStyle", "instance"])
def test_custom_scheduler_matches_linear(custom_module, obj):
    sched = get_scheduler("custom", custom=f"{custom_module}:{obj}")
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(sched.h(t), LinearScheduler().h(t))
    torch.testing.assert_close(sched.s(t), LinearScheduler().s(t))
    assert sched.describe() == {"name": "custom", "object": f"{custom_module}:{obj}"}
    assert get_scheduler(f"{custom_module}:{obj}").describe() == sched.describe()


def test_custom_scheduler_errors(custom_module):
    with pytest.raises(VRCurveError, match="not of the form module:object"):
        get_scheduler("custom", custom="no_colon")
    with pytest.raises(VRCurveError, match="cannot import module 'no_such_module_xyz'"):
        get_scheduler("custom", custom="no_such_module_xyz:X")
    with pytest.raises(VRCurveError, match="has no attribute 'Missing'"):
        get_scheduler("custom", custom=f"{custom_module}:Missing")
    with pytest.raises(VRCurveError, match="neither a scheduler"):
        get_scheduler("custom", custom=f"{custom_module}:not_a_scheduler")


def test_sample_indices_draws_the_index_whose_alphas_cumprod_the_bin_holds():
    """With T = N bins, bin k (midpoint t_k) is index N - 1 - k in sample_indices, and the scheduler's abar at t_k
    is alphas_cumprod[N - 1 - k]: the curve at t_k is the curve of the index a DDPM trainer is given."""
    from vrcurve.density import density_from_curve
    from vrcurve.distribution import VRDistribution

    N, sched = 1000, get_scheduler("scaled_linear")
    for k in (0, 137, 999):
        v = torch.zeros(N, dtype=torch.float64)
        v[k] = 1.0
        d = density_from_curve(v.numpy(), uniform_mix=0.0)
        idx = VRDistribution(d.pdf, d.cdf, d.icdf).sample_indices(500, N, generator=torch.Generator().manual_seed(k))
        assert set(idx.tolist()) == {N - 1 - k}
        t_k = torch.tensor([(k + 0.5) / N], dtype=torch.float64)
        assert float(sched.alpha(t_k) ** 2) == pytest.approx(float(_alphas_cumprod(sched)[N - 1 - k]), rel=1e-9)
