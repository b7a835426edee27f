"""From what a page or an API call sends to validated service calls: the images, the prompt and the decoding.
Refusals and failures reach the visitor as one-line gr.Error messages, never tracebacks."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from .refusals import refusal
from .service import Decoding, InputError, ResourceError, SamService

LOG = logging.getLogger("sam_studio")


@contextmanager
def refusals(action: str):
    """Input and resource problems become their own message; anything else a generic one (logged once)."""
    try:
        yield
    except (InputError, ResourceError) as error:
        raise refusal(str(error)) from None
    except gr.Error:
        raise
    except Exception as error:  # never a traceback on the page; the next request still works
        LOG.exception("%s failed", action)
        raise refusal(f"{action.capitalize()} failed ({error.__class__.__name__}). Try fewer images or tokens.") from None


def prepare(service: SamService, gallery, task, question, captions, decoding_values, exact_captions=False):
    """(images, prompt, Decoding) for a request, or an InputError saying what to change."""
    images = service.images(gallery)
    prompt = service.prompt(task, len(images), question, list(captions), exact_captions)
    return images, prompt, Decoding(*decoding_values)


def compare_states(service: SamService, gallery, task, question, captions, decoding_values, exact_captions=False) -> Iterator[dict]:
    """The service's growing answers for a request."""
    with refusals("generation"):
        images, prompt, decoding = prepare(service, gallery, task, question, captions, decoding_values, exact_captions)
        yield from service.compare(images, prompt, decoding)
