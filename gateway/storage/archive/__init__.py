"""The archive: every event and decision, batched into SQL, searchable, exportable."""

__all__ = ["ArchiveUnavailable", "OfflineFull"]


class ArchiveUnavailable(Exception):
    """The archive could not make a record durable (fail_closed rejects the event)."""


class OfflineFull(Exception):
    """The recipient already has as many held messages as ``[offline] max_per_person`` allows."""
