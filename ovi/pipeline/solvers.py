"""Flow-matching solvers, built on diffusers schedulers and set up to reproduce upstream Ovi's grids.

Flow convention (Ovi/Wan): x_t = (1 - σ) x0 + σ ε, the model predicts v = ε - x0, so x0 = x_t - σ v.
Upstream builds every scheduler with num_train_timesteps=1000 and shift=1 and applies the real shift
when it sets the timesteps:

- "unipc" (default): Wan's FlowUniPC, order 2, bh2, x0-prediction, final σ = 0, on the grid
  σ = linspace(0.999, 0, N+1)[:N] shifted by σ' = sσ / (1 + (s-1)σ). diffusers' UniPC with flow sigmas
  reproduces it exactly when given the *unshifted* grid (it applies the shift itself).
- "dpm++": Wan's FlowDPM-Solver++ (order 2, midpoint) on `get_sampling_sigmas`: σ = linspace(1, 0, N+1)[:N]
  shifted. diffusers' DPMSolverMultistepScheduler has the same update, but its `set_timesteps` takes no
  custom sigmas, so we install the upstream grid on it after `set_timesteps` (same length, state reset).
- "euler": diffusers' FlowMatchEulerDiscreteScheduler(shift=s), the class upstream uses.

The model is fed int64 timesteps truncated from 1000σ' for unipc and dpm++ (as upstream), and the float
timesteps of the Euler scheduler for euler (upstream feeds those unrounded too).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from ovi.errors import ConfigError

SOLVER_NAMES = ("unipc", "dpm++", "euler")
NUM_TRAIN_TIMESTEPS = 1000
# Wan's UniPC grid starts at its training table's largest σ, 1 - 1/1000 stored in float32. Using the
# float32 value (0.99900001...) rather than 0.999 keeps the truncated timesteps identical to upstream's
# (e.g. 3 steps at shift 1: 999, 666, 333, not 999, 665, 332).
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Upstream's time shift σ' = sσ / (1 + (s-1)σ) (s > 1 spends more steps at high noise)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowSolver:
    """One modality's sampler: the timesteps to feed the model and a stateful `step()`.

    diffusers schedulers keep multistep history and a step counter, so video and audio each need their
    own instance, and `step()` must be called once per timestep, in order. The solver checks both.
    """

    def __init__(self, name: str, scheduler, steps: int, shift: float):
        self.name = name
        self.scheduler = scheduler
        self.steps = steps
        self.shift = shift
        self.scheduler.set_begin_index(0)
        self._index = 0

    @property
    def timesteps(self) -> torch.Tensor:
        """[steps] timesteps to feed the model (int64 for unipc/dpm++, float32 for euler)."""
        return self.scheduler.timesteps

    @property
    def sigmas(self) -> torch.Tensor:
        """[steps + 1] float32 noise levels, the last one 0."""
        return self.scheduler.sigmas

    @property
    def step_index(self) -> int:
        return self._index

    def step(self, velocity: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """Advance `sample` (at `timestep`) by one step using the model's `velocity` (v = ε - x0)."""
        if self._index >= self.steps:
            raise RuntimeError(f"{self.name} solver: all {self.steps} steps are done; make a new solver "
                               f"with make_solver() for the next sample")
        expected = self.timesteps[self._index]
        given = torch.as_tensor(timestep).flatten()[0]
        if float(given) != float(expected):
            raise RuntimeError(
                f"{self.name} solver: step() got timestep {float(given):g} but step {self._index} of "
                f"{self.steps} is at {float(expected):g}; call step() once per timestep, in order, with one "
                f"solver per modality")
        out = self.scheduler.step(velocity, expected, sample, return_dict=False)[0]
        self._index += 1
        return out

    def __repr__(self) -> str:
        return f"FlowSolver({self.name!r}, steps={self.steps}, shift={self.shift})"


def make_solver(name: str, steps: int, shift: float) -> FlowSolver:
    """A fresh solver `name` ("unipc" | "dpm++" | "euler") with `steps` steps and time shift `shift`."""
    if name not in SOLVER_NAMES:
        raise ConfigError(f"solver_name {name!r}: must be one of {', '.join(SOLVER_NAMES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sample_steps {steps!r}: must be an integer >= 1")
    if not shift > 0:
        raise ConfigError(f"shift {shift!r}: must be > 0 (upstream uses 5.0)")
    shift = float(shift)

    if name == "unipc":
        scheduler = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, solver_order=2, prediction_type="flow_prediction",
            predict_x0=True, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
            use_flow_sigmas=True, flow_shift=shift)
        # Unshifted Wan grid; diffusers applies the flow shift and appends the final σ = 0.
        scheduler.set_timesteps(sigmas=np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1])
    elif name == "dpm++":
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, solver_order=2, prediction_type="flow_prediction",
            algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
            final_sigmas_type="zero", use_flow_sigmas=True, flow_shift=shift)
        scheduler.set_timesteps(steps)  # resets the multistep state; the grid is replaced below
        sigmas = shift_sigmas(np.linspace(1.0, 0.0, steps + 1)[:steps], shift)  # upstream get_sampling_sigmas
        scheduler.timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
        scheduler.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
        scheduler.set_timesteps(steps)
    return FlowSolver(name, scheduler, steps, shift)
