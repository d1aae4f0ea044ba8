"""Where the MLflow store is, how runs are named in it, and whether a server answers.

Nothing here imports MLflow.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SQLITE = "sqlite:///"


def default_tracking_uri(launch_dir: Path) -> str:
    """An absolute SQLite URI, so every job of a sweep writes to the same store."""
    return f"{SQLITE}{(launch_dir / 'mlflow.db').resolve()}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite store; None for a server or another database."""
    return Path(tracking_uri.removeprefix(SQLITE)) if tracking_uri.startswith(SQLITE) else None


def missing_store_error(tracking_uri: str) -> str | None:
    """For the read-only tools: a one-line reason when a local store does not exist yet."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        return (
            f"no MLflow store at {tracking_uri}; "
            "run `python -m runner` here first, or pass --tracking-uri"
        )
    return None


def redact(uri: str) -> str:
    """The URI without a user:password@ part (the runner refuses them; other tools may see one)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}"))


def run_name(overrides: list[str]) -> str:
    """What a run tried (`optimizer=sgd,lr=0.05`), short: without where it was logged to or
    how the sweep searched, and a sampled 0.012345678901234567 as 0.01235 (params keep all)."""
    skipped = ("mlflow.", "hydra", "search=")
    what = [_short(o) for o in overrides if not o.lstrip("+~").startswith(skipped)]
    return ",".join(what) or "defaults"


def _short(override: str) -> str:
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    if len(value) <= 8 or value.lstrip("+-").isdigit():
        return override  # as typed
    return f"{key}={number:.4g}"


def server_problem(tracking_uri: str, timeout: float = 5.0) -> str | None:
    """For an http(s) tracking URI: why its server does not answer, or None when it does."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError as err:  # it answers, if not on /health: let MLflow judge
        return None if err.code < 500 else f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
