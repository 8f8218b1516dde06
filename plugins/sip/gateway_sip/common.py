"""What the parts of the SIP connector share: its name, the methods it knows, its log."""

import re

from twisted.logger import Logger

NAME = "sip"
ALLOW = "REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH, OPTIONS, ACK, CANCEL, BYE"
KNOWN_METHODS = {"REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "ACK",
                 "CANCEL", "BYE", "INVITE", "INFO", "PRACK", "UPDATE", "REFER"}
USER_AGENT = "gateway-sip/0.1"
# A valueless rport parameter in a Via (RFC 3581), to be given the source port.
RPORT = re.compile(r";[ \t]*rport(?=[ \t]*(?:;|$))")

log = Logger(namespace="gateway_sip")
