"""The tracking store, checked before any run: a server that answers, a SQLite file that takes writes,
and a new SQLite store's schema made so that nobody opening it at the same moment can break it.

MLflow creates a SQLite store's schema the first time any client opens it, through some 70
migrations that are not one transaction: two openers at once (the UI and a run, a notebook and a
run) can each run them and leave the store half-migrated for good (``_alembic_tmp_*`` tables, a
revision between two). So every opener takes a lock on ``<file>.lock`` first: tracker's processes
here, and every other MLflow process of the environment through the store plugin
(``tracker.recording.mlflow_plugin``). Under it a new store is built under a private name and linked
into place (never over a file another opener made), a store another process is migrating (one
without the plugin) is waited for, and one left half-migrated is rebuilt with every row it holds, in
place, the old file copied beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tracker.errors import TrackingServerError
from tracker.recording import spool

logger = logging.getLogger(__name__)

BOUNDED_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# MLflow's migrations of a new store take 3 to 5 s here, longer on a loaded machine: another
# opener's are waited for this long. A store whose schema is incomplete and that has not changed
# for SETTLED_S is nobody's migration any more: it was left half-way.
WAIT_S = 120.0
SETTLED_S = 15.0
STORE_REMEDY = "make it writable, free some space, or point MLFLOW_TRACKING_URI at another store"
_UNWRITABLE = ("readonly database", "read-only file system", "disk is full", "no space left on device",
               "unable to open database file", "disk i/o error", "permission denied")
_LEFTOVER = "_alembic_tmp_"  # alembic's copy of a table that a migration was rebuilding


def check_tracking_server(timeout_s: float = 5.0) -> str:
    """The tracking URI, after checking that a SQLite store takes writes or a server answers; says
    when runs spooled for this store wait for `tracker sync`."""
    import mlflow

    quiet_mlflow_telemetry()
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        prepare_sqlite_store(uri)
        if not plugin_registered():
            logger.warning("MLflow's store plugin is not registered in this environment (tracker run from a "
                           "source tree, or a checkout updated without installing it again): the MLflow UI "
                           "opening a new store at the same moment as a run can break it; run `pip install -e .`")
    if uri.startswith(("http://", "https://")):
        reason = unreachable(uri, timeout_s)
        if reason:
            raise TrackingServerError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                f"(mlflow server --host 127.0.0.1 --port 5000) or unset MLFLOW_TRACKING_URI to use "
                f"the local store")
        # MLflow retries a lost server for minutes by default: a few seconds, then the spool takes over.
        for name, value in BOUNDED_RETRIES.items():
            os.environ.setdefault(name, value)
    waiting = spool.pending(uri)
    if waiting:
        logger.warning("%d run(s) measured while this tracking store took no writes wait in %s: run `tracker sync`",
                       len(waiting), spool.spool_dir())
    return uri


def quiet_mlflow_telemetry() -> None:
    """Stop MLflow's telemetry thread before measuring, unless MLFLOW_DISABLE_TELEMETRY=false: it
    wakes through every window (all-MiniLM-L6-v2, 300 pairs: 9.9 to 10.9 s with it, 8.3 to 10.0 s
    without, three interleaved pairs). ``import tracker`` sets the variable before MLflow starts it;
    this also stops one started earlier, as in a notebook that imported mlflow first."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if os.environ["MLFLOW_DISABLE_TELEMETRY"].lower() != "true":
        return
    from mlflow.telemetry import get_telemetry_client, set_telemetry_client

    running = get_telemetry_client()
    if running is not None:
        running.flush(terminate=True)
        set_telemetry_client()  # disabled: sets it to None


def unreachable(uri: str, timeout_s: float = 3.0) -> str | None:
    """Why a remote tracking server does not answer, or None when it does."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered: reachable, whatever it thinks of /health
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
    return None


def prepare_sqlite_store(uri: str) -> None:
    """Open a SQLite store once, ready for runs: created if new, waited for while another process
    migrates it, rebuilt if it was left half-migrated; raises TrackingServerError in one line when
    it cannot be written or repaired."""
    from mlflow.tracking._model_registry.utils import _get_store as registry_store
    from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

    database = sqlite_path(uri)
    if database is None:
        return  # in memory: this process's alone
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        with schema_ready(database):
            pass
        # Built outside the lock: the store plugin (tracker.recording.mlflow_plugin) takes it again
        # for MLflow's own opening, where an older store is upgraded.
        tracking_store(uri)
        registry_store(uri)
    except TrackingServerError:
        raise
    except Exception as err:
        problem = store_unwritable(err)
        if not problem:
            raise
    else:
        problem = _write_probe(database)  # an existing store opens read-only without a word
    if problem:
        raise TrackingServerError(f"the MLflow store {uri} cannot be written ({problem}): {STORE_REMEDY}")


def plugin_registered() -> bool:
    """Whether MLflow opens SQLite stores through tracker's plugin here (its entry points installed)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    builder = _tracking_store_registry._registry.get("sqlite")
    return getattr(builder, "__module__", "") == "tracker.recording.mlflow_plugin"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store URI (relative to the working directory, as SQLite takes
    it), or None for an in-memory one."""
    path = uri.removeprefix("sqlite://").partition("?")[0]
    if path in ("", "/", "/:memory:"):
        return None
    return Path(path[1:]).expanduser()


@contextlib.contextmanager
def schema_ready(database: Path) -> Iterator[None]:
    """Hold the store's lock with its schema made: created if new, waited for while another
    process migrates it, rebuilt if it was left half-migrated. Whatever opens the store inside
    meets a whole schema, or an older whole one that MLflow upgrades while others wait."""
    with _tracker_lock(database):
        schema = _settled(database)
        if schema.empty:
            _create(database)
        elif not schema.whole and _half_migrated(database, schema):
            _rebuild(database, schema)
        yield


@contextlib.contextmanager
def _tracker_lock(database: Path) -> Iterator[None]:
    try:
        handle = open(database.with_name(database.name + ".lock"), "a")
    except OSError:  # a read-only folder: nothing can be migrated there, opening tells why
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@dataclass(frozen=True)
class Schema:
    """What a SQLite store file holds, read without MLflow: its tables, its alembic revision, and
    a signature that changes while anyone writes to it."""

    tables: frozenset[str]
    revision: str | None
    signature: tuple

    @classmethod
    def read(cls, database: Path) -> Schema:
        try:
            stat = database.stat()
        except FileNotFoundError:
            return cls(frozenset(), None, ("absent",))
        journal = database.with_name(database.name + "-journal").exists()
        try:
            with contextlib.closing(sqlite3.connect(_file_uri(database, "ro"), uri=True, timeout=1)) as db:
                tables = frozenset(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
                revision = (db.execute("SELECT version_num FROM alembic_version").fetchone() or [None])[0] \
                    if "alembic_version" in tables else None
        except sqlite3.OperationalError as err:  # locked by a writer: it is changing
            return cls(frozenset(), None, ("unreadable", str(err), time.monotonic()))
        return cls(tables, revision, (stat.st_size, stat.st_mtime_ns, journal, len(tables), revision))

    @property
    def empty(self) -> bool:
        return not self.tables and self.signature[0] in ("absent", 0)

    @property
    def leftovers(self) -> list[str]:
        return sorted(t for t in self.tables if t.startswith(_LEFTOVER))

    @property
    def whole(self) -> bool:
        """Every table MLflow expects, a revision, and nothing a migration left behind."""
        from mlflow.store.db.utils import Base

        return self.revision is not None and not self.leftovers and set(Base.metadata.tables) <= self.tables


def _file_uri(database: Path, mode: str) -> str:
    from urllib.parse import quote

    return f"file:{quote(str(database))}?mode={mode}"


def _shape(database: Path) -> dict[str, frozenset[str]]:
    """The columns of each table of a store (its alembic stamp left out)."""
    with contextlib.closing(sqlite3.connect(_file_uri(database, "ro"), uri=True, timeout=5)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: frozenset(r[1] for r in db.execute(f'PRAGMA table_info("{name}")'))
                for name in names if name != "alembic_version"}


def _half_migrated(database: Path, schema: Schema) -> bool:
    """Whether a store that is not whole was left between two revisions, rather than being an older
    store that MLflow upgrades: its tables are compared with a store built up to its revision."""
    if schema.leftovers or schema.revision is None:
        return True
    try:
        reference = _migrated_copy(database, schema.revision)
    except Exception:  # a revision this MLflow does not know (a newer MLflow's store): MLflow says so
        return False
    try:
        return _shape(database) != _shape(reference)
    finally:
        reference.unlink(missing_ok=True)


def _settled(database: Path) -> Schema:
    """The store's schema once nobody is migrating it: at once when it is whole or new; otherwise
    after it has stopped changing for SETTLED_S (another process's migration finished or died)."""
    deadline = time.monotonic() + WAIT_S
    last, since = None, time.monotonic()
    while True:
        schema = Schema.read(database)
        if schema.whole or schema.signature == ("absent",):
            return schema
        now = time.monotonic()
        if schema.signature != last:
            last, since = schema.signature, now
        elif now - since >= SETTLED_S:
            return schema
        if now > deadline:
            raise TrackingServerError(
                f"the MLflow store {database} is being created or upgraded by another process, still after "
                f"{WAIT_S:.0f} s: run the command again once that process (an MLflow UI, a notebook) is done")
        time.sleep(0.2)


def _create(database: Path) -> None:
    """A new store's schema, made by MLflow under a private name and then linked into place: an
    opener that comes meanwhile sees no store or a whole one, and one that came first keeps its
    own (the link never replaces a file that has content)."""
    private = _migrated_copy(database)
    try:
        try:
            os.link(private, database)
        except FileExistsError:
            if Schema.read(database).empty:  # an empty file nobody migrated: nothing to lose
                os.replace(private, database)
            else:
                _settled(database)  # another opener's store won: wait until it is whole
        except OSError:  # a filesystem without hard links: the same, less atomic
            if database.exists():
                _settled(database)
            else:
                os.replace(private, database)
    finally:
        private.unlink(missing_ok=True)


def _migrated_copy(database: Path, revision: str = "heads") -> Path:
    """A new store beside ``database``, under a name no other opener uses, made as MLflow makes one
    (its initial tables, then its migrations) up to ``revision``."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    private = database.with_name(f".{database.name}.new-{os.getpid()}")
    private.unlink(missing_ok=True)
    url = f"sqlite:///{private}"
    engine = sqlalchemy.create_engine(url)
    try:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except BaseException:
        private.unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    return private


def _rebuild(database: Path, schema: Schema) -> None:
    """Rebuild a store left half-migrated: a new one built up to the revision it had reached, every
    row of the old file copied in (MLflow then migrates it on, data and all, as any older store);
    the old file kept as ``<name>.broken-<time>``. Refused in one line, the file untouched, when a
    row or a filled column would have nowhere to go."""
    private = _migrated_copy(database, schema.revision or "heads")
    try:
        with contextlib.closing(sqlite3.connect(_file_uri(private, "rw"), uri=True)) as fresh:
            fresh.execute("ATTACH DATABASE ? AS old", (_file_uri(database, "ro"),))
            losses, copied = _copy_rows(fresh)
            if losses:
                raise TrackingServerError(
                    f"the MLflow store {database} was left half-migrated by another process (revision "
                    f"{schema.revision}, {', '.join(schema.leftovers) or 'tables missing'}) and cannot be rebuilt "
                    f"without losing {'; '.join(losses)}: restore it from a backup or point MLFLOW_TRACKING_URI "
                    f"at another store")
            fresh.commit()
            fresh.execute("DETACH DATABASE old")
        kept = database.with_name(f"{database.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(database, kept)
        # Written into the same file, not moved over it: a process that has it open (the launcher
        # of `mlflow run`, the UI) would otherwise write to the old file, or be refused ("readonly
        # database"), for the rest of its life.
        with contextlib.closing(sqlite3.connect(private)) as source, \
                contextlib.closing(sqlite3.connect(database, timeout=30)) as target:
            source.backup(target)
    finally:
        private.unlink(missing_ok=True)
    logger.warning("the MLflow store %s had been left half-migrated by another process (revision %s, %s): rebuilt "
                   "with its %d run(s) and every other row; the old file is kept as %s", database, schema.revision,
                   ", ".join(schema.leftovers) or "tables missing", copied.get("runs", 0), kept)


def _copy_rows(fresh: sqlite3.Connection) -> tuple[list[str], dict[str, int]]:
    """Copy every row of the attached ``old`` store into ``fresh``, table by table over the columns
    both have: first the table itself, then alembic's ``_alembic_tmp_`` copy of it, whose rows may
    be the only ones left (the original dropped, or made again empty by a client that then failed).
    Returns what could not be copied, and the rows each table has now."""
    def tables(schema: str) -> set[str]:
        return {r[0] for r in fresh.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}

    def columns(schema: str, table: str) -> list[str]:
        return [r[1] for r in fresh.execute(f'PRAGMA {schema}.table_info("{table}")')]

    new, old = tables("main") - {"alembic_version"}, tables("old") - {"alembic_version"}
    losses, copied = [], {}
    for source in sorted(old, key=lambda t: (t.startswith(_LEFTOVER), t)):  # originals first
        name = source.removeprefix(_LEFTOVER)
        count = fresh.execute(f'SELECT COUNT(*) FROM old."{source}"').fetchone()[0]
        if name not in new:
            if count:
                losses.append(f"{count} row(s) of table {source}")
            continue
        target = set(columns("main", name))
        shared = [c for c in columns("old", source) if c in target]
        for column in set(columns("old", source)) - target:
            if fresh.execute(f'SELECT COUNT("{column}") FROM old."{source}"').fetchone()[0]:
                losses.append(f"column {source}.{column}")
        listed = ", ".join(f'"{c}"' for c in shared)
        keep = "IGNORE" if source != name else "REPLACE"  # a row the original kept wins over alembic's copy
        fresh.execute(f'INSERT OR {keep} INTO main."{name}" ({listed}) SELECT {listed} FROM old."{source}"')
        copied[name] = fresh.execute(f'SELECT COUNT(*) FROM main."{name}"').fetchone()[0]
    return losses, copied


def store_unwritable(err: BaseException) -> str | None:
    """The reason a store refused a write (read-only, full, gone), or None for other failures."""
    text = str(err)
    for line in text.splitlines():
        if any(marker in line.lower() for marker in _UNWRITABLE):
            return line.strip().removeprefix("(sqlite3.OperationalError) ")
    return None


def _write_probe(database: Path) -> str | None:
    """Why a SQLite file takes no write, found in milliseconds by a write that is rolled back."""
    try:
        connection = sqlite3.connect(database, timeout=5)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE tracker_write_probe (x INTEGER)")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err):
            return None  # another process writes: the store is writable, MLflow will wait its turn
        return str(err)
    return None
