"""What leaves the server: no absolute server paths and no secrets in responses, on the page or in the log."""

import io
import logging
import os
import re
import sys

_NAME = r"[^\s/'\"()\[\]{},;:<>]"  # a character of a path component that cannot end a path
# Text the redaction passes over or shortens, tried in this order at each position:
# a URL with a host (kept: "https://huggingface.co/a/b"), a quoted absolute path (spaces allowed: shortened to its
# last component), a bare absolute path (inner components may hold spaces; after ":" too, as in "a:/srv/b").
TEXT_WITH_PATHS = re.compile(
    r"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s/'\"<>]+[^\s'\"<>]*)"
    r"|(?P<quote>['\"])(?P<quoted>/[^'\"\n]*)(?P=quote)"
    rf"|(?<![\w.~/-])(?P<bare>/+(?:{_NAME}(?:[^\n/'\"()\[\]{{}},;:<>]*{_NAME})?/+)*(?P<last>{_NAME}*))"
)
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.IGNORECASE)


def server_paths(text: str) -> list[str]:
    """The absolute paths in `text` that `public_text` would shorten (URLs are not paths)."""
    paths = (match.group("quoted") or match.group("bare") for match in TEXT_WITH_PATHS.finditer(text) if not match.group("url"))
    return [path for path in paths if path.strip("/")]  # a lone "/" ("3 / 4") names nothing


def secret_values() -> list[str]:
    """Values of environment variables named like secrets (HF_TOKEN, ...), longest first."""
    values = {value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8}
    return sorted(values, key=len, reverse=True)


def _shortened(match: re.Match) -> str:
    if match.group("url"):
        return match.group("url")
    if match.group("quoted"):
        quote = match.group("quote")
        return quote + (match.group("quoted").rstrip("/").rsplit("/", 1)[-1] or "/") + quote
    return match.group("last") or "/"


def public_text(text: str) -> str:
    """Text with absolute server paths shortened to their last component and secret values masked."""
    for secret in secret_values():
        text = text.replace(secret, "***")
    return TEXT_WITH_PATHS.sub(_shortened, text)


class RedactedLog(io.TextIOBase):
    """A log stream (stdout, stderr) passing everything through `public_text`: Gradio's and the libraries'
    tracebacks and warnings keep file names and line numbers, not the server's directories."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(public_text(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()


def redact_output() -> None:
    """Pass stdout and stderr through `public_text`, including the logging handlers made before this call: a
    library's handler keeps the stream it was created with (transformers makes one on import), so it is pointed at
    the redacted stream too."""
    wrapped = {id(sys.stdout): RedactedLog(sys.stdout), id(sys.stderr): RedactedLog(sys.stderr)}
    sys.stdout, sys.stderr = wrapped[id(sys.stdout)], wrapped[id(sys.stderr)]
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in wrapped:
                handler.setStream(wrapped[id(handler.stream)])
