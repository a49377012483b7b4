"""twistd plugin: ``twistd -n xmpp-gateway --config FILE``."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "the gateway's TOML config file"]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "xmpp-gateway"
    description = "XMPP gateway to SMS, email and IRC (XEP-0114 components)"
    options = Options

    def makeService(self, options):
        from gateway.config import ConfigError, load
        from gateway.service import GatewayService

        try:
            config = load(options["config"])
        except ConfigError as e:
            raise SystemExit(f"{options['config']}: configuration problems:\n{e}")
        return GatewayService(config)


serviceMaker = GatewayServiceMaker()
