"""Security headers of the service's browser pages: a Content-Security-Policy that admits only
what the page needs, and no framing, MIME sniffing or referrer leaks."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping

# Inline <script> and <style> elements (without a src): what a page's CSP must hash.
_INLINE = re.compile(
    r"<(script|style)\b(?![^>]*\bsrc=)[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL
)


def inline_hashes(html: str) -> dict[str, list[str]]:
    """The CSP sources ('sha256-...') of the inline scripts and styles of `html`, by element."""
    found: dict[str, list[str]] = {"script": [], "style": []}
    for element, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        found[element.lower()].append(f"'sha256-{digest}'")
    return found


def content_security_policy(
    *,
    scripts: Iterable[str] = (),
    styles: Iterable[str] = (),
    images: Iterable[str] = ("data:",),
    fonts: Iterable[str] = ("data:",),
) -> str:
    """A policy of this origin only (`'self'`), plus the extra sources given per kind; no
    plugins, no <base>, no form posts, no framing."""

    def sources(extra: Iterable[str]) -> str:
        return " ".join(["'self'", *extra])

    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {sources(scripts)}",
            f"style-src {sources(styles)}",
            f"img-src {sources(images)}",
            f"font-src {sources(fonts)}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


# Every response of a page or of its files: no sniffing a script out of text, no framing.
ASSET_HEADERS: Mapping[str, str] = {"X-Content-Type-Options": "nosniff"}


def page_headers(policy: str) -> dict[str, str]:
    """The headers of an HTML page under `policy`."""
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
