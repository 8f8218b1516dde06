"""XMPP connector for gateway: c2s server and XEP-0114 component."""
