"""Safety filtering and PII masking (Llama 3 §3.1.1): drop documents from blocked
domains (adult, unsafe, PII-heavy) and mask e-mail addresses, phone numbers and
public IP addresses in the text that is kept."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from pasture.data.filters.base import RESOURCES, FilterError, read_word_list
from pasture.documents import Document

DEFAULT_BLOCKLIST = RESOURCES / "blocked_domains.txt"
PII_KINDS = ("email", "ip", "phone")
PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}

EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\w)")
# candidates only: ipaddress decides whether a match is a valid IPv6 address
IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Phone numbers in the formats people write them, each with its own digit count (checked in
# `_mask_phones`); a bare run of digit groups is not enough, or dates, times, table rows,
# version numbers and numbers in code would be masked too. Separators inside one number are
# the same throughout (a date followed by a time mixes them), and a number that runs on into
# more digit groups, or into a time (`:30`), is a row of numbers, not a phone number.
PHONE_RE = re.compile(
    r"""
    (?=[\d+(])(?<![\w+.:/-])(?<!\d[ ./-])               # (the cheap test first: most positions fail it)
    (?:
        (?P<international>(?:\+|00)[1-9]\d{0,2}          # +44, 0044
            (?:[ .-]?\(0\))?                            # +44 (0)20 ...
            (?:[ .-]?\(?\d{1,5}\)?){0,5}[ .-]?\d{2,5})    # the last group 2+ digits: +352.6 is a decimal
      | (?P<nanp>(?:1[ .-])?                             # US, Canada: (555) 123-4567, 555-123-4567
            (?:\([2-9]\d{2}\)[ ]?\d{3}[ .-]\d{4}
             | [2-9]\d{2}(?P<nanp_sep>[.-])\d{3}(?P=nanp_sep)\d{4}))
      | (?P<trunk>(?:\(0[1-9]\d{0,4}\)[ ]?              # trunk prefix 0: UK, FR, DE, JP, IN, ...
                   | 0[1-9]\d{0,4}(?P<trunk_sep>[ ./-]))
            \d{2,8}(?:(?(trunk_sep)(?P=trunk_sep)|[ -])\d{2,8}){0,3})
      | (?P<mobile_in>[6-9]\d{4}[ -]\d{5})               # India: 98765 43210
    )
    (?![\w%])(?![ ./-]?\d)(?!:\d)
    """,
    re.VERBOSE,
)
PHONE_DIGITS = {"international": (8, 15), "nanp": (10, 11), "trunk": (9, 12), "mobile_in": (10, 10)}


def _mask_ips(text: str) -> tuple[str, int]:
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        try:
            address = ipaddress.ip_address(match.group(0))
        except ValueError:
            return match.group(0)
        if not address.is_global:  # private, loopback and documentation ranges identify nobody
            return match.group(0)
        count += 1
        return PLACEHOLDERS["ip"]

    text = IPV6_RE.sub(replace, text)
    text = IPV4_RE.sub(replace, text)
    return text, count


def _mask_phones(text: str) -> tuple[str, int]:
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        number = match.group(0)
        low, high = PHONE_DIGITS[match.lastgroup]
        if not low <= sum(c.isdigit() for c in number) <= high:
            return number
        count += 1
        return PLACEHOLDERS["phone"]

    return PHONE_RE.sub(replace, text), count


def mask_pii(text: str, kinds: Sequence[str] = PII_KINDS) -> tuple[str, dict[str, int]]:
    """Replace e-mails, public IPs and phone numbers with placeholders; returns the new
    text and how many of each were masked (kinds with no match are left out)."""
    counts: dict[str, int] = {}
    if "email" in kinds:
        text, n = EMAIL_RE.subn(PLACEHOLDERS["email"], text)
        counts["email"] = n
    if "ip" in kinds:  # before phones: a dotted IP must not be read as a phone number
        text, counts["ip"] = _mask_ips(text)
    if "phone" in kinds:
        text, counts["phone"] = _mask_phones(text)
    return text, {k: n for k, n in counts.items() if n}


def url_host(url: str | None) -> str | None:
    """Lowercase host name of a URL (with or without a scheme), or None."""
    if not url:
        return None
    parts = urlsplit(url if "//" in url else "//" + url)
    try:
        host = parts.hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


class SafetyFilter:
    """Drops documents whose URL's domain or any parent domain is block-listed
    ("blocked_domain"), then masks PII and counts the masks in `meta["pii"]`."""

    name = "safety"

    def __init__(
        self,
        blocklists: Sequence[str] = (),
        default_blocklist: bool = True,
        mask_pii: bool = True,
        pii: Sequence[str] = PII_KINDS,
    ) -> None:
        unknown = sorted(set(pii) - set(PII_KINDS))
        if unknown:
            raise FilterError(f"safety.pii: unknown kind(s) {', '.join(unknown)}; known: {', '.join(PII_KINDS)}")
        paths = ([DEFAULT_BLOCKLIST] if default_blocklist else []) + list(blocklists)
        self.blocked = frozenset(d.removeprefix("www.").rstrip(".") for p in paths for d in read_word_list(p))
        self.mask = mask_pii
        self.pii = tuple(pii)

    def blocked_domain(self, url: str | None) -> str | None:
        """The block-listed domain that `url` falls under, if any."""
        host = url_host(url)
        if not host:
            return None
        labels = host.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.blocked:
                return candidate
        return None

    def process(self, doc: Document) -> str | None:
        if self.blocked and self.blocked_domain(doc.url):
            return "blocked_domain"
        if self.mask:
            doc.text, counts = mask_pii(doc.text, self.pii)
            if counts:
                doc.meta["pii"] = counts
        return None

