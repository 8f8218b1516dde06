"""OSCAR frames <-> gateway model events: addresses, IM text and HTML, presence, buddy lists."""

from __future__ import annotations

import html as html_lib
import re
from typing import Optional

import attrs

from gateway.plugin import Address, AddressError, Contact, PresenceStatus, sanitize, text_of

from gateway_oscar import codec
from gateway_oscar.codec import SsiItem, TextPart, encode_tlv, first_tlv, u16, u32

# Charsets of an IM text fragment.
CHARSET_ASCII, CHARSET_UCS2, CHARSET_LATIN1 = 0, 2, 3

# User class bits (TLV 1 of a user info block).
CLASS_AIM = 0x0010
CLASS_AWAY = 0x0020
CLASS_ICQ = 0x0040

# ICQ status (TLV 6 of a user info block, low 16 bits).
ICQ_ONLINE, ICQ_AWAY, ICQ_DND, ICQ_NA, ICQ_BUSY = 0x0000, 0x0001, 0x0002, 0x0004, 0x0010

# ICBM / generic SNAC error codes (the family's subtype 01).
ERR_INVALID_SNAC = 0x0001
ERR_RATE_TO_HOST = 0x0002
ERR_NOT_LOGGED_IN = 0x0004
ERR_SERVICE_UNAVAILABLE = 0x0005
ERR_NOT_SUPPORTED = 0x0008
ERR_REQUEST_DENIED = 0x000D
ERR_BAD_FORMAT = 0x000E
ERR_TEMP_UNAVAILABLE = 0x0013
ERR_QUEUE_FULL = 0x0017

# Login error codes (TLV 8 of the auth reply).
LOGIN_BAD_PASSWORD = 0x0005
LOGIN_INVALID_ACCOUNT = 0x0001
LOGIN_NO_SUCH_ICQ = 0x0008
LOGIN_TOO_FAST = 0x0018
LOGIN_RATE_LIMIT = 0x001D
LOGIN_UNAVAILABLE = 0x0002

# What the core's outcome codes become in an ICBM error.
OUTCOME_TO_ICBM_ERROR = {
    "unknown-recipient": ERR_NOT_LOGGED_IN,
    "offline": ERR_NOT_LOGGED_IN,
    "policy": ERR_REQUEST_DENIED,
    "transform": ERR_REQUEST_DENIED,
    "offline-full": ERR_QUEUE_FULL,
    "archive-unavailable": ERR_SERVICE_UNAVAILABLE,
    "delivery-failed": ERR_TEMP_UNAVAILABLE,
    "invalid": ERR_BAD_FORMAT,
    "internal": ERR_SERVICE_UNAVAILABLE,
    # Refusals of the connectors themselves (api.refuse).
    "unsupported": ERR_NOT_SUPPORTED,
    "rendezvous-unsupported": ERR_NOT_SUPPORTED,
    "chat-unsupported": ERR_NOT_SUPPORTED,
    "unparsable": ERR_BAD_FORMAT,
    "unattributed": ERR_SERVICE_UNAVAILABLE,
    "undecided": ERR_SERVICE_UNAVAILABLE,
}


def icbm_error_for(code: str) -> int:
    return OUTCOME_TO_ICBM_ERROR.get(code, ERR_SERVICE_UNAVAILABLE)


# -- addresses --------------------------------------------------------------


def network_of(screen_name: str, default: str = "aim") -> str:
    """ICQ numbers are all digits; anything else is an AIM screen name."""
    return "icq" if screen_name.isdigit() else default


def address_for(screen_name: bytes, session_network: str = "aim") -> Address:
    """
    The gateway address a client means by ``screen_name``: a UIN is on
    ``icq``; a gateway alias (``xmpp.carol%host``) is on the session's own
    network; any other name is on ``aim``. Raises `AddressError`.
    """
    try:
        name = screen_name.decode("utf-8")
    except UnicodeDecodeError:
        name = screen_name.decode("latin-1")
    name = codec.normalize_screen_name(name)
    if not name:
        raise AddressError("empty screen name")
    if name.isdigit():
        return Address("icq", name)
    if "." in name and "@" not in name:
        return Address(session_network, name)
    return Address("aim", name)


def screen_name_of(address: Address) -> bytes:
    return address.handle.encode("utf-8")


# -- IM text ----------------------------------------------------------------

_TAG = re.compile(r"<[^<>]*>")
_BREAK = re.compile(r"<\s*br\s*/?\s*>", re.I)
_HTMLISH = re.compile(r"<\s*/?\s*(html|body|font|b|i|u|br|a|p|span|div)\b[^<>]*>", re.I)


def looks_like_html(text: str) -> bool:
    return "<" in text and _HTMLISH.search(text) is not None


def html_to_text(markup: str) -> str:
    """Plain text of AIM's HTML: line breaks kept, tags dropped, entities decoded."""
    text = _BREAK.sub("\n", markup)
    text = _TAG.sub("", text)
    return html_lib.unescape(text).strip()


def text_to_html(text: str) -> str:
    """AIM-style HTML for plain text (upper-case ``<HTML>``, which some clients look for)."""
    if "&" in text or "<" in text or ">" in text:
        text = html_lib.escape(text, quote=False)
    if "\n" in text:
        text = text.replace("\n", "<BR>")
    return "<HTML><BODY>" + text + "</BODY></HTML>"


def _utf8_if_plausible(data: bytes) -> Optional[str]:
    """``data`` as UTF-8 when it is valid UTF-8 with non-ASCII and no control bytes; else None."""
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.isascii() or any(ord(ch) < 0x20 and ch not in "\t\r\n" for ch in text):
        return None
    return text


def decode_text_part(part: TextPart) -> str:
    """Text of one fragment (see `decode_text`)."""
    return decode_text(part.charset, part.data)


def decode_text(charset: int, data: bytes) -> str:
    """
    Text of one fragment's bytes. Charset 2 is UCS-2BE; UTF-8 mislabelled as 2
    (Twisted 15.4 sends that) is recognised when the bytes are not valid
    UTF-16 or are plausible UTF-8 and implausible UCS-2. Charset 3 is
    Latin-1; charset 0 is ASCII, read as UTF-8 when it is valid UTF-8 (many
    clients send that) and Latin-1 otherwise.
    """
    if charset == CHARSET_ASCII:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if charset == CHARSET_UCS2:
        utf8 = _utf8_if_plausible(data)
        if len(data) % 2 or utf8 is not None:
            if utf8 is not None:
                return utf8
            return data.decode("utf-8", errors="replace")
        return data.decode("utf-16-be", errors="replace")
    if charset == CHARSET_LATIN1:
        return data.decode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def encode_text(text: str, utf8: bool = False) -> TextPart:
    """
    The fragment for ``text``: ASCII as charset 0, Latin-1 as charset 3,
    anything else as UCS-2BE (charset 2). ``utf8`` sends UTF-8 labelled
    charset 0 for clients that only read that (aimpyfly).
    """
    charset, data = text_bytes(text, utf8)
    return TextPart(charset, 0, data)


def text_bytes(text: str, utf8: bool = False) -> tuple:
    """``(charset, bytes)`` of `encode_text`."""
    if text.isascii():
        return CHARSET_ASCII, text.encode("ascii")
    if utf8:
        return CHARSET_ASCII, text.encode("utf-8")
    try:
        return CHARSET_LATIN1, text.encode("latin-1")
    except UnicodeEncodeError:
        return CHARSET_UCS2, text.encode("utf-16-be")


# The MIME type an answer's profile and away message are labelled with (TLVs 1 and 3 of 02/06).
RICH_MIME = b'text/aolrtf; charset="utf-8"'
_CHARSET = re.compile(rb'charset\s*=\s*"?([A-Za-z0-9_.:-]+)', re.I)


def decode_rich(data: bytes, mime: Optional[bytes]) -> str:
    """
    A profile or away message (TLVs 2 and 4 of 02/04) as text, in the charset
    its MIME type (TLVs 1 and 3) names: ``unicode-2-0`` is UCS-2BE,
    ``iso-8859-1`` Latin-1, anything else UTF-8 (Latin-1 when it is not).
    """
    match = _CHARSET.search(mime or b"")
    charset = match.group(1).lower() if match else b""
    if charset in (b"unicode-2-0", b"utf-16be", b"ucs-2"):
        return decode_text(CHARSET_UCS2, data)
    if charset in (b"iso-8859-1", b"latin1", b"latin-1"):
        return data.decode("latin-1")
    return decode_text(CHARSET_ASCII, data)


def rich_parts(markup: str) -> tuple:
    """``(text, html or None)`` of a profile as a client set it: AIM HTML when it looks like HTML."""
    if looks_like_html(markup):
        return html_to_text(markup), markup
    return markup, None


def render_rich(text: str, html: Optional[str]) -> bytes:
    """A decided profile or away message as AIM HTML in UTF-8 (the `RICH_MIME` charset); empty stays empty."""
    if html:
        return ("<HTML><BODY>" + html + "</BODY></HTML>").encode("utf-8")
    if not text:
        return b""
    return text_to_html(text).encode("utf-8")


@attrs.frozen(slots=True)
class IncomingText:
    text: str
    html: Optional[str]


def message_from_tlv2(data: bytes) -> IncomingText:
    """Plain text and HTML (when it was HTML) of a channel-1 IM's TLV 2."""
    return IncomingText(*im_text(data))


def im_text(data: bytes) -> tuple:
    """``(text, html or None)`` of a channel-1 IM's TLV 2 (`message_from_tlv2` without the object)."""
    parts = codec.text_fragments(data)
    if len(parts) == 1:
        raw = decode_text(parts[0][0], parts[0][2])
    else:
        raw = "".join([decode_text(charset, text) for charset, _, text in parts])
    if "<" in raw and _HTMLISH.search(raw) is not None:
        return html_to_text(raw), raw
    return raw, None


def im_tlv2(text: str, html: Optional[str], profile: "ClientProfile") -> bytes:
    """ICBM TLV 2 (its value) for a message to a client with this profile."""
    return im_tlv(text, html, profile)[4:]


def lost_in_rendering(event, profile: "ClientProfile") -> list:
    """What `im_tlv` leaves out of ``event`` for a client with this profile (for native capture)."""
    html = getattr(event, "html", None)
    if html and (profile.html_utf8 or not looks_like_html(html)):
        return ["html-dropped"]
    return []


def im_tlv(text: str, html: Optional[str], profile: "ClientProfile") -> bytes:
    """The whole ICBM TLV 2, header included, for a message to a client with this profile."""
    if profile.html_utf8:
        charset, data = text_bytes(text_to_html(text), utf8=True)
    else:
        markup = html if html and looks_like_html(html) else text_to_html(text)
        charset, data = text_bytes(markup)
    return codec.encode_text_tlv(charset, data)


# -- rendezvous (ICBM channel 2) ---------------------------------------------------

# The description of a direct-connection (direct IM) offer: it has no file.
DIRECT_IM_TEXT = "direct connection"

# Rendezvous TLVs that only say how the two clients connect (addresses, ports, the proposal's
# number, a cancel's reason, proxy and TLS flags). They are relayed as they came; everything a
# person is shown (the invitation 0x0C and the service data 0x2711) is rendered from the decided
# event, and anything else is dropped (0x0004 is the server's to add).
TRANSFER_PARAMS = frozenset({0x0001, 0x0002, 0x0003, 0x0005, 0x000A, 0x000B, 0x000F, 0x0010, 0x0011, 0x0012,
                             0x0013, 0x0014, 0x0016, 0x0017, 0x0018, 0x0019, 0x001A})

# What other rendezvous capabilities propose (for the record of a refused one).
CAPABILITY_NAMES = {
    bytes.fromhex("094613414c7f11d18222444553540000"): "voice chat",
    bytes.fromhex("094613464c7f11d18222444553540000"): "buddy icon",
    bytes.fromhex("094613474c7f11d18222444553540000"): "games",
    bytes.fromhex("094613484c7f11d18222444553540000"): "get file",
    bytes.fromhex("094613494c7f11d18222444553540000"): "ICQ server relay",
    bytes.fromhex("0946134a4c7f11d18222444553540000"): "games",
    bytes.fromhex("0946134b4c7f11d18222444553540000"): "buddy list",
    codec.CAP_SEND_FILE: "send file",
    codec.CAP_DIRECT_IM: "direct IM",
    codec.CAP_CHAT: "chat invitation",
}


def capability_name(capability: bytes) -> str:
    return CAPABILITY_NAMES.get(capability, "rendezvous " + capability.hex())


def _charset_text(data: bytes, charset: Optional[bytes]) -> str:
    return decode_rich(data, b'charset="' + charset + b'"' if charset else None)


def plain_text(markup: str) -> str:
    """What a person is shown of ``markup`` (AIM HTML or plain text) as text: sanitized, link targets included."""
    return text_of(sanitize(markup)) if looks_like_html(markup) else markup


def charset_text(data: bytes, charset: Optional[bytes]) -> str:
    """Bytes labelled with a charset name (rendezvous TLV 0x0D, chat TLV 2) as plain text."""
    return plain_text(_charset_text(data, charset))


def charset_name(text: str) -> bytes:
    return b"us-ascii" if text.isascii() else b"utf-8"


def invitation_text(rdv) -> str:
    """The invitation (TLV 0x0C, charset 0x0D) of a rendezvous as plain text."""
    data = rdv.tlv(0x000C)
    if not data:
        return ""
    return charset_text(data, rdv.tlv(0x000D))


def icq_message_text(data: Optional[bytes]) -> str:
    """The text of an ICQ channel-4 message (TLV 5: u32 UIN, u8 type, u8 flags, u16 length, text; little-endian)."""
    if not data or len(data) < 8:
        return ""
    length = int.from_bytes(data[6:8], "little")
    return decode_text(CHARSET_ASCII, data[8:8 + length].rstrip(b"\x00")).replace("\xfe", " ")


@attrs.frozen(slots=True)
class OfferContent:
    """What a file or direct-connection proposal shows its recipient, and how many files it holds."""

    name: str
    size: int
    text: str
    files: Optional[codec.FileInfo] = None


def offer_content(rdv) -> OfferContent:
    """The content of a send-file or direct-IM proposal. Raises `codec.OscarCodecError` on bad service data."""
    if rdv.capability == codec.CAP_DIRECT_IM:
        return OfferContent("", 0, DIRECT_IM_TEXT)
    data = rdv.tlv(0x2711)
    files = codec.parse_file_info(data) if data is not None else None
    name = _charset_text(files.name, rdv.tlv(0x2712)) if files is not None else ""
    return OfferContent(name, files.size if files is not None else 0, invitation_text(rdv), files)


def transfer_params(rdv) -> list:
    return [(t, v) for t, v in rdv.tlvs if t in TRANSFER_PARAMS]


def offer_tlvs(capability: bytes, name: str, size: int, text: str, files: Optional[codec.FileInfo],
               with_text: bool = True, with_files: bool = True) -> list:
    """The TLVs a person is shown in a relayed proposal, rendered from the decided offer."""
    if capability != codec.CAP_SEND_FILE:
        return []  # a direct connection shows nothing but who proposes it
    tlvs = []
    if with_text and text:
        tlvs += [(0x000C, text.encode("utf-8")), (0x000D, charset_name(text))]
    if with_files:
        kind, count = (files.kind, files.count) if files is not None else (1, 1)
        encoded = name.encode("utf-8").replace(b"\x00", b"")
        tlvs.append((0x2711, codec.encode_file_info(codec.FileInfo(kind, count, size & 0xFFFFFFFF, encoded))))
        if not name.isascii():
            tlvs.append((0x2712, b"utf-8"))
    return tlvs


def chat_notice(event) -> str:
    """Chat traffic from a network with rooms, as the text of an IM (this service has none)."""
    if event.action == "invite":
        head = f"Chat invitation to {event.room}" if event.room else "Chat invitation"
    else:
        head = f"Chat {event.action} in {event.room}" if event.room else f"Chat {event.action}"
    return f"{head}: {event.text}" if event.text else head


def offer_notice(offer) -> str:
    """A file offer from a network that cannot propose an OSCAR transfer, as the text of an IM."""
    return "File offer: " + offer.summary().strip()


# -- clients ------------------------------------------------------------------


@attrs.frozen(slots=True)
class ClientProfile:
    """What the gateway knows about a client from its login frame, and the quirks that follow."""

    name: str = ""
    version: tuple = ()
    # Reads only UTF-8 inside an upper-case <HTML> (aimpyfly 0.1.1).
    html_utf8: bool = False
    # TLV 0x4A of a BUCP login: 1 = allow other sessions, 3 = sign the others off.
    multi_login: Optional[int] = None


def client_profile(tlvs) -> ClientProfile:
    """Identify the client from its login TLVs (3 = name, 0x17..0x1A = version)."""
    name = first_tlv(tlvs, 0x0003, b"").decode("latin-1", errors="replace")
    version = tuple(
        int.from_bytes(v, "big") for v in (first_tlv(tlvs, t) for t in (0x17, 0x18, 0x19, 0x1A)) if v is not None
    )
    # aimpyfly: the bare AIM name, version 1.0(.x).1, and TLV 9 = 0x0015.
    html_utf8 = name == "AOL Instant Messenger (SM)" and version[:2] == (1, 0) and first_tlv(tlvs, 0x0009) == b"\x00\x15"
    multi = first_tlv(tlvs, 0x004A)
    return ClientProfile(name, version, html_utf8, multi[0] if multi else None)


# -- presence ------------------------------------------------------------------


def user_info_tlvs(status: PresenceStatus, network: str, online_since: int, idle_minutes: int = 0) -> list:
    """TLVs of the user info block that shows someone with ``status`` to a client on ``network``."""
    user_class = CLASS_ICQ if network == "icq" else CLASS_AIM
    if status in (PresenceStatus.AWAY, PresenceStatus.BUSY):
        user_class |= CLASS_AWAY
    tlvs = [(0x0001, u16(user_class)), (0x0003, u32(int(online_since)))]
    if status is PresenceStatus.IDLE:
        tlvs.append((0x0004, u16(max(1, idle_minutes))))
    if network == "icq":
        icq = {PresenceStatus.AWAY: ICQ_AWAY, PresenceStatus.BUSY: ICQ_BUSY, PresenceStatus.IDLE: ICQ_NA}
        tlvs.append((0x0006, u32(icq.get(status, ICQ_ONLINE))))
    return tlvs


def status_from_icq(value: bytes) -> PresenceStatus:
    """A 01/1E ICQ status (u32 flags+status) as a presence status."""
    status = int.from_bytes(value[-2:], "big") if len(value) >= 2 else 0
    if status & ICQ_BUSY or status & ICQ_DND:
        return PresenceStatus.BUSY
    if status & ICQ_NA or status & ICQ_AWAY:
        return PresenceStatus.AWAY
    return PresenceStatus.AVAILABLE


# -- buddy lists ------------------------------------------------------------------


@attrs.define
class Feedbag:
    """
    One session's server-stored list: SSI items by (group id, item id), and
    for each buddy the directory contact it stands for (which may be on
    another network).
    """

    items: dict = attrs.field(factory=dict)  # (gid, bid) -> SsiItem
    origin: dict = attrs.field(factory=dict)  # (gid, bid) -> Contact it was loaded from
    loaded_names: dict = attrs.field(factory=dict)  # (gid, bid) -> screen name it was shown under
    last_modified: int = 1

    @classmethod
    def from_contacts(cls, shown, now: int) -> "Feedbag":
        """``shown``: ``[(Contact, screen_name_bytes)]`` in list order."""
        bag = cls(last_modified=max(1, int(now)))
        groups = {}
        members = {}
        for contact, name in shown:
            gid = groups.get(contact.group)
            if gid is None:
                gid = groups[contact.group] = len(groups) + 1
                members[gid] = []
            bid = sum(len(m) for m in members.values()) + 1
            members[gid].append(bid)
            tlvs = ((codec.TLV_SSI_ALIAS, contact.name.encode("utf-8")[:255]),) if contact.name else ()
            bag.items[(gid, bid)] = SsiItem(name, gid, bid, codec.SSI_BUDDY, tlvs)
            bag.origin[(gid, bid)] = contact
            bag.loaded_names[(gid, bid)] = name
        bag.items[(0, 0)] = SsiItem(b"", 0, 0, codec.SSI_GROUP, ((codec.TLV_SSI_ORDER, _ids(groups.values())),))
        for group, gid in groups.items():
            bag.items[(gid, 0)] = SsiItem(
                group.encode("utf-8")[:255], gid, 0, codec.SSI_GROUP, ((codec.TLV_SSI_ORDER, _ids(members[gid])),)
            )
        return bag

    def ordered(self) -> list:
        """Root group first, then groups, then buddies, then the rest (Twisted 15.4 needs that order)."""
        def key(item):
            if item.kind == codec.SSI_GROUP:
                return (0 if item.gid == 0 else 1, item.gid, item.bid)
            if item.kind == codec.SSI_BUDDY:
                return (2, item.gid, item.bid)
            return (3, item.gid, item.bid)

        return sorted(self.items.values(), key=key)

    def apply(self, action: str, item: SsiItem) -> int:
        """Add, modify or delete an item; the 13/0E status code (0 ok, 2 not found, 3 exists, 0x0A invalid)."""
        key = (item.gid, item.bid)
        if item.kind == codec.SSI_BUDDY and not item.name:
            return 0x000A
        if action == "add":
            if key in self.items:
                return 0x0003
            self.items[key] = item
        elif action == "modify":
            if key not in self.items:
                return 0x0002
            self.items[key] = item
        else:
            if key not in self.items:
                return 0x0002
            del self.items[key]
            self.origin.pop(key, None)
            self.loaded_names.pop(key, None)
        self.last_modified += 1
        return 0x0000

    def contacts(self, session_network: str) -> list:
        """The directory contact list this feedbag now describes."""
        groups = {gid: it.name.decode("utf-8", errors="replace") for (gid, bid), it in self.items.items()
                  if it.kind == codec.SSI_GROUP and gid != 0}
        out = []
        for key, item in sorted(self.items.items()):
            if item.kind != codec.SSI_BUDDY:
                continue
            alias = item.tlv(codec.TLV_SSI_ALIAS)
            name = alias.decode("utf-8", errors="replace") if alias else ""
            group = groups.get(item.gid, "Buddies") or "Buddies"
            origin = self.origin.get(key)
            loaded = self.loaded_names.get(key)
            if origin is not None and loaded is not None and _same_name(loaded, item.name):
                out.append(Contact(origin.address, group=group, name=name))
                continue
            try:
                address = address_for(item.name, session_network)
            except AddressError:
                continue
            out.append(Contact(address, group=group, name=name))
        return out


def _same_name(a: bytes, b: bytes) -> bool:
    norm = codec.normalize_screen_name
    return norm(a.decode("utf-8", "replace")) == norm(b.decode("utf-8", "replace"))


def _ids(ids) -> bytes:
    return b"".join(u16(i) for i in ids)


def ssi_status_body(codes) -> bytes:
    return b"".join(u16(c) for c in codes)


def tlv(tlv_type, value) -> bytes:
    return encode_tlv(tlv_type, value)
