"""
A tiny authoritative DNS server on loopback (twisted.names), for testing direct MX
delivery without the Internet:

    python -m gateway.testing.dns --port 5353 --mx example.net=mx.example.net --a mx.example.net=127.0.0.1 \
        --txt example.net="v=spf1 -all" --txt _dmarc.example.net="v=DMARC1; p=reject"

(TXT values longer than 255 bytes are split into several strings, as DKIM keys are.)

Names it does not know answer NXDOMAIN.
"""

from __future__ import annotations

import argparse

from twisted.internet import defer, reactor
from twisted.names import common, dns, error, server


class StaticResolver(common.ResolverBase):
    def __init__(self, mx: dict[str, str], a: dict[str, str], txt: dict[str, list[str]] | None = None):
        super().__init__()
        self.mx = mx
        self.a = a
        self.txt = txt or {}

    def _lookup(self, name, cls, type, timeout):
        name = name.decode("ascii").lower().rstrip(".")
        answers = []
        if type in (dns.MX, dns.ALL_RECORDS) and name in self.mx:
            answers.append(dns.RRHeader(name, dns.MX, cls, 60, dns.Record_MX(10, self.mx[name]), auth=True))
        if type in (dns.A, dns.ALL_RECORDS) and name in self.a:
            answers.append(dns.RRHeader(name, dns.A, cls, 60, dns.Record_A(self.a[name]), auth=True))
        if type in (dns.TXT, dns.ALL_RECORDS):
            for value in self.txt.get(name, []):
                raw = value.encode()
                strings = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
                answers.append(dns.RRHeader(name, dns.TXT, cls, 60, dns.Record_TXT(*strings), auth=True))
        if not answers and name not in self.mx and name not in self.a and name not in self.txt:
            return defer.fail(error.DomainError(name))
        return defer.succeed((answers, [], []))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mx", action="append", default=[], metavar="DOMAIN=HOST")
    parser.add_argument("--a", action="append", default=[], metavar="HOST=IPV4")
    parser.add_argument("--txt", action="append", default=[], metavar="NAME=TEXT")
    args = parser.parse_args(argv)
    txt: dict[str, list[str]] = {}
    for x in args.txt:
        name, value = x.split("=", 1)
        txt.setdefault(name.lower(), []).append(value)
    resolver = StaticResolver(dict(x.split("=", 1) for x in args.mx), dict(x.split("=", 1) for x in args.a), txt)
    factory = server.DNSServerFactory(authorities=[resolver])
    factory.noisy = False
    reactor.listenUDP(args.port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    print(f"dns listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
