"""The schema a new database gets at once is the one the Alembic migrations build, on SQLite and PostgreSQL."""

import sys

import sqlalchemy as sa
from twisted.trial import unittest

from gateway.storage import db
from tests.support import postgres_engine, sqlite_engine


def describe(engine):
    """Everything about the schema that the gateway relies on, in a comparable form."""
    inspector = sa.inspect(engine)
    shape = {}
    for table in sorted(inspector.get_table_names()):
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]).split("(")[0].upper(), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "foreign keys": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                 f["options"].get("ondelete"))
                for f in inspector.get_foreign_keys(table)
            ),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
        }
    return shape


class FreshSchemaTests(unittest.TestCase):
    def check(self, make):
        from alembic import command

        migrated = make()
        command.upgrade(db._alembic_config(migrated), "head")
        fresh = make()
        db.migrate(fresh)
        self.assertEqual(db.current_revision(fresh), db.HEAD_REVISION)
        self.assertEqual(db.current_revision(migrated), db.HEAD_REVISION)
        self.assertEqual(describe(fresh), describe(migrated))
        # Migrating again does nothing, and does not need Alembic.
        db.migrate(fresh)

    def test_sqlite(self):
        self.check(lambda: sqlite_engine(self, migrate=False))

    def test_postgresql(self):
        self.check(lambda: postgres_engine(self, migrate=False))

    def test_a_new_database_does_not_load_alembic(self):
        import subprocess

        path = self.mktemp()
        code = (
            "import sys; from gateway.storage import db; "
            f"db.migrate(db.create_engine('sqlite:///{path}/gw.sqlite')); "
            "print(any(m == 'alembic' or m.startswith('alembic.') for m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "False")


class SchemaLockTests(unittest.TestCase):
    def test_on_postgresql_one_process_at_a_time_creates_the_schema(self):
        """Nodes started together on an empty database: the second waits for the first, then finds it done."""
        import threading

        engine = postgres_engine(self, migrate=False)
        other = db.create_engine(engine.url)
        self.addCleanup(other.dispose)
        # Someone holds the schema lock (another node creating the schema): migrate waits for it.
        holder = engine.connect()
        self.addCleanup(holder.close)
        holder.exec_driver_sql("SELECT pg_advisory_lock(%s)", (db.SCHEMA_LOCK,))
        holder.commit()
        done = threading.Event()
        errors = []

        def run():
            try:
                db.migrate(other)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        self.assertFalse(done.wait(1.0))
        self.assertIsNone(db.current_revision(engine))
        # The holder creates it meanwhile, and lets go: the waiting one finds it made and does nothing.
        db._create_fresh(engine)
        holder.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (db.SCHEMA_LOCK,))
        holder.commit()
        self.assertTrue(done.wait(30))
        thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(db.current_revision(other), db.HEAD_REVISION)

    def test_an_engine_with_a_pool_of_one_migrates(self):
        engine = postgres_engine(self, migrate=False, pool_size=1, max_overflow=0, pool_timeout=5)
        db.migrate(engine)
        self.assertEqual(db.current_revision(engine), db.HEAD_REVISION)
