"""One record, one line: control characters escaped in every log record.

Log text carries values from requests (a device path, a request id, a
certificate subject) and from the tools os-brick runs.  A newline in
one of them would start what looks like a record of its own (a forged
``CRITICAL`` line), a NUL cuts lines short in some readers, and other
C0/C1 characters move the cursor of a terminal.  So every record is
escaped on its way to the handler: the message and every string field
attached to it become one line, with such characters written as
``\\n``, ``\\x00``, ``\\u2028``; an exception's traceback keeps its
lines, escaped the same way, each indented, so that no line of it can
look like the start of another record.
"""

from __future__ import annotations

import logging
import re

# C0, DEL and C1, and the Unicode line and paragraph separators that
# some viewers break lines at.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(ch: str) -> str:
    code = ord(ch)
    return _NAMED.get(ch) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )


_TABLE = {
    code: _escaped(chr(code))
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
_TABLE_KEEP_NEWLINES = {k: v for k, v in _TABLE.items() if k != ord("\n")}

# What a traceback's lines start with in the log, after the first.
INDENT = "  "


def escape(text: str) -> str:
    """``text`` on one line: control characters written as escapes."""
    if _CONTROL.search(text) is None:
        return text  # nearly every line: one search
    return text.translate(_TABLE)


def escape_block(text: str) -> str:
    """A multi-line block (a traceback): each line escaped and indented."""
    lines = text.translate(_TABLE_KEEP_NEWLINES).split("\n")
    return "\n".join(INDENT + line for line in lines)


# The attributes every LogRecord has; the others are a call's fields
# (``extra=``), which may hold request values (REQUEST_ID, VOL_ID).
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime"}


class EscapeFilter(logging.Filter):
    """A handler filter that makes each record one line of plain text.

    Installed after the scrubbing filter (a secret is found in the raw
    text, then the text is escaped).  It formats the message itself and
    drops the args, as the scrubbing filter does, and leaves the
    traceback formatted, escaped and indented on the record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Escape ``record`` in place; never drops it."""
        record.msg = escape(record.getMessage())
        record.args = None
        for key, value in record.__dict__.items():
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = escape(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(
                record.exc_info
            )
        if record.exc_text and not record.exc_text.startswith(INDENT):
            record.exc_text = escape_block(record.exc_text)
        if record.stack_info and not record.stack_info.startswith(INDENT):
            record.stack_info = escape_block(record.stack_info)
        return True
