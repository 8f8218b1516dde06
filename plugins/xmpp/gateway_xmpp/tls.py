"""TLS settings the federation links share: the certificates a server's must chain to."""

from __future__ import annotations

from gateway.plugin import ConfigError

__all__ = ["load_ca"]


def load_ca(path, key):
    """The certificates a peer's must chain to: a PEM file (one or more), or None for the system's roots."""
    from twisted.internet import ssl

    if not path:
        return None
    if not isinstance(path, str):
        raise ConfigError("expected the path of a PEM file", key=key)
    try:
        with open(path, "rb") as f:
            pem = f.read()
        certificates = [ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n")
                        for block in pem.split(b"-----END CERTIFICATE-----")[:-1]]
    except Exception as e:
        raise ConfigError(f"cannot load it: {e}", key=key) from None
    if not certificates:
        raise ConfigError("no certificate in it", key=key)
    return ssl.trustRootFromCertificates(certificates)
