"""What leaves the server: no absolute server paths and no secrets in responses, on the page or in the log."""

import io
import os
import re

# An absolute POSIX path (not part of a URL or a relative path); only its last component may be shown.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"()\[\]{},;:]+/)*([^\s/'\"()\[\]{},;:]*)")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.IGNORECASE)


def secret_values() -> list[str]:
    """Values of environment variables named like secrets (HF_TOKEN, ...), longest first."""
    values = {value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8}
    return sorted(values, key=len, reverse=True)


def public_text(text: str) -> str:
    """Text with absolute server paths shortened to their last component and secret values masked."""
    for secret in secret_values():
        text = text.replace(secret, "***")
    return ABSOLUTE_PATH.sub(lambda match: match.group(1) or "/", text)


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
