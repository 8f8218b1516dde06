# -*- coding: utf-8 -*-
"""
A scripted AIM/ICQ user on Twisted 15.4's twisted.words.protocols.oscar (Python 2.7).

Run by tests/interop/test_oscar.py as a subprocess. Prints one JSON object per
line for everything it sees (ready, ssi, online, offline, im, ack, error, info,
away, file, file-ack, done) and exits 0 when its script is complete. Twisted 15.4
can receive a file offer but has no call to send one: --send-file writes the
rendezvous ICBM itself, laid out as libpurple sends one, over Twisted's own
connection (sendSNAC). Roles:
  --role stay   send, receive --expect IMs, then wait until --peer goes offline
  --role leave  send, receive --expect IMs, then sign off
  --role login  sign off as soon as the login is complete (ready)
  --linger N    (any role) sign off N seconds after ready
  --chat ROOM   create ROOM through chat navigation and join it (chat-created, chat-joined,
                chat-member, chat-left, chat-im); --chat-say TEXT says TEXT there once joined;
                with --chat-expect N, leaves the room and signs off after N room messages
"""

import json
import optparse
import os
import site
import struct
import sys

site.addsitedir(os.environ["TW15_DIR"])  # zope is a namespace package installed with a .pth file

from twisted.internet import defer, protocol, reactor  # noqa: E402
from twisted.words.protocols import oscar  # noqa: E402

parser = optparse.OptionParser()
parser.add_option("--host", default="127.0.0.1")
parser.add_option("--port", type="int")
parser.add_option("--user")
parser.add_option("--password", default="secret")
parser.add_option("--icq", action="store_true", default=False)
parser.add_option("--peer")
parser.add_option("--send", action="append", default=[], help="UTF-8 text to send (sent as unicode)")
parser.add_option("--send-latin1", action="append", default=[], help="UTF-8 text sent as ISO-8859-1")
parser.add_option("--expect", type="int", default=1)
parser.add_option("--role", default="stay")
parser.add_option("--add-buddy", default=None)
parser.add_option("--info", action="append", default=[], help="ask for this user's profile and away message")
parser.add_option("--send-file", default=None, help="NAME:SIZE:DESCRIPTION, offered to --peer once online")
parser.add_option("--chat", default=None, help="create and join a chat room of this name")
parser.add_option("--chat-say", action="append", default=[], help="UTF-8 text to say in the room once joined")
parser.add_option("--chat-expect", type="int", default=0, help="room messages to wait for, then leave")
parser.add_option("--linger", type="float", default=0.0)
parser.add_option("--timeout", type="float", default=40.0)
opts, _ = parser.parse_args()


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def decode(part):
    data, flags = part[0], part[1:]
    if "unicode" in flags:
        text = data.decode("utf-16-be")
    elif "iso-8859-1" in flags:
        text = data.decode("iso-8859-1")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("iso-8859-1")
    return oscar.dehtml(text)


def finish(code=0):
    emit("done", code=code)
    if reactor.running:
        reactor.callLater(0.2, reactor.stop)


class Bos(oscar.BOSConnection):
    capabilities = [oscar.CAP_CHAT]

    def initDone(self):
        self.peer_online = False
        self.sent = False
        self.received = 0
        self.leaving = False
        self.requestSelfInfo().addCallback(lambda user: emit("self", name=user.name))
        self.requestSSI().addCallbacks(self.gotSSI, self.failed, errbackArgs=("ssi",))

    def gotSSI(self, result):
        groups = result[0]
        emit("ssi", groups=[g.name for g in groups], buddies=[u.name for g in groups for u in g.users])
        self.activateSSI()
        self.setProfile("profile of %s" % opts.user)
        self.setIdleTime(0)
        self.clientReady()
        emit("ready")
        if opts.role == "login":
            reactor.callLater(0.2, self.leave)
            return
        if opts.linger:
            reactor.callLater(opts.linger, self.leave)
        if opts.add_buddy:
            self.addBuddy(opts.add_buddy, groups)
        if opts.info:
            reactor.callLater(1.5, self.askInfo)
        if opts.chat:
            emit("chat-asked", room=opts.chat)
            self.chat_heard = 0
            self.createChat(opts.chat).addCallbacks(self.chatCreated, self.failed, errbackArgs=("chat-create",))

    def chatCreated(self, info):
        exchange, fullName, instance = info
        emit("chat-created", room=fullName, exchange=exchange)
        d = self.joinChat(exchange, fullName, instance)
        d.addCallbacks(self.chatJoined, self.failed, errbackArgs=("chat-join",))

    def chatJoined(self, chat):
        self.chat = chat
        emit("chat-joined", room=chat.name, members=[m.name for m in chat.members or []])
        for text in opts.chat_say:
            chat.sendMessage(text)

    def chatMemberJoined(self, chat, member):
        emit("chat-member", who=member.name)

    def chatMemberLeft(self, chat, member):
        emit("chat-left", who=member.name)

    def chatReceiveMessage(self, chat, user, message):
        emit("chat-im", sender=user.name, text=oscar.dehtml(message.decode("utf-8", "replace")))
        self.chat_heard += 1
        if opts.chat_expect and self.chat_heard >= opts.chat_expect and not self.leaving:
            self.leaving = True
            chat.leaveChat()
            reactor.callLater(1.0, self.leave)

    def askInfo(self):
        for name in opts.info:
            self.getInfo(name).addCallbacks(lambda profile, n=name: emit("info", who=n, profile=profile),
                                            self.failed, errbackArgs=("info",))
            self.getAway(name).addCallbacks(lambda away, n=name: emit("away", who=n, away=away),
                                            self.failed, errbackArgs=("away",))

    def sendFile(self):
        name, size, description = opts.send_file.split(":", 2)
        cookie = os.urandom(8)
        here = "\x7f\x00\x00\x01"
        service = struct.pack("!HHL", 1, 1, int(size)) + name + "\x00"
        block = ("\x00\x00" + cookie + oscar.CAP_SEND_FILE + oscar.TLV(2, here) + oscar.TLV(3, here)
                 + oscar.TLV(5, struct.pack("!H", 4443)) + oscar.TLV(0x0A, "\x00\x01") + oscar.TLV(0x0F, "")
                 + oscar.TLV(0x0C, description) + oscar.TLV(0x2711, service))
        data = cookie + "\x00\x02" + chr(len(opts.peer)) + opts.peer + oscar.TLV(3, "") + oscar.TLV(5, block)
        self.sendSNAC(0x04, 0x06, data).addCallbacks(lambda _: emit("file-ack", name=name), self.failed,
                                                      errbackArgs=("file",))

    def receiveSendFileRequest(self, user, file, description, cookie):
        emit("file", sender=user.name, description=description, cookie=cookie.encode("hex"))

    def addBuddy(self, name, groups):
        # As an AIM client does: the buddy gets a free id in the first group, then the group's order changes.
        group = groups[0]
        gid = group.group.findIDFor(group)
        bid = max(list(group.usersToID.values()) + [0]) + 1
        buddy = oscar.SSIBuddy(name)
        group.addUser(bid, buddy)
        self.startModifySSI()
        d = self.addItemSSI(buddy, groupID=gid, buddyID=bid)
        d.addCallbacks(lambda snac: emit("added", who=name, status=snac[5].encode("hex")),
                       self.failed, errbackArgs=("ssi-add",))
        self.modifyItemSSI(group, groupID=gid, buddyID=0).addErrback(self.failed, "ssi-modify")
        self.endModifySSI()

    def failed(self, failure, what):
        emit("error", what=what, detail=repr(getattr(failure, "value", failure))[:200])

    def updateBuddy(self, user):
        emit("online", who=user.name, flags=user.flags)
        if user.name.lower().replace(" ", "") == opts.peer and not self.sent:
            self.sent = True
            self.sendAll()
            if opts.send_file:
                self.sendFile()

    def sendAll(self):
        for text in opts.send:
            self.sendOne(text.decode("utf-8"), text.decode("utf-8"))
        for text in opts.send_latin1:
            self.sendOne([[text.decode("utf-8"), "iso-8859-1"]], text.decode("utf-8"))

    def sendOne(self, message, text):
        d = self.sendMessage(opts.peer, message, wantAck=1)
        d.addCallbacks(lambda _: emit("ack", text=text), self.failed, errbackArgs=("send",))

    def offlineBuddy(self, user):
        emit("offline", who=user.name)
        if opts.role == "stay" and self.received >= opts.expect and user.name == opts.peer:
            finish()

    def receiveMessage(self, user, multiparts, flags):
        text = u"".join(decode(p) for p in multiparts)
        emit("im", sender=user.name, text=text, flags=[f for f in flags if isinstance(f, str)])
        self.received += 1
        if self.received >= opts.expect and opts.role == "leave" and not self.leaving:
            self.leaving = True
            reactor.callLater(1.0, self.leave)

    def leave(self):
        if getattr(self, "left", False):
            return
        self.left = True
        emit("leaving")
        self.disconnect()
        finish()


class Auth(oscar.OscarAuthenticator):
    BOSClass = Bos


def login_failed(failure):
    emit("login-error", detail=repr(getattr(failure, "value", failure))[:200])
    finish(1)


def main():
    d = defer.Deferred()
    d.addErrback(login_failed)
    creator = protocol.ClientCreator(reactor, Auth, opts.user, opts.password, d, icq=1 if opts.icq else 0)
    creator.connectTCP(opts.host, opts.port).addErrback(login_failed)
    reactor.callLater(opts.timeout, lambda: (emit("timeout"), finish(2)))
    reactor.run()


if __name__ == "__main__":
    main()
