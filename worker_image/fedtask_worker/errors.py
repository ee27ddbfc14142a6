"""The two failure kinds a stage reports, mapped to exit codes (0 ok, 2 bad input, 3 transient failure)."""
from __future__ import annotations

import errno

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


# The machine, not an input, ran out: such an error fails the stage (and is retried), it never rejects an update.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT}


def is_resource_exhaustion(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in _EXHAUSTED)
