"""Refusals: one clear line for the person who sent the request and one line in the log, never a traceback. Anyone
can send bad input, so a refusal must not cost the log more than a line (unexpected failures keep theirs)."""

import logging
import re

import gradio as gr
import pydantic
from gradio.exceptions import ComponentProcessingError, InvalidPathError
from starlette.responses import PlainTextResponse

from sam_core.processing import shorten

from .privacy import public_text

LOG = logging.getLogger("sam_studio")
COMPONENT_INDEX = re.compile(r"component at index (\d+)")


def refusal(message: str) -> gr.Error:
    """The message for the page or the API client, logged as one line (paths and secrets redacted)."""
    message = public_text(" ".join(str(message).split()))
    LOG.info("refused: %s", shorten(message, 300))
    return gr.Error(message, print_exception=False)


def validation_message(block_fn, error: Exception) -> str:
    """Gradio's own refusal of a request's values, in one short line that names the field where Gradio says which."""
    if isinstance(error, InvalidPathError) or "not in the cache folder" in str(error):
        return "A file in the request was not uploaded to this app: upload it first (gradio_client's handle_file does)."
    if isinstance(error, ComponentProcessingError) and (index := COMPONENT_INDEX.search(str(error))):
        cause = error.__cause__ or error
        detail = (str(cause).splitlines() or [cause.__class__.__name__])[0]
        return f"{field_name(block_fn.inputs[int(index.group(1))])}: not a valid value ({shorten(detail, 120)})."
    if isinstance(error, pydantic.ValidationError):  # a file input's value is not file data: name that input
        fields = [block for block in block_fn.inputs if getattr(getattr(block, "data_model", None), "__name__", None) == error.title]
        return f"{field_name(fields[0]) if fields else error.title}: not a valid value (expected uploaded file data)."
    text = str(error.message if isinstance(error, gr.Error) else error).strip()
    first_line = text.splitlines()[0] if text else error.__class__.__name__
    return f"The request's values were refused: {shorten(first_line, 160)}"


def field_name(component) -> str:
    return component.label or component.get_block_name()


class Blocks(gr.Blocks):
    """gr.Blocks whose own checks of a request's values (a file nobody uploaded, a number out of a slider's range, a
    choice not offered, a value of the wrong type, too few values) refuse it like the app's checks do: one line
    on the page and in the log, instead of a traceback printed for every such request."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except Exception as error:
            raise refusal(validation_message(block_fn, error)) from None


class UploadLimit:
    """ASGI middleware for Gradio's upload route: Gradio caps each file (`max_file_size`) but takes up to 1000 files
    in one POST, queued or not. An upload whose body is over `max_bytes` (a request's worth of images) is refused
    with 413 before it is read; one that does not say its size (no Content-Length) with 411."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/upload"):
            length = dict(scope["headers"]).get(b"content-length", b"")
            refused = None
            if not length.isdigit():
                refused = 411, "An upload must say its size (Content-Length)."
            elif int(length) > self.max_bytes:
                refused = 413, f"Uploads are limited to {self.max_bytes // 2**20} MB per request; got {int(length) // 2**20} MB."
            if refused:
                LOG.info("refused: %s", refused[1])
                return await PlainTextResponse(refused[1], status_code=refused[0])(scope, receive, send)
        await self.app(scope, receive, send)
