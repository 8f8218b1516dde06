"""Databases for the tests: a fresh SQLite file, or a fresh database on the test PostgreSQL server; gatewayctl's folder."""

import atexit
import io
import socket
import os
import uuid

import sqlalchemy
from sqlalchemy.engine import make_url
from twisted.trial.unittest import SkipTest

from gateway.storage import db

POSTGRES_URL = make_url(
    os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
).set(drivername="postgresql+psycopg")


def sqlite_engine(test, migrate=True, **kwargs):
    """An engine on a new SQLite file in the test's temporary folder, migrated unless told not to."""
    path = os.path.join(os.path.abspath(test.mktemp()), "gateway.db")
    engine = db.create_engine(f"sqlite:///{path}", **kwargs)
    test.addCleanup(engine.dispose)
    if migrate:
        db.migrate(engine)
    return engine


def _fresh_postgres(migrate=True, **kwargs):
    """(engine, drop) for a new, migrated, uniquely named database; SkipTest when unreachable."""
    admin = sqlalchemy.create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"gateway_test_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as e:
        admin.dispose()
        raise SkipTest(
            f"PostgreSQL is not reachable at {POSTGRES_URL.host}:{POSTGRES_URL.port} "
            f"(set GATEWAY_TEST_POSTGRES to another server): {e.orig}"
        )
    engine = db.create_engine(POSTGRES_URL.set(database=name), **kwargs)

    def drop():
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    if migrate:
        db.migrate(engine)
    return engine, drop


def postgres_engine(test, migrate=True, **kwargs):
    """A new database on the test PostgreSQL server, migrated unless told not to, dropped after the test."""
    engine, drop = _fresh_postgres(migrate, **kwargs)
    test.addCleanup(drop)
    return engine


def shared_postgres_engine():
    """A new, migrated database kept for the whole test run (trial has no class tear-down)."""
    engine, drop = _fresh_postgres()
    atexit.register(drop)
    return engine


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def command_folder(test, config_text):
    """
    A new folder holding ``gateway.toml`` (``config_text``), for tests of
    the command line: ``(config path, settings, engine)``, the settings'
    database made and migrated (the engine disposed when the test ends).
    """
    from gateway.config import load

    folder = os.path.abspath(test.mktemp())
    os.makedirs(folder)
    path = os.path.join(folder, "gateway.toml")
    with open(path, "w") as f:
        f.write(config_text)
    settings = load(path)
    engine = db.create_engine(settings.database_url)
    test.addCleanup(engine.dispose)
    db.migrate(engine)
    return path, settings, engine


def gatewayctl(path, *args):
    """``gatewayctl --config PATH ARGS`` in this process: ``(exit status, what it printed)``."""
    from gateway.cli import main

    out = io.StringIO()
    return main(["--config", path, *args], out=out), out.getvalue()
