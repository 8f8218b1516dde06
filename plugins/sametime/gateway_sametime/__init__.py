"""Sametime (Meanwhile "VP" protocol) connector plugin for gateway."""
