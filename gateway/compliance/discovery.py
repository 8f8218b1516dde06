"""
eDiscovery exports: conversations as RFC 5322 messages or HTML transcripts,
with a manifest that shows what the export covers.

A *conversation-day* is every event between the same two parties (people
where the directory knows them, else addresses), or in the same room
(`gateway.rooms`), on one UTC day, in time order. ``eml`` writes one message per conversation-day (participants as
addresses, each event with its time, sender, decision and text in the
body), which Python's ``email`` package and mail clients read; ``html``
writes one readable page per conversation-day and an ``index.html``. Both
write ``manifest.json``: the filters, the counts, the first and last row,
each file with its SHA-256, and the head of every node's hash chain when
the export began, so a reviewer can show the export is complete against
the archive as verified (`gateway.compliance.verify`).
"""

from __future__ import annotations

import datetime
import hashlib
import html
import json
import os
import re
import time
from email.message import EmailMessage
from email.utils import format_datetime

import sqlalchemy as sa

from gateway.model import Address, AddressError
from gateway.storage.schema import chain, chain_blocks

__all__ = ["FORMATS", "export_conversations"]

FORMATS = ("eml", "html")
_ROOM = "room:"  # the address of a room (`gateway.rooms.ROOM_NETWORK`)


def _day(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def _clock(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%H:%M:%S")


def _party(address, identity):
    return f"user:{identity}" if identity else (address or "nobody")


def _mailbox(text):
    """An RFC 5322 address for a gateway address: user@domain, or user@NETWORK.invalid."""
    try:
        address = Address.parse(text)
    except (AddressError, ValueError):
        return "unknown@gateway.invalid"
    user = re.sub(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]", "_", address.user) or "unknown"
    domain = address.domain or f"{address.network}.invalid"
    return f"{user}@{re.sub(r'[^A-Za-z0-9.-]', '-', domain)}"


def _decision(event):
    word = event.status if event.allowed else f"denied by {event.rule or 'policy'}"
    return f"{event.kind}, {word}" + (f": {event.reason}" if not event.allowed and event.reason else "")


def _heads(engine):
    """{node: {"seq", "hash"}}: each chain's last entry now (its last block's; else its last ``chain`` row's)."""
    heads = {}
    with engine.connect() as conn:
        for table, seq in ((chain, chain.c.seq), (chain_blocks, chain_blocks.c.last)):
            last = sa.select(table.c.node, sa.func.max(seq).label("seq")).group_by(table.c.node).subquery()
            query = sa.select(table.c.node, seq, table.c.hash).join(
                last, sa.and_(table.c.node == last.c.node, seq == last.c.seq))
            for node, at, hash_ in conn.execute(query):
                if node not in heads or at > heads[node]["seq"]:
                    heads[node] = {"seq": at, "hash": hash_}
    return heads


class _Conversation:
    __slots__ = ("parties", "addresses", "events")

    def __init__(self, parties):
        self.parties = parties
        self.addresses = []
        self.events = []


def export_conversations(store, folder, fmt, filters, progress=None) -> dict:
    """
    Write the events matching ``filters`` (as `ArchiveStore.search` takes
    them) into ``folder`` as ``eml`` or ``html``, with ``manifest.json``;
    return the manifest. Streams: one day's conversations are held at a time.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    os.makedirs(folder, exist_ok=True)
    manifest = {"format": fmt, "exported_at": time.time(), "filters": {k: v for k, v in filters.items() if v},
                "chain_heads": _heads(store.engine), "events": 0, "kinds": {}, "first": None, "last": None,
                "files": []}
    total = store.count(**filters)
    day, open_ = None, {}

    def flush():
        for conversation in sorted(open_.values(), key=lambda c: c.events[0].created):
            name = f"{len(manifest['files']) + 1:06d}-{day}"
            data = (_eml if fmt == "eml" else _page)(conversation, day)
            path = os.path.join(folder, f"{name}.{fmt}")
            with open(path, "wb") as f:
                f.write(data)
            manifest["files"].append({"file": os.path.basename(path), "day": day,
                                      "parties": list(conversation.parties), "events": len(conversation.events),
                                      "sha256": hashlib.sha256(data).hexdigest()})
        open_.clear()

    for event in store.iter_events(**filters):
        event_day = _day(event.created)
        if event_day != day:
            flush()
            day = event_day
        if event.recipient and event.recipient.startswith(_ROOM):
            key = (event.recipient,)  # a room's conversation is everything in it, whoever spoke
        else:
            a = _party(event.sender, event.sender_identity)
            b = _party(event.recipient, event.recipient_identity) if event.recipient else a
            key = tuple(sorted({a, b}))
        conversation = open_.get(key)
        if conversation is None:
            conversation = open_[key] = _Conversation(key)
        for address in (event.sender, event.recipient):
            if address and address not in conversation.addresses:
                conversation.addresses.append(address)
        conversation.events.append(event)
        manifest["events"] += 1
        manifest["kinds"][event.kind] = manifest["kinds"].get(event.kind, 0) + 1
        row = {"id": event.id, "created": event.created}
        if manifest["first"] is None:
            manifest["first"] = row
        manifest["last"] = row
        if progress is not None and manifest["events"] % 1000 == 0:
            progress(manifest["events"], max(total, manifest["events"]))
    flush()
    if fmt == "html":
        _index(folder, manifest)
    if progress is not None:
        progress(manifest["events"], max(total, manifest["events"]))
    with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    return manifest


def _line(event):
    who = event.sender + (f" -> {event.recipient}" if event.recipient else "")
    return f"[{_clock(event.created)} UTC] {who} ({_decision(event)}): {event.text or ''}"


def _eml(conversation, day) -> bytes:
    first = conversation.events[0]
    message = EmailMessage()
    senders = [a for a in conversation.addresses if a == first.sender] or conversation.addresses[:1]
    others = [a for a in conversation.addresses if a not in senders]
    message["From"] = ", ".join(f'"{a}" <{_mailbox(a)}>' for a in senders)
    if others:
        message["To"] = ", ".join(f'"{a}" <{_mailbox(a)}>' for a in others)
    message["Subject"] = f"Conversation of {' and '.join(conversation.parties)} on {day}"
    message["Date"] = format_datetime(datetime.datetime.fromtimestamp(first.created, datetime.timezone.utc))
    digest = hashlib.sha256("|".join(conversation.parties).encode()).hexdigest()[:24]
    message["Message-ID"] = f"<{digest}.{day}@gateway.invalid>"
    message["X-Gateway-Events"] = str(len(conversation.events))
    message["X-Gateway-First-Event"] = first.id
    message["X-Gateway-Last-Event"] = conversation.events[-1].id
    message.set_content("\n".join(_line(event) for event in conversation.events) + "\n", charset="utf-8")
    return bytes(message)


def _page(conversation, day) -> bytes:
    rows = "\n".join(
        f"<tr class='{'denied' if not e.allowed else e.status}'><td>{_clock(e.created)}</td>"
        f"<td>{html.escape(e.sender)}</td><td>{html.escape(e.recipient or '')}</td>"
        f"<td>{html.escape(_decision(e))}</td><td>{html.escape(e.text or '')}</td>"
        f"<td class='id'>{e.id}</td></tr>"
        for e in conversation.events
    )
    title = html.escape(f"{' and '.join(conversation.parties)}, {day}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>body{{font-family:sans-serif}} td{{padding:2px 8px;vertical-align:top}} "
            f"tr.denied{{color:#a00}} td.id{{color:#888;font-size:smaller}}</style></head>"
            f"<body><h1>{title}</h1><table><tr><th>UTC</th><th>From</th><th>To</th><th>Decision</th>"
            f"<th>Text</th><th>Event</th></tr>\n{rows}\n</table></body></html>\n").encode("utf-8")


def _index(folder, manifest):
    items = "\n".join(
        f"<li><a href='{html.escape(f['file'])}'>{html.escape(f['day'])}: "
        f"{html.escape(' and '.join(f['parties']))}</a> ({f['events']} events)</li>"
        for f in manifest["files"])
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Archive export</title></head><body>"
            f"<h1>Archive export</h1><p>{manifest['events']} events in {len(manifest['files'])} "
            f"conversation-days; see manifest.json.</p><ul>\n{items}\n</ul></body></html>\n")
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write(page)
