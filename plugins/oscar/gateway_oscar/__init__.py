"""OSCAR (AIM and ICQ) connector plugin for gateway: codec, protocol, adapter, connector, proxy."""
