"""User-facing errors.

A `CemError` is a problem with the user's input (params, files, checkpoints) rather than a bug:
the CLI prints its message as one line and exits non-zero, without a traceback.
"""


class CemError(Exception):
    """Bad input the user can fix; `exit_code` 2 means bad params/usage, 1 anything else."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ParamsError(CemError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class DivergenceError(CemError):
    """Training produced a non-finite loss."""
