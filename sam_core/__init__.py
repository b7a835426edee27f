"""SAM studio core: the SAM model on transformers' InstructBLIP, its processor, loading and CLI."""

from .startup import collector_paused

with collector_paused():  # torch and transformers: see sam_core.startup
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
