"""Keep secrets (CHAP passwords, keys, tokens) out of logs and results.

Two layers, because connectors and their tools are not ours to audit:

* :func:`redact` replaces the values of secret-looking keys in nested
  data before it is logged or returned.
* :data:`SCRUBBER` remembers every secret value the agent has been handed
  and erases it from any text on its way out (log lines, error messages),
  whatever library produced that text.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

MASK = "***"

# Matched case-insensitively against the whole key, so "auth_password",
# "discovery_auth_password", "AUTH_USERNAME" and "keyring" are caught but
# "secret_type" (a harmless enum in Cinder's RBD data) is not hidden.
_SECRET_KEY = re.compile(
    r"(.*_)?(password|passwd|secret|token|keyring|key|auth_username"
    r"|username|private_key|secret_uuid)",
    re.IGNORECASE,
)
_NOT_SECRET = frozenset({"secret_type", "key_id"})


# Results carry the same few key names over and over (every volume's
# connection info); the answer for each is kept.  Bounded, because the
# keys come from clients.
@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when values under ``key`` must never be shown."""
    return key.lower() not in _NOT_SECRET and bool(_SECRET_KEY.fullmatch(key))


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret values replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v is not None
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def secret_values(value: Any) -> set[str]:
    """Every non-empty string stored under a secret key in ``value``."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and is_secret_key(k):
                found.update(_strings(v))
            else:
                found |= secret_values(v)
    elif isinstance(value, list):
        for v in value:
            found |= secret_values(v)
    return found


def _strings(value: Any) -> set[str]:
    if isinstance(value, (dict, list)):
        items = value.values() if isinstance(value, dict) else value
        return set().union(*(_strings(v) for v in items)) if items else set()
    if value is None or isinstance(value, bool):
        return set()
    text = str(value)
    return {text} if text else set()


class Scrubber:
    """Erases known secret strings from text.

    A host with many volumes knows thousands of secrets; the pattern that
    finds them is a trie (see :func:`_trie_pattern`), so a text costs about
    the same whatever their number.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.generation = 0

    @property
    def active(self) -> bool:
        """True once a secret was learned (until then text is unchanged)."""
        return self._pattern is not None

    def remember(self, value: Any) -> None:
        """Learn the secret values found in ``value`` (a connection info)."""
        new = secret_values(value)
        if not new or new <= self._secrets:
            return
        with self._lock:
            self._secrets = self._secrets | new
            self._pattern = _compile(self._secrets)
            # Tells holders of scrubbed data that it may be stale now.
            self.generation += 1

    def scrub(self, text: str) -> str:
        """``text`` with every remembered secret replaced by ``"***"``."""
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(MASK, text)

    def scrub_data(self, value: Any) -> Any:
        """:func:`redact` plus :meth:`scrub` on every string inside."""
        return _scrub_data(value, self._pattern)


def _compile(secrets: frozenset[str]) -> re.Pattern[str]:
    """One pattern for all ``secrets``.

    Where several match at one place the longest wins, so a secret that
    contains another is erased whole rather than leaving its remainder
    behind.
    """
    try:
        return re.compile(_trie_pattern(secrets))
    except (RecursionError, re.error, OverflowError):
        # Pathological secrets (thousands nested in each other): the plain
        # alternation, longest first, has the same meaning.
        ordered = sorted(secrets, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, ordered)))


def _trie_pattern(words: frozenset[str]) -> str:
    """A regular expression matching any of ``words``, longest first.

    A plain alternation makes the regex engine try every word at every
    position of a text (about 300 us for a short line against 2,000
    secrets); a trie tries one character at a time.  Greedy optional
    tails make the longest word win where one is a prefix of another.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True  # a word ends here

    def build(node: dict[str, Any]) -> str:
        branches = [
            re.escape(ch) + build(child)
            for ch, child in sorted(node.items())
            if ch
        ]
        if not branches:
            return ""
        body = (
            branches[0]
            if len(branches) == 1
            else "(?:" + "|".join(branches) + ")"
        )
        if "" not in node:
            return body
        return f"(?:{body})?" if len(branches) == 1 else body + "?"

    return build(trie)


def _scrub_data(value: Any, pattern: re.Pattern[str] | None) -> Any:
    # One walk that both redacts and scrubs: results hold a connection
    # info per volume, and volumes_info returns every volume.
    if isinstance(value, str):
        return value if pattern is None else pattern.sub(MASK, value)
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v is not None
                else _scrub_data(v, pattern)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub_data(v, pattern) for v in value]
    return value


SCRUBBER = Scrubber()


class ScrubFilter(logging.Filter):
    """A handler filter that erases remembered secrets from each record.

    It formats the record's message itself and drops the args, so a secret
    passed as a ``%s`` argument is caught too; exception text is cached on
    the record scrubbed for the same reason.
    """

    def __init__(self, scrubber: Scrubber = SCRUBBER) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub ``record`` in place; never drops it."""
        if not self.scrubber.active:
            return True
        record.msg = self.scrubber.scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(
                record.exc_info
            )
        if record.exc_text:
            record.exc_text = self.scrubber.scrub(record.exc_text)
        return True
