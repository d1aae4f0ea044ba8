"""Where the MLflow store is, how runs are named in it, and whether a server answers.

Nothing here imports MLflow.
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from pathlib import Path

SQLITE = "sqlite:///"


def default_tracking_uri(launch_dir: Path) -> str:
    """An absolute SQLite URI, so every job of a sweep writes to the same store."""
    return f"{SQLITE}{(launch_dir / 'mlflow.db').resolve()}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite store; None for a server or another database."""
    return Path(tracking_uri.removeprefix(SQLITE)) if tracking_uri.startswith(SQLITE) else None


def sqlite_tables(path: Path) -> set[str]:
    """The tables of an existing SQLite file, read-only (nothing is created or locked for
    long); empty for a new or unreadable file."""
    import sqlite3

    if not path.is_file():
        return set()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return set()
    return {name for (name,) in rows}


OPTUNA_TABLES = {"studies", "trials"}  # what marks a file as an Optuna study, not MLflow's
MLFLOW_TABLES = {"experiments", "runs"}


def missing_store_error(tracking_uri: str) -> str | None:
    """For the tools (compare, cleanup, dashboard): a one-line reason when their store
    cannot be read: a password in its URL, a local store that does not exist yet, a server
    that does not answer within seconds."""
    if problem := password_problem(tracking_uri, "tracking"):
        return f"--tracking-uri={redact(tracking_uri)} is not allowed: {problem}"
    if problem := server_problem(tracking_uri):
        where = f"no MLflow server answers at {tracking_uri} ({problem})"
        return f"{where}; start one, or pass --tracking-uri"
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        return (
            f"no MLflow store at {tracking_uri}; "
            "run `python -m runner` here first, or pass --tracking-uri"
        )
    return None


# Where each kind of URL the runner reads takes a password from, instead of the URL.
PASSWORD_FROM = {
    "tracking": "MLflow reads them from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
    "or a token from MLFLOW_TRACKING_TOKEN",
    "storage": "PostgreSQL reads PGPASSWORD or ~/.pgpass, MySQL ~/.my.cnf",
}


def password_problem(url: str, kind: str) -> str | None:
    """The one rule for every URL the runner reads (the tracking URI, a study's storage,
    the tools' --tracking-uri): a password in it is refused, since a URL is shown in
    messages, logged and stored in tags. `kind` is a key of PASSWORD_FROM."""
    _, sep, rest = url.partition("://")
    if sep and ":" in rest.rpartition("@")[0]:  # user:password@host, whatever it holds
        return f"a URL without user:password ({PASSWORD_FROM[kind]})"
    return None


def redact(uri: str) -> str:
    """The URI without a user:password@ part (the runner refuses them; other tools may see one)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest:
        return uri
    return f"{scheme}://***@{rest.rpartition('@')[2]}"  # all before the last @ may be secret


def redact_text(text: str) -> str:
    """A command line (or any text) with every URL's user:password@ part hidden."""
    return re.sub(r"([A-Za-z][\w+.-]*://)\S*@", r"\1***@", text)


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
