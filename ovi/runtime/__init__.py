"""Runtime: the Runner (jobs → engine) and the WorkerGroup (persistent ranks).

Names resolve lazily so `import ovi.runtime` stays cheap (the queue must not need torch)."""


def __getattr__(name):
    if name == "Runner":
        from ovi.runtime.runner import Runner
        return Runner
    if name in ("WorkerGroup", "WorkerError"):
        from ovi.runtime import worker_group
        return getattr(worker_group, name)
    if name == "serve_torchrun":
        from ovi.runtime.torchrun import serve_torchrun
        return serve_torchrun
    raise AttributeError(f"module 'ovi.runtime' has no attribute {name!r}")
