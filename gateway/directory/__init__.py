"""The directory: people, their handles per network, groups, contacts and aliases."""

from gateway.directory.passwords import hash_password, verify_password
from gateway.directory.sql import (
    DirectoryError,
    DirectoryStore,
    SQLDirectory,
    ensure_demo_users,
)

__all__ = [
    "DirectoryError",
    "DirectoryStore",
    "SQLDirectory",
    "ensure_demo_users",
    "hash_password",
    "verify_password",
]
