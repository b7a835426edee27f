"""Inputs for SAM: image loading, the paper's prompt templates, and the multi-image processor."""

import re
import unicodedata
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature, InstructBlipProcessor
from transformers.utils import logging as transformers_logging

QFORMER_MAX_TOKENS = 128  # the authors truncate the Q-Former instruction (from the left) at 128 tokens
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
IMAGE_MARKER = re.compile(r"\{image#(\d+)\}")
STORY_QUESTION = "With the narratives paired with the initial images, how would you conclude the story using the last picture?"


@contextmanager
def quiet_transformers(progress: bool = False):
    """Silence transformers' warnings that a SAM or InstructBLIP config is "not its own model type", and its
    progress bars unless asked (they help for a 7B download, not for a 1 MB checkpoint)."""
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    if not progress:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


class ImageLoadError(ValueError):
    """An input that is not a readable image; the message names it and says why."""


class PromptError(ValueError):
    """A prompt the model cannot take; the message says why and what to change."""


def load_image(image) -> Image.Image:
    """A PIL RGB image from a PIL image, a path, or an (H, W[, C]) array; EXIF rotation applied,
    transparency composited on white, any mode (palette, 16-bit, CMYK, grayscale) converted, the first frame
    of an animation. Files declaring more than Pillow's `Image.MAX_IMAGE_PIXELS` are refused before their
    pixels are decoded (a few-KB file can declare 100000×100000 pixels: a decompression bomb)."""
    if isinstance(image, (str, Path)):
        name = Path(image).name
        try:
            with Image.open(image) as opened:
                if opened.width * opened.height > Image.MAX_IMAGE_PIXELS:
                    raise ImageLoadError(too_large_message(name, f"{opened.width}×{opened.height} pixels"))
                opened.load()
                image = opened.copy() if opened.format != "GIF" else opened.convert("RGBA")
        except FileNotFoundError:
            raise ImageLoadError(f"{name}: no such file") from None
        except Image.DecompressionBombError:
            raise ImageLoadError(too_large_message(name, "over twice that many pixels")) from None
        except (UnidentifiedImageError, OSError) as error:
            raise ImageLoadError(f"{name}: not a readable image ({error.__class__.__name__})") from None
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ImageLoadError(f"an array image must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array)
    elif not isinstance(image, Image.Image):
        raise ImageLoadError(f"cannot read an image from a {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def too_large_message(name: str, declared: str) -> str:
    return f"{name}: too large to decode safely ({declared} declared; at most {Image.MAX_IMAGE_PIXELS:,} pixels)"


def clean_text(text: str) -> str:
    """NFC-normalised text with control and format characters (NUL, terminal escapes, bidi overrides,
    zero-width marks, lone surrogates) removed and runs of whitespace made one space: tokenizers treat those
    characters inconsistently and logs should not carry them."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(c if not c.isspace() else " " for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Cs"))
    return " ".join(kept.split())


def check_image_markers(prompt: str, num_images: int) -> None:
    """`{image#k}` markers must name one of the N images (1-based)."""
    beyond = [digits for digits in IMAGE_MARKER.findall(prompt) if len(digits) > 6 or not 1 <= int(digits) <= num_images]
    if beyond:
        only = "is only 1 image" if num_images == 1 else f"are only {num_images} images"
        raise PromptError(f"the prompt refers to {{image#{beyond[0]}}} but there {only} ({{image#1}} to {{image#{num_images}}})")


def count_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def group_caption_prompt(num_images: int) -> str:
    """The paper's group-captioning instruction (for a single image: sum up that picture)."""
    if num_images == 1:
        return "Sum up the picture in a single statement."
    return f"Sum up the common factor in these {count_word(num_images)} pictures in a single statement."


def storytelling_prompt(captions: Sequence[str], question: str = STORY_QUESTION) -> str:
    """`question{image#1}Caption#1:c1…{image#N}Caption#N:` with the last caption left to the model:
    pass the N-1 captions of the first images."""
    parts = [question]
    for index, caption in enumerate(list(captions) + [""], start=1):
        parts.append(f"{{image#{index}}}Caption#{index}:{clean_text(caption)}")
    return "".join(parts)


def question_prompt(question: str) -> str:
    return clean_text(question)


class SamProcessor:
    """Builds SAM's inputs for image sets: pixel values (B, N, 3, H, W), the Q-Former instruction ids and
    the LLM ids with N·K image placeholders before the prompt (transformers 5's InstructBLIP layout).

    Wraps (not forks) transformers' `InstructBlipProcessor`, so any InstructBLIP checkpoint's processor loads.
    """

    def __init__(self, processor: InstructBlipProcessor):
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.qformer_tokenizer = processor.qformer_tokenizer
        self.num_query_tokens = processor.num_query_tokens
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token.content)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "SamProcessor":
        with quiet_transformers():
            return cls(InstructBlipProcessor.from_pretrained(path, **kwargs))

    def save_pretrained(self, path) -> None:
        self.processor.save_pretrained(path)

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """(N, 3, H, W) for one image set."""
        rgb = [load_image(image) for image in images]
        return self.image_processor(rgb, return_tensors="pt")["pixel_values"]

    def __call__(self, images, prompts, answers=None) -> BatchFeature:
        """images: one image set (a list) or a batch of sets with the same N; prompts: str or one per set.
        With `answers`, builds a training batch: [images][prompt][answer</s>] right-padded, with labels on
        the answer only; without, a generation batch with the prompt left-padded."""
        image_sets = [images] if not images or not isinstance(images[0], (list, tuple)) else list(images)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if any(len(image_set) == 0 for image_set in image_sets):
            raise ValueError("Each sample needs at least one image.")
        if len({len(image_set) for image_set in image_sets}) > 1:
            raise ValueError("All image sets in a batch must hold the same number of images.")
        if len(prompts) != len(image_sets):
            raise ValueError(f"Got {len(prompts)} prompts for {len(image_sets)} image sets.")

        pixel_values = torch.stack([self.pixel_values(image_set) for image_set in image_sets])  # (B, N, 3, H, W)
        qformer = self.qformer_tokenizer(
            prompts, padding="longest", truncation=True, max_length=QFORMER_MAX_TOKENS, return_tensors="pt"
        )
        num_placeholders = len(image_sets[0]) * self.num_query_tokens
        prompt_ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        if answers is None:
            input_ids, attention_mask, labels = self._generation_layout(prompt_ids, num_placeholders)
        else:
            answers = [answers] if isinstance(answers, str) else list(answers)
            answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
            input_ids, attention_mask, labels = self._training_layout(prompt_ids, answer_ids, num_placeholders)
        features = {
            "pixel_values": pixel_values,
            "qformer_input_ids": qformer["input_ids"],
            "qformer_attention_mask": qformer["attention_mask"],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if labels is not None:
            features["labels"] = labels
        return BatchFeature(features)

    def _generation_layout(self, prompt_ids, num_placeholders):
        """[image × N·K][pad …][<s> prompt]: the authors' layout (visual tokens, then the left-padded prompt)."""
        longest = max(len(ids) for ids in prompt_ids)
        pad = self.tokenizer.pad_token_id
        rows, masks = [], []
        for ids in prompt_ids:
            padding = longest - len(ids)
            rows.append([self.image_token_id] * num_placeholders + [pad] * padding + ids)
            masks.append([1] * num_placeholders + [0] * padding + [1] * len(ids))
        return torch.tensor(rows), torch.tensor(masks), None

    def _training_layout(self, prompt_ids, answer_ids, num_placeholders):
        """[image × N·K][<s> prompt][answer </s>][pad …], labels only on answer and </s>."""
        if len(answer_ids) != len(prompt_ids):
            raise ValueError(f"Got {len(answer_ids)} answers for {len(prompt_ids)} prompts.")
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        sequences = [p + a + [eos] for p, a in zip(prompt_ids, answer_ids)]
        longest = max(len(s) for s in sequences)
        rows, masks, labels = [], [], []
        for prompt, sequence in zip(prompt_ids, sequences):
            padding = longest - len(sequence)
            rows.append([self.image_token_id] * num_placeholders + sequence + [pad] * padding)
            masks.append([1] * (num_placeholders + len(sequence)) + [0] * padding)
            answer_part = sequence[len(prompt):]
            labels.append([-100] * (num_placeholders + len(prompt)) + answer_part + [-100] * padding)
        return torch.tensor(rows), torch.tensor(masks), torch.tensor(labels)

    def decode(self, token_ids) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
