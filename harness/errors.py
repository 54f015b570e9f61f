"""One exception tree for the harness.

Every error raised on bad user input is a ``HarnessError`` whose message names the input (config key,
file, URL) and what was expected, so the CLI can print it as one line and exit non-zero. ``details`` holds
longer evidence (a dead worker's last stderr lines) that ``result.json`` keeps beside the one-line message.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

# The password of a URL's user information (RFC 3986: scheme://user:password@host), also as Hydra prints an
# override (its colons escaped: scheme\://user\:password@host).
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*\\?://[^\s:/@\\]+\\?:)[^\s/@]+@")


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


class ConfigError(HarnessError):
    """A config value is unknown, malformed or inconsistent."""


class WeightsError(HarnessError):
    """A checkpoint is missing, unsafe, corrupt or does not fit the model."""


class DownloadError(HarnessError):
    """A download failed, was truncated, or does not match its checksum."""


class BuildError(HarnessError):
    """An artifact could not be built, or failed its parity check."""


class BackendUnavailable(HarnessError):
    """A backend, execution provider or device the config asks for is not installed here."""


class ToolError(HarnessError):
    """An external tool (a vendor compiler or profiler) exited non-zero, timed out, or printed what it should not."""


class DataError(HarnessError):
    """An image, ground-truth file or descriptor matrix is corrupt or malformed."""


class MeasurementInvalid(HarnessError):
    """A measurement does not meet its validity rules."""


class TrackingError(HarnessError):
    """The experiment tracker could not be reached or refused a write."""


def as_written(value: object) -> str:
    """A value in a ``key=value`` message: ``null``, ``true`` and ``false`` as YAML and Hydra overrides spell them
    (Python's ``None`` is not what the user typed), anything else as its ``repr`` (a string keeps its quotes)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def unknown_name_message(key: str, value: object, known: object) -> str:
    """One-line message for an unknown name: the allowed names and the closest one (``difflib``)."""
    names = sorted(str(name) for name in known)  # type: ignore[attr-defined]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}={as_written(value)}: expected one of {names}{hint}"


def unknown_key_message(dotted_key: str, name: str, known: object) -> str:
    """One-line message for a config key that the schema does not have."""
    names = sorted(str(known_name) for known_name in known)  # type: ignore[attr-defined]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{dotted_key}: unknown key (known: {names}){hint}"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` with its noun in the number it needs: ``1 run``, ``2 runs``, ``1 query``, ``3 queries``."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def named(labels: list[str], *, among: int, noun: str = "runs") -> str:
    """``labels`` joined, or ``"all N <noun>"`` where they are every one of ``among`` and more than two."""
    return f"all {among} {noun}" if len(labels) == among > 2 else ", ".join(labels)


def unwritable_reason(path: Path, error: OSError, *, folder: bool = False) -> str:
    """Why ``path`` (a file, or a ``folder``) could not be written, in words: what is in the way where the system
    says only "File exists" or "Not a directory", else its own reason."""
    if folder and path.is_file():
        return "a file, not a folder"
    if not folder and path.is_dir():
        return "a folder: give the file to write"
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return error.strerror or str(error)


def masked(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (``postgresql://me:***@db/mlflow``): what
    the harness prints, logs, records in ``result.json`` or sends to MLflow of a store's address or of the
    overrides naming it, so that a password reaches no terminal, CI log, param or artifact."""
    return URL_PASSWORD.sub(r"\1***@", text)
