"""gateway: an instant-messaging federation and compliance gateway on Twisted."""

__version__ = "0.1.0"
