"""Keep secrets (CHAP passwords, keys, tokens) out of logs and results.

Two layers, because connectors and their tools are not ours to audit:

* :func:`redact` replaces the values of secret-looking keys in nested
  data.  Results (volumes_info, attach answers, events) are masked this
  way, by key alone.
* :data:`SCRUBBER` erases the secret values of the volumes on this host
  and of the calls in progress from free text on its way out (log lines,
  error messages), whatever library produced that text.  Only values of
  at least :data:`MIN_SCRUB_LENGTH` characters: see :func:`secret_values`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

MASK = "***"

# Secret values shorter than this are not erased from free text.  CHAP
# secrets are 12 to 16 characters (RFC 3720 asks for at least 12 bytes),
# Ceph keys 40, and Cinder generates 16-character CHAP passwords and
# 20-character user names; below 6 characters a value ("0", "abc", "lun")
# would be found in unrelated text far more often than it is a secret.
# os-brick's own lines that carry a CHAP password (the iscsiadm command
# lines, its call traces) go through oslo's mask_password, which masks
# it whatever its length; a user name it does not mask.
MIN_SCRUB_LENGTH = 6

# How long after a change the main pattern is recompiled (on a thread).
MERGE_DELAY = 0.2

# Matched against the whole key, once normalized (see normalize_key):
# "auth_password", "discovery_auth_password", "AUTH_USERNAME", "keyring",
# "AuthPassword", "privateKey", "auth-password" and "Password " are all
# caught, but "secret_type" (a harmless enum in Cinder's RBD data) and
# "auth_method" are not hidden.  The keys that name a whole subtree of
# credentials ("credentials", "auth", "secrets", "keys") match too: what
# is under them is masked whole, whatever its own keys are called.
_SECRET_KEY = re.compile(
    r"(.*_)?(pass_?(word|wd|phrase)|secrets?|tokens?|key_?ring|keys?"
    r"|user_?name|private_?key|secret_?uuid|credentials?|creds|auth)"
)
_NOT_SECRET = frozenset({"secret_type", "key_id"})

# Where camelCase turns into snake_case: "authPassword", "CHAPSecret".
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^0-9a-z]+")


def normalize_key(key: str) -> str:
    """``key`` as the secret rule sees it: snake_case, lower case.

    "AuthPassword", "auth-password", "AUTH PASSWORD" and " auth_password"
    all read "auth_password"; full-width and other compatibility forms
    of letters read as the plain ones.
    """
    text = unicodedata.normalize("NFKC", key)
    text = _CAMEL.sub("_", text).lower()
    return _SEPARATORS.sub("_", text).strip("_")


# Results carry the same few key names over and over (every volume's
# connection info); the answer for each is kept.  Bounded, because the
# keys come from clients.
@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when values under ``key`` must never be shown.

    The one rule for results, error data, log text and events.
    """
    name = normalize_key(key)
    return name not in _NOT_SECRET and bool(_SECRET_KEY.fullmatch(name))


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
    """The strings under secret keys in ``value`` that text scrubbing uses.

    Only strings of at least :data:`MIN_SCRUB_LENGTH` characters: a
    shorter value would match unrelated text (a password "0" turned
    every zero in the logs into ``***``).  Numbers and booleans are never
    learned: no connector's credential is one, and ``3260`` or ``true``
    are everywhere in log text.  All of them are still masked by key
    wherever they appear in structured data (:func:`redact`).
    """
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
    if isinstance(value, str) and len(value) >= MIN_SCRUB_LENGTH:
        return {value}
    return set()


class Scrubber:
    """Erases the secrets of live volumes and calls from free text.

    Secrets are held by owners: a stored volume (its ``vol_id``) or a call
    in progress (:meth:`holding`).  A secret is erased while at least one
    owner holds it, and forgotten when the last one lets go, so the set is
    that of the volumes on this host, not of every request ever seen.

    The pattern that finds them is a trie (see :func:`_trie_pattern`), so
    a text costs about the same whatever their number; compiling it for
    1,000 secrets takes tens of milliseconds, too long for the event loop
    at every attach.  So there are two: the *main* pattern, recompiled on
    a thread of its own a moment after a change, and a small *recent* one
    for the secrets learned since, compiled at once.  Text goes through
    the recent one first.  A main secret that contains a recent one (a
    keyring holding a user name) is put in the recent pattern too, so
    that it is erased whole there instead of losing only its middle.
    Until the main pattern is recompiled it still finds forgotten
    secrets; each match is checked against the held ones (see
    :func:`_sub_known`), so forgetting takes effect at once.
    """

    def __init__(self, merge_delay: float = MERGE_DELAY) -> None:
        self._lock = threading.Lock()
        self._merge_delay = merge_delay
        self._held: dict[Hashable, frozenset[str]] = {}
        self._count: dict[str, int] = {}  # secret -> owners holding it
        # The secrets compiled into the main pattern, and the same joined
        # by NULs, where one C-speed search tells whether a new secret is
        # inside any of them.
        self._main: frozenset[str] = frozenset()
        self._main_text = ""
        self._main_pattern: re.Pattern[str] | None = None
        self._recent: frozenset[str] = frozenset()
        self._pending: set[str] = set()  # held, not in main: what recent is
        # What scrub() runs, in order; replaced whole, read without lock.
        self._patterns: tuple[re.Pattern[str], ...] = ()
        # The merge thread, started at the first change, waits on this.
        self._wake = threading.Condition(self._lock)
        self._merge_wanted = False
        self._merger: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """True while a secret is held (until then text is unchanged)."""
        return bool(self._patterns)

    def known(self) -> frozenset[str]:
        """The secrets held now (what :meth:`scrub` erases, at least)."""
        with self._lock:
            return frozenset(self._count)

    def settled(self) -> bool:
        """True when the main pattern finds exactly the held secrets."""
        with self._lock:
            return self._main == self._count.keys()

    def hold(self, owner: Hashable, value: Any) -> None:
        """Let ``owner`` hold the secrets in ``value`` instead of its own.

        ``value`` is a connection info (or anything holding some); with
        none in it, ``owner`` holds nothing any more.
        """
        self._hold(owner, frozenset(secret_values(value)))

    def hold_many(self, values: Iterable[tuple[Hashable, Any]]) -> None:
        """:meth:`hold` for each ``(owner, value)``, then compile.

        At start-up, over every row: ``values`` may be a generator, so
        no more than one decoded value need exist at a time.
        """
        with self._lock:
            for owner, value in values:
                self._set(owner, frozenset(secret_values(value)))
        self.flush()

    def release(self, owner: Hashable) -> None:
        """``owner`` holds nothing any more."""
        if owner not in self._held:
            return
        with self._lock:
            self._set(owner, frozenset())
            self._publish()

    @contextlib.contextmanager
    def holding(self, value: Any) -> Iterator[None]:
        """Hold the secrets in ``value`` while the block runs."""
        secrets = frozenset(secret_values(value))
        if not secrets:
            yield
            return
        owner = object()
        self._hold(owner, secrets)
        try:
            yield
        finally:
            self.release(owner)

    def flush(self) -> None:
        """Compile the main pattern now, on this thread, from all held."""
        with self._lock:
            target = frozenset(self._count)
            if target == self._main:
                return
        # Outside the lock: compiling 1,000 secrets takes tens of ms.
        pattern = _compile(target) if target else None
        with self._lock:
            self._set_main(target, pattern)

    def scrub(self, text: str) -> str:
        """``text`` with every held secret replaced by ``"***"``."""
        for pattern in self._patterns:
            text = _sub_known(pattern, text, self._count)
        return text

    def scrub_data(self, value: Any) -> Any:
        """:func:`redact` plus :meth:`scrub` on every string inside.

        For data that may carry free text (an error's ``data``), not for
        results: a client chooses its own secrets, and one that picks
        ``/dev/`` as its password must not change anybody's paths.
        """
        return _scrub_data(value, self.scrub)

    def _hold(self, owner: Hashable, new: frozenset[str]) -> None:
        if new == self._held.get(owner, frozenset()):
            return  # the usual case: an attached volume seen again
        with self._lock:
            self._set(owner, new)
            self._publish()

    # -- under the lock ----------------------------------------------------

    def _set(self, owner: Hashable, new: frozenset[str]) -> None:
        old = self._held.pop(owner, frozenset())
        if new:
            self._held[owner] = new
        for s in new - old:
            count = self._count.get(s, 0)
            self._count[s] = count + 1
            if not count and s not in self._main:
                self._pending.add(s)
        for s in old - new:
            self._count[s] -= 1
            if not self._count[s]:
                del self._count[s]
                self._pending.discard(s)

    def _publish(self) -> None:
        """Recompile the recent pattern; have the main one merged later."""
        if self._pending != self._recent:
            self._set_recent(frozenset(self._pending))
        if self._pending or len(self._count) != len(self._main):
            self._merge_later()

    def _set_main(
        self, main: frozenset[str], pattern: re.Pattern[str] | None
    ) -> None:
        self._main = main
        self._main_text = "\0".join(main)
        self._main_pattern = pattern
        self._pending = {s for s in self._count if s not in main}
        self._set_recent(frozenset(self._pending))

    def _set_recent(self, recent: frozenset[str]) -> None:
        self._recent = recent
        words = set(recent)
        for s in recent:
            if s in self._main_text:
                words.update(m for m in self._main if s in m)
        patterns = [_compile(frozenset(words))] if words else []
        if self._main_pattern is not None:
            patterns.append(self._main_pattern)
        self._patterns = tuple(patterns)

    def _merge_later(self) -> None:
        self._merge_wanted = True
        if self._merger is None:
            # One thread for good: starting one costs milliseconds on a
            # busy host, waking it costs nothing.
            self._merger = threading.Thread(
                target=self._merge, name="scrub-merge", daemon=True
            )
            self._merger.start()
        else:
            self._wake.notify()

    # -- on the merge thread -----------------------------------------------

    def _merge(self) -> None:
        while True:
            with self._wake:
                while not self._merge_wanted:
                    self._wake.wait()
                self._merge_wanted = False
            # A burst of attaches (100 at once) is merged in one compile.
            time.sleep(self._merge_delay)
            self.flush()


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


def _sub_known(
    pattern: re.Pattern[str], text: str, known: Mapping[str, int]
) -> str:
    """``text`` with the ``known`` secrets that ``pattern`` finds masked.

    ``pattern`` may also find secrets no longer held.  Every secret that
    matches at one place is a prefix of the longest one matching there,
    so where the pattern found a forgotten secret the longest held one at
    that place is the longest held prefix of the match.
    """
    match = pattern.search(text)
    if match is None:
        return text  # nearly every line: one search
    out: list[str] = []
    done = 0
    while match is not None:
        start, end = match.span()
        word = match.group()
        if word not in known:
            end = start + next(
                (
                    n
                    for n in range(len(word) - 1, MIN_SCRUB_LENGTH - 1, -1)
                    if word[:n] in known
                ),
                0,
            )
        if end > start:
            out += (text[done:start], MASK)
            done = end
            match = pattern.search(text, end)
        else:
            match = pattern.search(text, start + 1)
    out.append(text[done:])
    return "".join(out)


def _scrub_data(value: Any, scrub: Callable[[str], str]) -> Any:
    # One walk that both redacts and scrubs.
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v is not None
                else _scrub_data(v, scrub)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub_data(v, scrub) for v in value]
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
