"""The two failure kinds a stage reports, mapped to exit codes (0 ok, 2 bad input, 3 transient failure)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 3


class StageError(Exception):
    exit_code = EXIT_BAD_INPUT


class BadInput(StageError):
    """Input that will never work as given (bad flag, invalid update, missing object, permission denied)."""

    exit_code = EXIT_BAD_INPUT


class TransientFailure(StageError):
    """The store stayed unreachable or kept failing for the whole retry budget."""

    exit_code = EXIT_TRANSIENT


class InvalidModel(BadInput):
    """A model file that does not fit the model (tensor names/shapes) or holds NaN/Inf."""
