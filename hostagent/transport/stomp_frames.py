"""STOMP 1.2 frames: bytes to :class:`Frame` objects and back, no I/O.

:class:`Parser` reads frames as the spec says: heart-beat EOLs between
frames skipped, a body read up to ``content-length`` when the header is
there and else up to the NUL, headers unescaped (except in CONNECT,
which 1.0 clients send unescaped), the first of repeated headers
winning, and nothing over ``max_message_bytes`` buffered.
:func:`encode` writes them.  What the frames mean is
:mod:`hostagent.transport.stomp_session`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_READ_CHUNK = 65536


@dataclass
class Frame:
    """One STOMP frame; the first of repeated headers wins (spec)."""

    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class FrameError(Exception):
    """The bytes are not a STOMP 1.2 frame; the message says why."""

    def __init__(
        self, message: str, data: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class FrameTooLarge(FrameError):
    """A frame over ``max_message_bytes``."""


_ESCAPES = {"\\r": "\r", "\\n": "\n", "\\c": ":", "\\\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(.?)", re.DOTALL)
_TO_ESCAPE = {":": "\\c", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TO_ESCAPE_RE = re.compile(r"[\r\n:\\]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def unescape(text: str) -> str:
    """A header name or value as the spec's escapes say (``\\r \\n \\c
    \\\\``); any other escape is a fatal error."""
    if "\\" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        try:
            return _ESCAPES[m.group(0)]
        except KeyError:
            raise FrameError(
                f"invalid escape sequence {m.group(0)!r} in a header"
            ) from None

    return _ESCAPE_RE.sub(one, text)


def escape(text: str) -> str:
    """The reverse of :func:`unescape`."""
    if ":" in text or "\\" in text or "\n" in text or "\r" in text:
        return _TO_ESCAPE_RE.sub(lambda m: _TO_ESCAPE[m.group(0)], text)
    return text


def encode(frame: Frame) -> bytes:
    """A frame's bytes; ``content-length`` is set from the body.

    CONNECTED is not escaped, as the spec says (for 1.0 clients).
    """
    raw = frame.command == "CONNECTED"
    parts = [frame.command, "\n"]
    for k, v in frame.headers.items():
        parts += (
            (k, ":", v, "\n") if raw else (escape(k), ":", escape(v), "\n")
        )
    body = frame.body
    if body or frame.command in ("MESSAGE", "ERROR"):
        parts.append(f"content-length:{len(body)}\n")
    parts.append("\n")
    return b"".join(("".join(parts).encode(), body, b"\0"))


class Parser:
    """Bytes in (:meth:`feed`), frames out (:meth:`next`).

    Heart-beats (EOLs between frames) are skipped.  A body is read up to
    ``content-length`` when the header is there, else up to the NUL.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._pos = 0  # where the current frame starts
        self._scan = 0  # where to look for the end of its headers
        self._head: tuple[Frame, int, int] | None = None

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        if self._pos > _READ_CHUNK and self._pos * 2 > len(self._buf):
            shift = self._pos
            del self._buf[:shift]
            self._pos = 0
            self._scan -= shift
            if self._head is not None:
                frame, body, length = self._head
                self._head = (frame, body - shift, length)
        self._buf += data

    @property
    def started(self) -> bool:
        """Part of a frame is buffered (not just heart-beats)."""
        self._skip_eols()
        return self._pos < len(self._buf)

    def _skip_eols(self) -> None:
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] in b"\r\n":
            pos += 1
        if pos != self._pos:
            self._pos = pos
            self._scan = max(self._scan, pos)

    def next(self) -> Frame | None:
        """The next complete frame, or None until more bytes come.

        Raises :class:`FrameError` (or :class:`FrameTooLarge`).
        """
        if self._head is None:
            self._skip_eols()
            buf, pos = self._buf, self._pos
            m = _HEAD_END.search(buf, max(pos, self._scan - 3))
            if m is None:
                self._scan = len(buf)
                if len(buf) - pos > self.limit:
                    raise self._too_large()
                return None
            frame = _head(bytes(buf[pos : m.start()]))
            length = _content_length(frame)
            if length is not None and m.end() - pos + length + 1 > self.limit:
                raise self._too_large()
            self._head = (frame, m.end(), -1 if length is None else length)
        frame, body, length = self._head
        buf = self._buf
        if length >= 0:
            end = body + length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise FrameError(
                    f"the {length}-byte body (content-length) is not "
                    "followed by a NUL byte"
                )
        else:
            end = buf.find(b"\0", max(body, self._scan))
            if end < 0:
                self._scan = len(buf)
                if len(buf) - self._pos > self.limit:
                    raise self._too_large()
                return None
        if end + 1 - self._pos > self.limit:
            raise self._too_large()
        frame.body = bytes(buf[body:end])
        self._head = None
        self._pos = self._scan = end + 1
        return frame

    def _too_large(self) -> FrameTooLarge:
        return FrameTooLarge(
            f"frame larger than {self.limit} bytes (max_message_bytes)",
            {"max_message_bytes": self.limit},
        )


def _head(raw: bytes) -> Frame:
    """The command and headers of a frame (no body yet)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise FrameError("the command or a header is not UTF-8") from None
    lines = text.split("\n")
    name = lines[0].rstrip("\r")
    if not name:
        raise FrameError("a frame without a command")
    # CONNECT is never escaped (1.0 compatibility), so values may
    # carry backslashes and colons as they are.
    raw_values = name in ("CONNECT", "STOMP")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.rstrip("\r").partition(":")
        if not sep or not key:
            raise FrameError(
                f"header line {_shorten(line)!r} is not name:value"
            )
        if not raw_values:
            key, value = unescape(key), unescape(value)
        headers.setdefault(key, value)
    return Frame(name, headers)


def _content_length(frame: Frame) -> int | None:
    text = frame.headers.get("content-length")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise FrameError(
            f"content-length {_shorten(text)!r} is not a non-negative integer"
        )
    return int(text)


def _shorten(text: str) -> str:
    return text[:40] + "..." if len(text) > 40 else text
