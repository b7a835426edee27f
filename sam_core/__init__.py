"""SAM studio core: the SAM model on transformers' InstructBLIP, its processor, loading and CLI."""

from .configuration import SamConfig
from .modeling import SamForConditionalGeneration, SamOutput, SamVisualTokens
from .processing import SamProcessor, group_caption_prompt, load_image, question_prompt, storytelling_prompt

__all__ = [
    "SamConfig",
    "SamForConditionalGeneration",
    "SamOutput",
    "SamProcessor",
    "SamVisualTokens",
    "group_caption_prompt",
    "load_image",
    "question_prompt",
    "storytelling_prompt",
]
