"""ovi.pipeline.solvers: upstream grids, exact flow integration, and UniPC / DPM++ updates checked
against independent float64 implementations written from the papers' formulas."""

import numpy as np
import pytest
import torch

from ovi.errors import ConfigError
from ovi.pipeline.solvers import make_solver

SHIFT = 5.0


def wan_unipc_grid(n, s):
    """Wan/Ovi FlowUniPC: σ = linspace(0.999, 0, N+1)[:N], σ' = sσ/(1+(s-1)σ), t = int64(1000σ')."""
    sigma = np.linspace(0.999, 0, n + 1)[:n]
    shifted = s * sigma / (1 + (s - 1) * sigma)
    return shifted, (shifted * 1000).astype(np.int64)


@pytest.mark.parametrize("n", [50, 4])
def test_unipc_grid_is_wans(n):
    sigmas, timesteps = wan_unipc_grid(n, SHIFT)
    solver = make_solver("unipc", n, SHIFT)
    assert solver.timesteps.dtype == torch.int64
    assert solver.timesteps.tolist() == timesteps.tolist()
    assert solver.sigmas.dtype == torch.float32 and len(solver.sigmas) == n + 1
    np.testing.assert_allclose(solver.sigmas[:-1].numpy(), sigmas, atol=1e-7)
    assert solver.sigmas[-1] == 0


def test_unipc_grid_matches_documented_upstream_numbers():
    t50 = make_solver("unipc", 50, SHIFT).timesteps.tolist()
    assert t50[:3] == [999, 995, 991] and t50[-3:] == [241, 172, 92]
    assert make_solver("unipc", 4, SHIFT).timesteps.tolist() == [999, 937, 833, 624]
    # Wan's largest σ is float32(0.999); truncation then gives 666 and 333, not 665 and 332
    assert make_solver("unipc", 3, 1.0).timesteps.tolist() == [999, 666, 333]


@pytest.mark.parametrize("n", [50, 4, 1])
def test_dpm_grid_is_upstream_get_sampling_sigmas(n):
    sigma = np.linspace(1, 0, n + 1)[:n]
    sigma = SHIFT * sigma / (1 + (SHIFT - 1) * sigma)
    solver = make_solver("dpm++", n, SHIFT)
    assert solver.timesteps.tolist() == (sigma * 1000).astype(np.int64).tolist()
    assert solver.timesteps[0] == 1000
    np.testing.assert_allclose(solver.sigmas.numpy(), np.append(sigma, 0), atol=1e-7)


def test_euler_grid_is_diffusers_flow_match_euler():
    solver = make_solver("euler", 50, SHIFT)
    assert solver.timesteps.dtype == torch.float32  # upstream feeds the float timesteps
    assert solver.timesteps[0] == 1000.0 and solver.sigmas[-1] == 0
    np.testing.assert_allclose(solver.timesteps[:3].numpy(), [1000.0, 995.87, 991.60], atol=0.01)
    assert float(solver.sigmas[-2]) == pytest.approx(0.0244, abs=1e-4)


@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
@pytest.mark.parametrize("n", [1, 4, 50])
def test_exact_velocity_lands_on_x0(name, n):
    """With the true velocity of a straight path (v = ε - x0, i.e. (x - x0)/σ), every solver must
    end exactly at x0."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    solver = make_solver(name, n, SHIFT)
    sigma0 = float(solver.sigmas[0])
    x = (1 - sigma0) * x0 + sigma0 * eps
    for i, t in enumerate(solver.timesteps):
        sigma = float(solver.sigmas[i])
        assert torch.allclose(x, (1 - sigma) * x0 + sigma * eps, atol=1e-5)  # stays on the path
        x = solver.step((x - x0) / sigma, t, x)
    assert torch.allclose(x, x0, atol=1e-5)


def field(x, t):
    """A nonlinear velocity field for comparing update rules."""
    s = t / 1000.0
    return np.sin(3 * x) + 0.5 * (1 + s) * x - np.cos(x * s)


def reference_unipc_bh2(x, sigmas, timesteps):
    """UniPC (Zhao et al. 2023), B(h) = e^h - 1 ("bh2"), order 2, data prediction, flow
    parametrisation α = 1 - σ; first and last steps first order; corrector after every model call
    except the first. Written in float64 from the paper, independently of diffusers."""
    sig = np.asarray(sigmas, dtype=np.float64)
    with np.errstate(divide="ignore"):
        lam = np.log(1 - sig) - np.log(sig)  # +inf at σ = 0
    n = len(timesteps)
    x0s, last_x, last_order = [], None, None
    for k in range(n):
        x0 = x - sig[k] * field(x, float(timesteps[k]))
        if k > 0:  # UniC: correct x_k using the new model output at σ_k
            h = lam[k] - lam[k - 1]
            phi = np.expm1(-h)
            base = sig[k] / sig[k - 1] * last_x - (1 - sig[k]) * phi * x0s[-1]
            if last_order == 1:
                x = base - (1 - sig[k]) * phi * 0.5 * (x0 - x0s[-1])
            else:
                r = (lam[k - 2] - lam[k - 1]) / h
                d1 = (x0s[-2] - x0s[-1]) / r
                p1 = phi / -h - 1
                p2 = p1 / -h - 0.5
                rho = np.linalg.solve([[1.0, 1.0], [r, 1.0]], [p1 / phi, 2 * p2 / phi])
                x = base - (1 - sig[k]) * phi * (rho[0] * d1 + rho[1] * (x0 - x0s[-1]))
        x0s.append(x0)
        order = 1 if k == 0 or k == n - 1 else 2
        last_x, last_order = x, order
        h = lam[k + 1] - lam[k]
        phi = np.expm1(-h)  # UniP: predict x_{k+1}
        x = sig[k + 1] / sig[k] * x - (1 - sig[k + 1]) * phi * x0s[-1]
        if order == 2:
            r = (lam[k - 1] - lam[k]) / h
            x = x - (1 - sig[k + 1]) * phi * 0.5 * (x0s[-2] - x0s[-1]) / r
    return x


def reference_dpmpp_2m(x, sigmas, timesteps):
    """DPM-Solver++(2M) (Lu et al. 2022), midpoint form, data prediction, flow parametrisation; first
    and last steps first order."""
    sig = np.asarray(sigmas, dtype=np.float64)
    with np.errstate(divide="ignore"):
        lam = np.log(1 - sig) - np.log(sig)  # -inf at σ = 1, +inf at σ = 0
    n = len(timesteps)
    x0s = []
    for k in range(n):
        x0s.append(x - sig[k] * field(x, float(timesteps[k])))
        h = lam[k + 1] - lam[k]
        phi = np.expm1(-h)
        x = sig[k + 1] / sig[k] * x - (1 - sig[k + 1]) * phi * x0s[-1]
        if 0 < k < n - 1:
            with np.errstate(invalid="ignore"):
                r = (lam[k] - lam[k - 1]) / h  # inf after a σ = 1 step: the correction vanishes
            x = x - 0.5 * (1 - sig[k + 1]) * phi * (x0s[-1] - x0s[-2]) / r
    return x


@pytest.mark.parametrize("name,reference", [("unipc", reference_unipc_bh2), ("dpm++", reference_dpmpp_2m)])
@pytest.mark.parametrize("n", [2, 4, 10, 50])
def test_update_matches_independent_reference_on_nonlinear_ode(name, reference, n):
    x_init = np.random.default_rng(1).standard_normal((3, 7))
    solver = make_solver(name, n, SHIFT)
    x = torch.from_numpy(x_init.copy())
    for t in solver.timesteps:
        x = solver.step(torch.from_numpy(field(x.numpy(), float(t))), t, x)
    expected = reference(x_init, solver.sigmas.numpy(), solver.timesteps.numpy())
    np.testing.assert_allclose(x.numpy(), expected, atol=2e-5, rtol=1e-5)
    if n < 4:
        return  # with 2 steps both are first order steps, i.e. Euler
    # and the update is not trivially first order: a plain Euler walk on the same grid differs
    euler = x_init.copy()
    sig = solver.sigmas.numpy().astype(np.float64)
    for k, t in enumerate(solver.timesteps.numpy()):
        euler = euler + (sig[k + 1] - sig[k]) * field(euler, float(t))
    assert np.abs(euler - expected).max() > 1e-3


def test_each_modality_needs_its_own_solver_and_steps_run_in_order():
    video, audio = make_solver("unipc", 4, SHIFT), make_solver("unipc", 4, SHIFT)
    xv, xa = torch.randn(1, 48, 2, 4, 4), torch.randn(1, 22, 20)
    t0 = video.timesteps[0]
    xv = video.step(torch.randn_like(xv), t0, xv)
    xa = audio.step(torch.randn_like(xa), t0, xa)  # its own state: still at step 0
    assert video.step_index == audio.step_index == 1
    with pytest.raises(RuntimeError, match="got timestep 999 but step 1 of 4 is at 937.*one solver per modality"):
        video.step(torch.randn_like(xv), t0, xv)
    for t in video.timesteps[1:]:
        xv = video.step(torch.randn_like(xv), torch.tensor([t]), xv)  # [1]-shaped timesteps are fine
    with pytest.raises(RuntimeError, match="all 4 steps are done"):
        video.step(torch.randn_like(xv), video.timesteps[-1], xv)


@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
def test_bf16_latents_stay_bf16_and_finite(name):
    solver = make_solver(name, 4, SHIFT)
    x = torch.randn(1, 8, 3, 4, 4, dtype=torch.bfloat16)
    for t in solver.timesteps:
        x = solver.step(torch.randn_like(x), t, x)
    assert x.dtype == torch.bfloat16 and torch.isfinite(x).all()


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="solver_name 'ddim': must be one of unipc, dpm\\+\\+, euler"):
        make_solver("ddim", 4, SHIFT)
    with pytest.raises(ConfigError, match="sample_steps 0"):
        make_solver("unipc", 0, SHIFT)
    with pytest.raises(ConfigError, match="shift 0"):
        make_solver("unipc", 4, 0)
