"""Errors that the CLI reports as one line and a non-zero exit, without a traceback."""


class GalaxyEdgeError(Exception):
    """Bad input or a missing resource: the message names the file and the reason."""

    exit_code = 2


class MissingDependencyError(GalaxyEdgeError):
    """An optional package is needed for this verb but is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: install it with "
            f"`pip install -e .[{extra}]` (or `make test`, which installs everything)"
        )
