"""The archive: every event and decision, batched into SQL, searchable, exportable."""

__all__ = ["ArchiveUnavailable"]


class ArchiveUnavailable(Exception):
    """The archive could not make a record durable (fail_closed rejects the event)."""
