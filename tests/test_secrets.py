"""Protocol login secrets: RFC test vectors, and storage beside the password."""

import base64
import hashlib
import hmac
import shutil
import tempfile

from twisted.trial import unittest

from gateway.storage.db import create_engine, migrate
from gateway.directory.secrets import derive, digest_ha1, parse_scram, scram
from gateway.directory.sql import DirectoryStore
from gateway.model import Address


class ScramVectorTests(unittest.TestCase):
    def check(self, hash_name, salt, client_proof, server_signature, auth_message):
        value = scram("pencil", hash_name, base64.b64decode(salt), 4096)
        iterations, salt_bytes, stored_key, server_key = parse_scram(value)
        self.assertEqual(iterations, 4096)
        # The server verifies a proof: ClientKey = proof XOR HMAC(StoredKey, AuthMessage); H(ClientKey) == StoredKey.
        client_signature = hmac.new(stored_key, auth_message, hash_name).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(client_proof), client_signature))
        self.assertEqual(hashlib.new(hash_name, client_key).digest(), stored_key)
        self.assertEqual(
            base64.b64encode(hmac.new(server_key, auth_message, hash_name).digest()).decode(), server_signature
        )

    def test_rfc5802_sha1(self):
        self.check(
            "sha1", "QSXCR+Q6sek8bf92", "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
            b"n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
            b"s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
        )

    def test_rfc7677_sha256(self):
        self.check(
            "sha256", "W22ZaJ0SNY7soEsUEjb6gQ==", "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )


class DigestTests(unittest.TestCase):
    def test_rfc2617_ha1(self):
        # RFC 2617 section 3.5: Mufasa / testrealm@host.com / Circle Of Life; the response there is
        # 6629fae49393a05397450978507c4ef1 with the nonce and HA2 given.
        ha1 = digest_ha1("md5", "Mufasa", "testrealm@host.com", "Circle Of Life")
        ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
        response = hashlib.md5(
            f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}".encode()
        ).hexdigest()
        self.assertEqual(response, "6629fae49393a05397450978507c4ef1")

    def test_derive(self):
        secrets = derive("secret", [Address.parse("sip:alice@example.com"), Address.parse("aim:alice")])
        self.assertEqual(secrets["md5"], hashlib.md5(b"secret").hexdigest())
        self.assertEqual(secrets["digest-md5:example.com:alice"], hashlib.md5(b"alice:example.com:secret").hexdigest())
        self.assertIn("digest-sha-256:example.com:alice", secrets)
        self.assertEqual(sorted(k for k in secrets if k.startswith("digest")), [
            "digest-md5:example.com:alice", "digest-sha-256:example.com:alice"])


class StoredSecretTests(unittest.TestCase):
    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        engine = create_engine(f"sqlite:///{directory}/d.sqlite")
        migrate(engine)
        self.store = DirectoryStore(engine, password_n=2**4)

    def test_stored_and_replaced_with_the_password(self):
        self.store.add_person("alice", password="one", handles=["sip:alice@example.com", "aim:alice"])
        identity, value = self.store.secret(Address.parse("aim:alice"), "md5")
        self.assertEqual((identity.id, value), ("alice", hashlib.md5(b"one").hexdigest()))
        self.store.set_password("alice", "two")
        _, value = self.store.secret(Address.parse("sip:alice@example.com"), "digest-md5:example.com:alice")
        self.assertEqual(value, hashlib.md5(b"alice:example.com:two").hexdigest())
        self.store.set_password("alice", None)
        self.assertEqual(self.store.secret(Address.parse("aim:alice"), "md5")[1], None)
        self.assertEqual(self.store.secret(Address.parse("aim:nobody"), "md5"), (None, None))
        self.store.remove_person("alice")


class LearnedColumnMigrationTests(unittest.TestCase):
    """Revision 0003 adds ``secrets.learned`` to a database that already holds secrets, and takes it away."""

    def check(self, engine):
        from alembic import command
        import sqlalchemy as sa

        from gateway.storage.db import HEAD_REVISION, _alembic_config, current_revision

        config = _alembic_config(engine)
        command.downgrade(config, "0002")
        self.assertEqual(current_revision(engine), "0002")
        self.assertNotIn("learned", {c["name"] for c in sa.inspect(engine).get_columns("secrets")})
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO people (id, display_name, password_hash, created) VALUES ('a', '', '', 1)"))
            conn.execute(sa.text("INSERT INTO secrets (identity_id, scheme, value) VALUES ('a', 'md5', 'x')"))
        migrate(engine)
        self.assertEqual(current_revision(engine), HEAD_REVISION)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT identity_id, scheme, value, learned FROM secrets")).all()
        self.assertEqual([tuple(r) for r in rows], [("a", "md5", "x", None)])
        # The key and the foreign key survived SQLite's table rebuild.
        inspector = sa.inspect(engine)
        self.assertEqual(inspector.get_pk_constraint("secrets")["constrained_columns"], ["identity_id", "scheme"])
        (fk,) = inspector.get_foreign_keys("secrets")
        self.assertEqual((fk["referred_table"], fk["options"].get("ondelete")), ("people", "CASCADE"))

    def test_sqlite(self):
        from tests.support import sqlite_engine

        self.check(sqlite_engine(self))

    def test_postgresql(self):
        from tests.support import postgres_engine

        self.check(postgres_engine(self))
