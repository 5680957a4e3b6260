import math

import pytest
import torch

from vrcurve.errors import VRCurveError
from vrcurve.schedulers import (
    CosineScheduler,
    DiffusionScheduler,
    LinearScheduler,
    from_description,
    get_scheduler,
)

SCHEDULERS = [LinearScheduler(), LinearScheduler(3.0), LinearScheduler(0.5), CosineScheduler(),
              DiffusionScheduler(), DiffusionScheduler(0.5, 10.0)]
IDS = ["linear", "linear-shift3", "linear-shift0.5", "cosine", "diffusion", "diffusion-0.5-10"]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_derivatives_match_autograd(sched):
    t = torch.linspace(0.01, 0.99, 97, dtype=torch.float64, requires_grad=True)
    for f, df in ((sched.alpha, sched.d_alpha), (sched.sigma, sched.d_sigma)):
        (grad,) = torch.autograd.grad(f(t).sum(), t)
        torch.testing.assert_close(df(t.detach()), grad, rtol=1e-10, atol=1e-12)


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


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
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
