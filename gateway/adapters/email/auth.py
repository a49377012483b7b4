"""
Who really sent an inbound mail: SPF (pyspf), DKIM (dkimpy) and DMARC on top.

Why these libraries: dkimpy and pyspf are the implementations Debian's and
Postfix's milters (opendmarc's Python cousins, spf-engine) are built on,
maintained for over a decade and following the RFCs' corner cases (SPF's
lookup limits, DKIM canonicalisation). DMARC itself is a small policy step
over their results (RFC 7489 §3.1 alignment, §6.3 record), done here: the
packaged DMARC libraries pull in a public-suffix list we would have to keep
current; here the organisational domain is approximated as the last two
labels, which can only make alignment stricter for names under multi-label
public suffixes (``example.co.uk``), never looser (documented in email.md).

Checking blocks (DNS lookups), so it runs in a thread with a bounded DNS
lifetime; a DNS failure is a ``temperror``: the mail is delivered with a
marker, never refused for it.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from dataclasses import dataclass, field

import dkim
import dns.exception
import dns.resolver
import spf

#: Seconds one DNS query may take; a whole check makes a few.
DNS_LIFETIME = 5.0
#: DKIM signatures verified per mail (each costs DNS lookups and RSA work).
MAX_SIGNATURES = 5


class SenderRefused(Exception):
    """The sender's domain asks receivers to reject this mail (DMARC p=reject): a 5xx at end of DATA."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass
class Verdict:
    from_domain: str | None
    spf: str = "none"                   # pass, fail, softfail, neutral, none, temperror, permerror
    dkim_domains: list[str] = field(default_factory=list)
    dmarc: str = "none"                 # pass, fail, none, temperror
    policy: str | None = None           # the record's p= (or sp=) when DMARC applied

    def problem(self) -> str | None:
        """Why the user should doubt the sender, in words, or None."""
        if self.dmarc == "fail":
            return (f"{self.from_domain} failed DMARC (SPF {self.spf}, no aligned DKIM signature; "
                    f"the domain's policy is {self.policy})")
        if self.dmarc == "temperror" or (self.dmarc == "none" and self.spf == "temperror"):
            return f"the sender {self.from_domain or ''} could not be verified (DNS lookup failed)".replace("  ", " ")
        if self.dmarc == "none" and self.spf in ("fail", "softfail") and not self._aligned_dkim():
            return f"{self.from_domain} does not list the sending server (SPF {self.spf})"
        return None

    def _aligned_dkim(self) -> bool:
        return any(_aligned(d, self.from_domain) for d in self.dkim_domains) if self.from_domain else False


def _org(domain: str) -> str:
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def _aligned(a: str | None, b: str | None, strict: bool = False) -> bool:
    if not a or not b:
        return False
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if strict else _org(a) == _org(b)


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            tags[k.strip().lower()] = v.strip()
    return tags


class SenderAuth:
    """
    Checks one mail. ``dns_servers`` (``host:port``) are used when given (the
    adapter's option; also what the tests point at their DNS server).
    """

    def __init__(self, dns_servers: list[str] | None = None):
        if dns_servers:
            self.resolver = dns.resolver.Resolver(configure=False)
            hosts = [s.rpartition(":") for s in dns_servers]
            self.resolver.nameservers = [h for h, _, _ in hosts]
            self.resolver.nameserver_ports = {h: int(p) for h, _, p in hosts}
        else:
            try:
                self.resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # No /etc/resolv.conf: lookups fail (temperror: marked, never refused) instead of the start.
                self.resolver = dns.resolver.Resolver(configure=False)
                self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.lifetime = DNS_LIFETIME
        # pyspf looks names up through this module-level hook: one resolver per process.
        spf.DNSLookup = self._spf_lookup

    # -- DNS -------------------------------------------------------------------

    def _spf_lookup(self, name, qtype, tcpfallback=True, timeout=30):
        out = []
        try:
            for rdata in self.resolver.resolve(name, qtype, lifetime=min(timeout, DNS_LIFETIME)):
                if qtype in ("A", "AAAA"):
                    out.append(((name, qtype), rdata.address))
                elif qtype == "MX":
                    out.append(((name, qtype), (rdata.preference, rdata.exchange)))
                elif qtype == "PTR":
                    out.append(((name, qtype), rdata.target.to_text(True)))
                elif qtype in ("TXT", "SPF"):
                    out.append(((name, qtype), rdata.strings))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            pass
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
            raise spf.TempError(f"DNS {e}")
        return out

    def _txt(self, name: str) -> list[str]:
        """TXT strings of ``name`` ([] if none); raises dns.exception.DNSException on a temporary failure."""
        try:
            answer = self.resolver.resolve(name, "TXT")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    def _dkim_dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        try:
            records = self._txt(name.decode("ascii", "replace").rstrip("."))
        except dns.exception.DNSException:
            return None
        return records[0].encode() if records else None

    # -- the check ---------------------------------------------------------------

    def check(self, data: bytes, client_ip: str | None, helo: str, mail_from: str) -> Verdict:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
        senders = email.utils.getaddresses([str(v) for v in headers.get_all("From") or []])
        from_domain = None
        if len(senders) == 1 and "@" in senders[0][1]:
            from_domain = senders[0][1].rpartition("@")[2].lower().strip().rstrip(".") or None
        verdict = Verdict(from_domain)
        envelope_domain = mail_from.rpartition("@")[2].lower() if "@" in mail_from else helo.lower()
        if client_ip:
            try:
                verdict.spf = spf.check2(i=client_ip, s=mail_from or f"postmaster@{helo}", h=helo or "unknown",
                                         timeout=DNS_LIFETIME * 3)[0]
            except Exception:
                verdict.spf = "temperror"
        verdict.dkim_domains = self._dkim_pass(data)
        if from_domain is None:
            verdict.dmarc = "fail"
            verdict.policy = "unknown (no single From address)"
            return verdict
        try:
            record, sub = self._dmarc_record(from_domain)
        except dns.exception.DNSException:
            verdict.dmarc = "temperror"
            return verdict
        if record is None:
            return verdict
        tags = _tags(record)
        policy = (tags.get("sp") if sub and tags.get("sp") else tags.get("p", "none")).lower()
        spf_ok = verdict.spf == "pass" and _aligned(envelope_domain, from_domain, tags.get("aspf") == "s")
        dkim_ok = any(_aligned(d, from_domain, tags.get("adkim") == "s") for d in verdict.dkim_domains)
        verdict.dmarc = "pass" if spf_ok or dkim_ok else "fail"
        verdict.policy = policy if policy in ("none", "quarantine", "reject") else "none"
        return verdict

    def _dmarc_record(self, domain: str) -> tuple[str | None, bool]:
        """The DMARC record for ``domain`` (or its organisational domain), and whether it came from the latter."""
        for name, sub in ((domain, False), (_org(domain), True)):
            if sub and name == domain:
                break
            for txt in self._txt(f"_dmarc.{name}"):
                if txt.strip().lower().startswith("v=dmarc1"):
                    return txt, sub
        return None, False

    def _dkim_pass(self, data: bytes) -> list[str]:
        """The d= domains of the DKIM signatures that verify."""
        passed = []
        try:
            signer = dkim.DKIM(data)
            count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
            for i in range(min(count, MAX_SIGNATURES)):
                try:
                    if signer.verify(idx=i, dnsfunc=self._dkim_dns):
                        passed.append(signer.domain.decode("ascii", "replace").lower())
                except Exception:
                    continue
        except Exception:
            pass
        return passed
