"""Errors that the CLI turns into a one-line message and an exit code.

``InputError`` is the user's input being wrong (corrupt, truncated, inconsistent, unsupported):
exit code 2. Anything else escaping to the CLI is a bug in medseg: exit code 1.
"""

from __future__ import annotations

import os


class MedsegError(Exception):
    """Base class of medseg's own errors."""

    exit_code = 1


class InputError(MedsegError, ValueError):
    """Bad input or usage: the message is one line that names the file and the problem.

    Examples
    --------
    >>> err = InputError("truncated gzip stream", path="/data/case.nii.gz")
    >>> str(err)
    '/data/case.nii.gz: truncated gzip stream'
    """

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(message).split())  # one line, always
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


class PeerRefused(InputError):
    """Under torchrun: another rank refused the input, and this rank stopped with it, without an error of its own.

    Examples
    --------
    >>> str(PeerRefused(0, "case.nii.gz: label values [5] are not in the plan"))
    'stopped: rank 0 refused the input: case.nii.gz: label values [5] are not in the plan'
    """

    def __init__(self, rank: int, message: str):
        self.rank, self.message = rank, message
        super().__init__(f"stopped: rank {rank} refused the input: {message}")
