"""logrus v1.9.3's TextFormatter, as rke v1.6.3 uses it (everything to stdout).

- stdout not a TTY: `time="2024-10-04T15:40:30-07:00" level=info msg="..."`, the value quoted
  with Go's %q only when it has characters other than `[A-Za-z0-9-._/@^+]`.
- stdout a TTY: `\\x1b[36mINFO\\x1b[0m[0012] <message padded to 44> `.
- `--quiet` discards everything, including the final FATA line.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime

PANIC, FATAL, ERROR, WARNING, INFO, DEBUG, TRACE = range(7)
_NAMES = ("panic", "fatal", "error", "warning", "info", "debug", "trace")
_COLORS = {DEBUG: 37, TRACE: 37, WARNING: 33, ERROR: 31, FATAL: 31, PANIC: 31, INFO: 36}
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")
_BASE = time.time()


def go_quote(text: str) -> str:
    """Go's strconv.Quote (what `%q` does to a string)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x80 or ch.isprintable():
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _value(text: str) -> str:
    if text and all(ch in _SAFE for ch in text):
        return text
    if not text:
        return text
    return go_quote(text)


def rfc3339(moment: float | None = None) -> str:
    """Go's time.RFC3339 in local time: `2006-01-02T15:04:05-07:00`, `Z` for UTC."""
    stamp = datetime.fromtimestamp(time.time() if moment is None else moment).astimezone()
    text = stamp.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class Logger:
    def __init__(self, out=None) -> None:
        self.out = out if out is not None else sys.stdout
        self.level = INFO
        self.quiet = False
        self._lock = threading.Lock()
        try:
            self.tty = self.out.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def format(self, level: int, message: str) -> str:
        if self.tty:
            text = message.removesuffix("\n")
            seconds = int(time.time() - _BASE)
            name = _NAMES[level].upper()[:4]
            return f"\x1b[{_COLORS[level]}m{name}\x1b[0m[{seconds:04d}] {text:<44} \n"
        line = f'time="{rfc3339()}" level={_NAMES[level]}'
        if message:
            line += f" msg={_value(message)}"
        return line + "\n"

    def log(self, level: int, message: str) -> None:
        if level > self.level or self.quiet:
            return
        text = self.format(level, message)
        with self._lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (BrokenPipeError, ValueError):
                pass

    def info(self, message: str) -> None:
        self.log(INFO, message)

    def warning(self, message: str) -> None:
        self.log(WARNING, message)

    def error(self, message: str) -> None:
        self.log(ERROR, message)

    def debug(self, message: str) -> None:
        self.log(DEBUG, message)

    def trace(self, message: str) -> None:
        self.log(TRACE, message)

    def fatal(self, message: str) -> None:
        self.log(FATAL, message)


log = Logger()
