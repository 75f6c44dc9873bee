"""One record, one line: hostagent.logtext on real logging handlers."""

from __future__ import annotations

import io
import logging

from hostagent.logtext import INDENT, EscapeFilter

FORGED = "2026-12-07 13:00:00,000 CRITICAL hostagent: root pwned"


def logger_to(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(EscapeFilter())
    log = logging.getLogger(f"logtext-test-{id(stream)}")
    log.propagate = False
    log.handlers = [handler]
    log.setLevel(logging.DEBUG)
    return log


def test_message_args_and_fields_are_escaped() -> None:
    out = io.StringIO()
    log = logger_to(out)
    log.info(
        "attached %s",
        f"/dev/x\n{FORGED}\x00\t\x1b[2J\x85\u2028",
        extra={"REQUEST_ID": "a\nb"},
    )
    text = out.getvalue()
    assert text == (
        "INFO "
        + log.name
        + ": attached /dev/x\\n"
        + FORGED
        + "\\x00\\t\\x1b[2J\\x85\\u2028\n"
    )
    assert len(text.splitlines()) == 1


def test_a_traceback_keeps_its_lines_indented_and_escaped() -> None:
    out = io.StringIO()
    log = logger_to(out)
    try:
        raise ValueError(f"bad path /dev/x\n{FORGED}\x00")
    except ValueError:
        log.exception("failed")
    first, *rest = out.getvalue().splitlines()
    assert first == f"ERROR {log.name}: failed"
    assert rest[0] == INDENT + "Traceback (most recent call last):"
    assert all(line.startswith(INDENT) for line in rest), rest
    assert any(line.endswith(FORGED + "\\x00") for line in rest), rest
    assert "\x00" not in out.getvalue()


def test_plain_text_is_left_alone() -> None:
    out = io.StringIO()
    log = logger_to(out)
    log.warning("volume %s: 100%% done, path C:\\x", "v1")
    assert (
        out.getvalue()
        == f"WARNING {log.name}: volume v1: 100% done, path C:\\x\n"
    )
