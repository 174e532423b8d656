"""Strings made safe for the output they reach.

Test ids, image ids and Scores names may hold any character: a lone surrogate (a file name that is not
UTF-8, as Python decodes it), NUL and other control characters, ``#`` or ``?`` in a path. Each output
has its own rule, applied where the string is written:

* HTML and XML (JUnit properties): characters XML 1.0 does not allow (NUL, ESC, lone surrogates…)
  written as their escape (``\\x00``, ``\\udcff``), the rest as it is (jinja2 escapes markup).
* URLs (links to image files): each path segment percent-encoded.
* Hashes of ids: the UTF-8 bytes, surrogates passed through, so every id has one.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def digest(text: str, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-1 of ``text`` (any ``str``, lone surrogates included)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def xml_text(text: str) -> str:
    """``text`` with every character XML 1.0 forbids (NUL, ESC, lone surrogates…) written as an escape."""
    return _NOT_XML.sub(lambda match: ascii(match.group())[1:-1], text)


def url_path(path: str) -> str:
    """A relative POSIX path as a URL path: ``#``, ``?``, ``%``, spaces… percent-encoded, ``/`` kept."""
    return urllib.parse.quote(path.encode("utf-8", "surrogatepass"), safe="/")
