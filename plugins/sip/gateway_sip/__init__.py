"""SIP/SIMPLE connector plugin for gateway (RFC 3261, 3428, 3856, 3903, 6665)."""
