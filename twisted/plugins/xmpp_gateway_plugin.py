"""twistd plugin: ``twistd -n xmpp-gateway --config FILE``.

twistd runs the gateway its own way (daemonising, pid file, log file), so the two
things ``xmpp-gateway run`` does around the service are done here too: the log
goes through the same secret-redacting observer, and a fatal error (a refused
component secret, a registry that cannot open) ends the process with status 2
instead of twistd's 0, so a supervisor does not mistake it for a clean stop.
"""

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "the gateway's TOML config file"]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


class _TwistdGateway(MultiService):
    """Hands twistd our log observer when it is attached to the application."""

    def __init__(self, gateway, observer):
        super().__init__()
        self.gateway = gateway
        self.observer = observer
        gateway.setServiceParent(self)

    def setServiceParent(self, parent):
        from twisted.logger import ILogObserver

        # twistd asks the application for an ILogObserver before it builds its own.
        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def _log_stream(server_options):
    """Where twistd would have written: its --logfile, or stdout when -n without one."""
    import sys

    name = server_options.get("logfile") if server_options is not None else None
    if not name or name == "-":
        return sys.stdout
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(name, rotateLength=None)


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "xmpp-gateway"
    description = "XMPP gateway to SMS, email and IRC (XEP-0114 components)"
    options = Options

    def makeService(self, options):
        import atexit

        from gateway.cli import exit_with
        from gateway.config import ConfigError, load
        from gateway.logs import make_observer
        from gateway.service import GatewayService

        try:
            config = load(options["config"])
        except ConfigError as e:
            problems = "\n".join("  " + p.format(options["config"]) for p in e.problems)
            raise SystemExit(f"{options['config']}: configuration problems:\n{problems}")
        observer = make_observer(config.log["format"], config.log["level"], config.secrets(),
                                 _log_stream(getattr(options, "parent", None)))
        gateway = GatewayService(config)
        # twistd returns 0 once the reactor stops, whatever stopped it: give the
        # gateway's own status to the process as the very last thing it does.
        atexit.register(lambda: exit_with(gateway.exit_code))
        return _TwistdGateway(gateway, observer)


serviceMaker = GatewayServiceMaker()
