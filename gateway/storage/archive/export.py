"""Archive output: JSON-lines and CSV exports, a progress bar, search result tables."""

import csv
import datetime
import json
import os
import sys
import time

import attrs

from gateway.storage.archive.store import ArchivedEvent

__all__ = ["FORMATS", "ProgressBar", "export", "format_table", "to_json"]

FORMATS = ("jsonl", "csv")
FIELDS = ["time"] + [field.name for field in attrs.fields(ArchivedEvent)]
PROGRESS_EVERY = 1000


def event_dict(event):
    """An event's fields, led by ``time``: ``created`` in UTC, ISO 8601."""
    stamp = datetime.datetime.fromtimestamp(event.created, datetime.timezone.utc)
    return {"time": stamp.isoformat(timespec="milliseconds"), **attrs.asdict(event)}


def export(store, output_path, fmt, filters, progress=None):
    """
    Write every event matching ``filters`` (keywords of `ArchiveStore.search`
    without limit and offset) to ``output_path`` ("-" for standard output)
    as ``jsonl`` or ``csv``, streaming. The file appears only when complete.
    ``progress(done, total)`` is called every thousand rows and at the end.
    Return the number of events written.
    """
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}"
        )
    total = store.count(**filters)
    if output_path == "-":
        return _write(store, sys.stdout, fmt, filters, total, progress)
    partial = f"{output_path}.part"
    try:
        with open(partial, "w", encoding="utf-8", newline="") as out:
            done = _write(store, out, fmt, filters, total, progress)
        os.replace(partial, output_path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return done


def _write(store, out, fmt, filters, total, progress):
    if fmt == "csv":
        writer = csv.DictWriter(out, FIELDS)
        writer.writeheader()

        def write(values):
            chat = values.get("chat")
            if chat is not None:  # a chat event's room, action, nickname and members: JSON in one cell
                values["chat"] = json.dumps(chat, ensure_ascii=False, sort_keys=True)
            writer.writerow(values)
    else:

        def write(values):
            out.write(json.dumps(values, ensure_ascii=False) + "\n")

    done = 0
    for event in store.iter_events(**filters):
        write(event_dict(event))
        done += 1
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done, max(total, done))
    if progress is not None and (done == 0 or done % PROGRESS_EVERY):
        progress(done, max(total, done))
    return done


class ProgressBar:
    """
    A one-line progress bar (percentage, rows, rows per second) for a
    terminal, called as ``progress(done, total)``; the line ends when
    ``done`` reaches the total (or at `finish`).
    """

    def __init__(self, stream, total, width=30, clock=time.monotonic):
        self._stream = stream
        self.total = total
        self._width = width
        self._clock = clock
        self._started = clock()
        self._finished = False

    def __call__(self, done, total=None):
        if total is not None:
            self.total = total
        self._stream.write("\r" + self.render(done))
        if done >= self.total:
            self.finish()
        self._stream.flush()

    def render(self, done):
        total = max(self.total, done)
        fraction = done / total if total else 1.0
        filled = int(self._width * fraction)
        elapsed = self._clock() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = "#" * filled + "-" * (self._width - filled)
        return f"[{bar}] {fraction:4.0%}  {done:,}/{total:,} rows  {rate:,.0f} rows/s"

    def finish(self):
        if not self._finished:
            self._finished = True
            self._stream.write("\n")
            self._stream.flush()


def _local_time(seconds):
    return datetime.datetime.fromtimestamp(seconds).isoformat(
        sep=" ", timespec="seconds"
    )


def _shorten(text, width):
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _shown(event):
    chat = event.chat
    if chat is not None and chat.get("action") != "message":
        return f"[{chat.get('action')} {chat.get('nick') or ''}] {event.text or ''}".replace(" ]", "]").strip()
    return event.text if event.text else f"[{event.kind}]"


def format_table(events, text_width=50):
    """Search results as an aligned table: time, sender, recipient, status, text."""
    header = ("time", "sender", "recipient", "status", "text")
    rows = [
        (
            _local_time(event.created),
            event.sender,
            event.recipient or "*",
            event.status,
            _shorten(_shown(event), text_width),
        )
        for event in events
    ]
    if not rows:
        return "no events"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, tuple("-" * width for width in widths), *rows]
    ]
    return "\n".join(lines)


def to_json(events):
    """Search results as a JSON array of objects."""
    return json.dumps(
        [event_dict(event) for event in events], ensure_ascii=False, indent=2
    )
