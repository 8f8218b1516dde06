"""gateway: an instant-messaging federation and compliance gateway on Twisted.

Plugins import what they use from `gateway.plugin`, the public door;
``from gateway import hookimpl`` works too.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazily, so that ``import gateway`` stays cheap (twistd's plugin scan imports it).
    if name == "hookimpl":
        from gateway.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
