"""twistd options and makeService: the only module that touches the global reactor."""

from twisted.python import usage

from gateway import config as config_module
from gateway.config import ConfigError
from gateway.storage.db import DatabaseError
from gateway.plugins import PluginLoadError


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Run the instant-messaging gateway described by a TOML config file."
    optParameters = [
        ["config", "c", None, "the TOML configuration file (see examples/gateway.toml)"],
    ]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config FILE is required (try examples/gateway.toml)")


def makeService(options):
    from twisted.internet import reactor

    from gateway.service import GatewayService

    try:
        config = config_module.load(options["config"])
        gateway = GatewayService(config, reactor)
    except (ConfigError, PluginLoadError, DatabaseError) as e:
        # One clear line instead of a traceback; twistd exits with status 1.
        raise SystemExit(f"gateway: {e}")
    return gateway
