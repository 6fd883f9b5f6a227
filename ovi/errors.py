"""Error types shared by the library, the CLI and the UI.

`InputError` is bad input from the user (a config key, a path, a shape): the CLI maps it to exit
code 2 and prints its message as the one-line reason, so messages must name what to fix.
"""


class InputError(ValueError):
    """Bad input: the message names the offending key/path/shape and the fix."""


class ConfigError(InputError):
    """A configuration key or value is invalid."""


class CheckpointError(InputError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


class NotAvailableError(InputError):
    """A documented option that this build cannot run yet (the message says what it waits for)."""


class LoRAError(InputError):
    """A LoRA file cannot be applied to this model (format, names, shapes, rank, base model)."""
