"""Database engines and schema migrations for the gateway's SQL database."""

import contextlib
import itertools
import os
import pathlib

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import make_url

MIGRATIONS = pathlib.Path(__file__).parent / "archive" / "migrations"
# The newest migration (tests check it against Alembic's head): when the
# database is there already, start-up does not load Alembic at all.
HEAD_REVISION = "0011"


class DatabaseError(Exception):
    """The database cannot be reached or used; the message says what to do."""


def _sqlite_pragmas(dbapi_connection, connection_record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(url, **kwargs):
    """
    An SQLAlchemy engine for ``url``: SQLite gets WAL, foreign keys and a
    busy timeout, and its folder is created; PostgreSQL gets a pool that
    checks connections before use, so a restarted server is reconnected.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # psycopg 3 is the driver the gateway installs, whatever SQLAlchemy's default.
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        engine = sqlalchemy.create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return sqlalchemy.create_engine(url, **kwargs)


def sqlite_insert_many(conn, head, width, rows, most, statements, tail=""):
    """
    ``rows`` (tuples of ``width`` values) into SQLite by ``head``
    (``INSERT INTO table (columns)``) and ``tail`` (``ON CONFLICT ...``),
    many rows to a statement: SQLite then inserts them in one step without
    the GIL, where ``executemany`` takes it back after every row, and
    positional parameters bind for less than named ones. Each statement
    holds the largest power of two of rows left, up to ``most`` (a power of
    two), so any number of rows takes a few statements of a few shapes;
    ``statements`` keeps their text by row count. Returns how many rows
    the statements inserted (fewer when ``tail`` skips some).
    """
    done, total, inserted = 0, len(rows), 0
    while done < total:
        count = min(most, 1 << ((total - done).bit_length() - 1))
        sql = statements.get(count)
        if sql is None:
            one = "(" + ", ".join("?" * width) + ")"
            sql = statements[count] = f"{head} VALUES {', '.join([one] * count)}{tail}"
        inserted += conn.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(rows[done:done + count]))).rowcount
        done += count
    return inserted


def _alembic_config(engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def _revision(conn):
    try:
        return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    except sqlalchemy.exc.DBAPIError:
        return None


def _create_fresh(engine):
    """
    In a database with no tables, create the schema `gateway.storage.schema`
    describes and stamp it at `HEAD_REVISION`, without loading Alembic (10
    MB a process would keep). True when it did; tests check that this
    schema is the one the migrations build.
    """
    from gateway.storage.schema import metadata

    with engine.begin() as conn:
        if sqlalchemy.inspect(conn).get_table_names():
            return False
        metadata.create_all(conn)
        conn.execute(sqlalchemy.text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        ))
        conn.execute(sqlalchemy.text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": HEAD_REVISION})
    return True


# The PostgreSQL advisory lock that one process at a time holds to create or upgrade the schema.
SCHEMA_LOCK = 0x67775F736368656D  # "gw_schem"


@contextlib.contextmanager
def _schema_lock(engine):
    """
    On PostgreSQL, the schema is created or upgraded by one process at a
    time (nodes of a cluster started together on an empty database would
    otherwise both create its tables, and one fail).
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    # A connection of its own, outside the engine's pool: the migration needs the pool's (of one, maybe).
    locker = sqlalchemy.create_engine(engine.url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with locker.connect() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            conn.commit()
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
                conn.commit()
    finally:
        locker.dispose()


def migrate(engine):
    """Bring the schema to the newest revision (creating it in an empty database)."""
    try:
        with engine.connect() as conn:
            if _revision(conn) == HEAD_REVISION:
                return
        with _schema_lock(engine):
            with engine.connect() as conn:  # another process may have done it meanwhile
                if _revision(conn) == HEAD_REVISION:
                    return
            if _create_fresh(engine):
                return
            from alembic import command

            command.upgrade(_alembic_config(engine), "head")
    except sqlalchemy.exc.OperationalError as e:
        raise DatabaseError(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{e.orig}; check [database] url in the config and that the server runs"
        ) from None


def current_revision(engine):
    """The schema revision the database is at, or None when it has none."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
