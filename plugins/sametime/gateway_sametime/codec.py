"""Sametime (Meanwhile "VP") wire codec: pure functions between bytes and message values."""

from __future__ import annotations

# The codec is in three modules: wire (numbers, primitives, framing), messages
# (the messages and their header) and payloads (the services' CHANNEL_SEND data).
# This module gathers their names, so callers use ``codec.X`` for all of them.

from gateway_sametime.messages import (
    IdBlock, LoginInfo, UserStatus, PrivacyUser, PrivacyInfo, EncryptItem, EncryptOffer,
    EncryptAccept, CHANNEL_TAIL, Handshake, HandshakeAck, Login, LoginAck, LoginRedirect,
    LoginContinue, ChannelCreate, ChannelAccept, ChannelSend, ChannelDestroy, SetUserStatus,
    SetPrivacyList, SenseService, Admin, Announce, MESSAGE_TYPES, decode, encode, frame,
)
from gateway_sametime.payloads import (
    IM_MESSAGE, IM_TEXT, IM_DATA, IM_DATA_TYPING, IM_DATA_SUBJECT, IM_DATA_HTML, IM_DATA_MIME,
    IM_DATA_TIMESTAMP, IM_DATA_MULTI_START, IM_DATA_MULTI_STOP, IM_CLIENT_PLAIN,
    IM_CLIENT_NOTESBUDDY, AWARE_ADD, AWARE_REMOVE, AWARE_ATTRIB_SET, AWARE_ATTRIB_UNSET,
    AWARE_ATTRIB_WATCH, AWARE_SNAPSHOT, AWARE_UPDATE, AWARE_GROUP, AWARE_USER, AWARE_GROUP_ID,
    AWARE_SERVER, STORAGE_LOAD, STORAGE_LOADED, STORAGE_SAVE, STORAGE_SAVED, STORAGE_AWARE_LIST,
    RESOLVE_LOOKUP, RESOLVE_SUCCESS, RESOLVE_PARTIAL, RESOLVE_MULTIPLE, RESOLVE_BAD_FORMAT,
    RESOLVE_MATCH_USER, ImText, ImData, decode_im, encode_im, ImAddtl, FileAddtl, AwareId, decode_aware_list,
    encode_aware_list, AwareEntry, encode_aware_snapshot, decode_aware_snapshot,
    decode_storage_load, encode_storage_load, decode_storage_save, encode_storage_save,
    encode_storage_loaded, decode_storage_loaded, encode_storage_saved, ListUser, ListGroup,
    render_buddy_list, parse_buddy_list, decode_resolve_request, encode_resolve_request,
    ResolveMatch, ResolveResult, encode_resolve_reply, decode_resolve_reply,
)
from gateway_sametime.wire import (
    HANDSHAKE, HANDSHAKE_ACK, LOGIN, LOGIN_ACK, LOGIN_REDIRECT, LOGIN_CONTINUE, CHANNEL_CREATE,
    CHANNEL_DESTROY, CHANNEL_SEND, CHANNEL_ACCEPT, SET_USER_STATUS, SET_PRIVACY_LIST, SENSE_SERVICE,
    ADMIN, ANNOUNCE, OPT_ENCRYPTED, OPT_ATTRIBS, AUTH_PLAIN, AUTH_TOKEN, AUTH_RC2_40, AUTH_RC2_128,
    SERVICE_AWARE, SERVICE_RESOLVE, SERVICE_STORAGE, SERVICE_IM, SERVICE_CONFERENCE, SERVICE_PLACE,
    SERVICE_FILE, SERVICE_DIRECTORY, STATUS_OFFLINE, STATUS_ACTIVE, STATUS_IDLE, STATUS_AWAY,
    STATUS_BUSY, STATUS_MOBILE, ENCRYPT_NONE, ENCRYPT_WHATEVER, ENCRYPT_ALL, ENCRYPT_RC2_40,
    ENCRYPT_RC2_128, CIPHER_RC2_40, CIPHER_RC2_128, ERR_SUCCESS, ERR_FAILURE, ERR_REQUEST_INVALID,
    ERR_NOT_LOGGED_IN, ERR_NOT_AUTHORIZED, ERR_NO_ELEMENT, ERR_NO_USER, ERR_BAD_DATA, ERR_STARVING,
    ERR_CHANNEL_EXISTS, ERR_SERVICE_NO_SUPPORT, ERR_PROTOCOL_NO_SUPPORT, ERR_ENCRYPT_NO_SUPPORT,
    ERR_ENCRYPT_INVALID, ERR_NO_COMMON_ENCRYPT, ERR_VERSION_MISMATCH, ERR_FAT_MESSAGE,
    ERR_SERVER_BROKEN, ERR_SERVER_BUSY, ERR_VERIFICATION_DOWN, ERR_PROTOCOL_ERROR,
    ERR_USER_RESTRICTED, ERR_INCORRECT_LOGIN, ERR_USER_TOO_IDLE, ERR_CONNECTION_CLOSED, CodecError,
    UnknownMessage, Reader, u8, boolean, u16, u32, string, opaque, split_frames, KEEPALIVE,
)

__all__ = [
    "CodecError", "UnknownMessage", "Reader", "split_frames", "decode", "encode", "frame",
    # Every other name of the three modules.
    "HANDSHAKE", "HANDSHAKE_ACK", "LOGIN", "LOGIN_ACK", "LOGIN_REDIRECT", "LOGIN_CONTINUE",
    "CHANNEL_CREATE", "CHANNEL_DESTROY", "CHANNEL_SEND", "CHANNEL_ACCEPT", "SET_USER_STATUS",
    "SET_PRIVACY_LIST", "SENSE_SERVICE", "ADMIN", "ANNOUNCE", "OPT_ENCRYPTED", "OPT_ATTRIBS",
    "AUTH_PLAIN", "AUTH_TOKEN", "AUTH_RC2_40", "AUTH_RC2_128", "SERVICE_AWARE", "SERVICE_RESOLVE",
    "SERVICE_STORAGE", "SERVICE_IM", "SERVICE_CONFERENCE", "SERVICE_PLACE", "SERVICE_FILE",
    "SERVICE_DIRECTORY", "STATUS_OFFLINE", "STATUS_ACTIVE", "STATUS_IDLE", "STATUS_AWAY",
    "STATUS_BUSY", "STATUS_MOBILE", "ENCRYPT_NONE", "ENCRYPT_WHATEVER", "ENCRYPT_ALL",
    "ENCRYPT_RC2_40", "ENCRYPT_RC2_128", "CIPHER_RC2_40", "CIPHER_RC2_128", "ERR_SUCCESS",
    "ERR_FAILURE", "ERR_REQUEST_INVALID", "ERR_NOT_LOGGED_IN", "ERR_NOT_AUTHORIZED",
    "ERR_NO_ELEMENT", "ERR_NO_USER", "ERR_BAD_DATA", "ERR_STARVING", "ERR_CHANNEL_EXISTS",
    "ERR_SERVICE_NO_SUPPORT", "ERR_PROTOCOL_NO_SUPPORT", "ERR_ENCRYPT_NO_SUPPORT",
    "ERR_ENCRYPT_INVALID", "ERR_NO_COMMON_ENCRYPT", "ERR_VERSION_MISMATCH", "ERR_FAT_MESSAGE",
    "ERR_SERVER_BROKEN", "ERR_SERVER_BUSY", "ERR_VERIFICATION_DOWN", "ERR_PROTOCOL_ERROR",
    "ERR_USER_RESTRICTED", "ERR_INCORRECT_LOGIN", "ERR_USER_TOO_IDLE", "ERR_CONNECTION_CLOSED",
    "u8", "boolean", "u16", "u32", "string", "opaque", "KEEPALIVE", "IdBlock", "LoginInfo",
    "UserStatus", "PrivacyUser", "PrivacyInfo", "EncryptItem", "EncryptOffer", "EncryptAccept",
    "CHANNEL_TAIL", "Handshake", "HandshakeAck", "Login", "LoginAck", "LoginRedirect",
    "LoginContinue", "ChannelCreate", "ChannelAccept", "ChannelSend", "ChannelDestroy",
    "SetUserStatus", "SetPrivacyList", "SenseService", "Admin", "Announce", "MESSAGE_TYPES",
    "IM_MESSAGE", "IM_TEXT", "IM_DATA", "IM_DATA_TYPING", "IM_DATA_SUBJECT", "IM_DATA_HTML",
    "IM_DATA_MIME", "IM_DATA_TIMESTAMP", "IM_DATA_MULTI_START", "IM_DATA_MULTI_STOP",
    "IM_CLIENT_PLAIN", "IM_CLIENT_NOTESBUDDY", "AWARE_ADD", "AWARE_REMOVE", "AWARE_ATTRIB_SET",
    "AWARE_ATTRIB_UNSET", "AWARE_ATTRIB_WATCH", "AWARE_SNAPSHOT", "AWARE_UPDATE", "AWARE_GROUP",
    "AWARE_USER", "AWARE_GROUP_ID", "AWARE_SERVER", "STORAGE_LOAD", "STORAGE_LOADED",
    "STORAGE_SAVE", "STORAGE_SAVED", "STORAGE_AWARE_LIST", "RESOLVE_LOOKUP", "RESOLVE_SUCCESS",
    "RESOLVE_PARTIAL", "RESOLVE_MULTIPLE", "RESOLVE_BAD_FORMAT", "RESOLVE_MATCH_USER", "ImText",
    "ImData", "decode_im", "encode_im", "ImAddtl", "FileAddtl", "AwareId", "decode_aware_list",
    "encode_aware_list", "AwareEntry", "encode_aware_snapshot", "decode_aware_snapshot",
    "decode_storage_load", "encode_storage_load", "decode_storage_save", "encode_storage_save",
    "encode_storage_loaded", "decode_storage_loaded", "encode_storage_saved", "ListUser",
    "ListGroup", "render_buddy_list", "parse_buddy_list", "decode_resolve_request",
    "encode_resolve_request", "ResolveMatch", "ResolveResult", "encode_resolve_reply",
    "decode_resolve_reply",
]
