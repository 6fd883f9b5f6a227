"""The workbench in JupyterLab (ipywidgets 8): `Studio(...)` shows the generation form, the queue,
the gallery and the engine panel in one cell. This package imports ovi; ovi never imports it."""

from widgets.studio import Studio

__all__ = ["Studio"]
