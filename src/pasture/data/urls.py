"""URL normalisation and the ordering that URL de-duplication keeps ("the most recent crawl").

Two fetches of the same page must get the same key whatever the crawler wrote:
case of the host, default ports, `www.`, fragments, tracking parameters, query order,
a trailing slash, http vs https.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = re.compile(r"^(utm_\w+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|_ga|yclid|ref_src)$", re.I)
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """A canonical form of `url`; unparsable input is returned stripped, unchanged otherwise."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if port and DEFAULT_PORTS.get(scheme) != port:
        host = f"{host}:{port}"
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~%") or "/"
    path = re.sub(r"/{2,}", "/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                             if not TRACKING_PARAMS.match(k)))
    return urlunsplit((scheme, host, path, query, ""))


def url_key(url: str) -> str:
    """The de-duplication key: the normalised URL without scheme and `www.`."""
    normalized = normalize_url(url)
    rest = normalized.split("://", 1)[-1]
    return rest[4:] if rest.startswith("www.") else rest


_CRAWL_ID = re.compile(r"(\d{4})-(\d{2})")


def crawl_time(value: object) -> int:
    """Seconds since the epoch for a WARC-Date / ISO date / Common Crawl id (`CC-MAIN-2023-50`); 0 if unknown.

    Crawl ids name a year and ISO week; a bare number is taken as a timestamp.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str) or not value.strip():
        return 0
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        match = _CRAWL_ID.search(text)
        if not match:
            return 0
        year, week = int(match.group(1)), int(match.group(2))
        try:
            parsed = datetime.fromisocalendar(year, max(1, min(week, 52)), 1)
        except ValueError:
            return 0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def document_time(meta: dict) -> int:
    """The crawl time of a document from its meta: `date`, else `crawl`, else `dump`."""
    for key in ("date", "crawl", "dump"):
        seconds = crawl_time(meta.get(key))
        if seconds:
            return seconds
    return 0
