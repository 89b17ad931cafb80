"""Where a study lives. The sweeper and every job (which reports its intermediate values) open it the same way.

`hydra.sweeper.storage`:
  null (default)                 a journal file, <sweep folder>/optuna.journal: append-only with a file lock, safe
                                 on the shared file systems SLURM jobs write to
  path/to/study.journal          a journal file elsewhere (also `journal:///abs/path`)
  sqlite:///x.db, postgresql://user@host/db, mysql+pymysql://...   any SQLAlchemy URL (Optuna's RDB storage)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sft_exp.errors import ConfigError

JOURNAL_FILE = "optuna.journal"


def resolve(storage: Optional[str], sweep_dir: Path) -> str:
    """The storage as one absolute string every process can open (a journal path or an RDB URL)."""
    if not storage:
        return f"journal:{(Path(sweep_dir) / JOURNAL_FILE).resolve()}"
    storage = str(storage)
    if storage.startswith("journal:"):
        path = storage[len("journal:") :]
        path = path[2:] if path.startswith("//") else path
        return f"journal:{Path(path).resolve()}"
    if "://" not in storage:
        return f"journal:{Path(storage).resolve()}"
    return storage


def open_storage(url: str):
    """An Optuna storage for a resolve()d string; a storage that cannot be opened is a ConfigError naming it."""
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _open_rdb(url)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"hydra.sweeper.storage={redacted(url)} cannot be opened: {type(e).__name__}: {first}. Give a "
            "writable journal file path (or null for <sweep folder>/optuna.journal) or a reachable database URL "
            "(sqlite:///study.db, postgresql://user@host:5432/db; the driver must be installed, e.g. pip install 'psycopg[binary]')."
        ) from None


def _open_rdb(url: str, attempts: int = 5):
    """Optuna's RDB storage, connected now (a wrong host or password fails before any job). Two sweepers
    starting at once on a fresh database race to create its tables: the loser retries and finds them."""
    import time

    import optuna

    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
            storage.get_all_studies()
            return storage
        except Exception as e:
            if "already exists" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)


def redacted(url: str) -> str:
    """A database URL without its password (it ends up in logs and error messages)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def dashboard_argument(url: str) -> str:
    """What `optuna-dashboard <argument>` takes for this storage."""
    return url[len("journal:") :] if url.startswith("journal:") else redacted(url)
