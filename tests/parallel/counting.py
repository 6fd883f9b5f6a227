"""What one rank did per denoising step, counted from outside the code under test: fused DiT forwards
(a forward hook on the model) and collectives (the rank's CommStats, snapshotted at each step's end)."""

from __future__ import annotations


class StepCounter:
    """Attach to a RankEngine (or an Engine); pass `progress` to its generate(). `forwards_per_step` lists,
    per denoising step, how many times the DiT ran on this rank. As a context manager it detaches at exit."""

    def __init__(self, rank_engine):
        self.forwards_per_step: list[int] = []
        self._forwards = 0
        self._hook = rank_engine.model.register_forward_hook(self._count)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._hook.remove()  # a shared engine (a module fixture) must not keep counting for other tests

    def _count(self, module, args, output):
        self._forwards += 1

    def progress(self, step, total, info):
        self.forwards_per_step.append(self._forwards)
        self._forwards = 0
