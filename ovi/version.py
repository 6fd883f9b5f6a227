"""The package version, in a leaf module: code inside ovi imports it from here, never from ovi/__init__ (which
sits above every layer)."""

__version__ = "0.1.0"  # the one place; ovi/__init__ re-exports it (a leaf: anything may import it)
