"""Ovi Workbench: Ovi's fusion model, pipeline, parallel engine, queue and UI."""

from ovi.version import __version__  # noqa: F401 (re-exported)


def __getattr__(name):
    # Lazy: `import ovi` stays cheap (the queue and CLI need not import torch).
    if name == "load_config":
        from ovi.config import load_config
        return load_config
    if name == "OviConfig":
        from ovi.config import OviConfig
        return OviConfig
    if name == "GenerateRequest":
        from ovi.request import GenerateRequest
        return GenerateRequest
    if name == "Engine":
        from ovi.pipeline.engine import Engine
        return Engine
    raise AttributeError(f"module 'ovi' has no attribute {name!r}")
