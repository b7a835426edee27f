"""SAM studio core: the SAM model on transformers' InstructBLIP, its processor, loading and CLI."""

from .startup import collector_paused

with collector_paused():  # torch and transformers: see sam_core.startup
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .configuration import SamConfig
    from .modeling import SamForConditionalGeneration, SamOutput, SamVisualTokens
    from .processing import SamProcessor, group_caption_prompt, load_image, question_prompt, storytelling_prompt

# A saved SAM checkpoint (model_type "sam_instructblip") loads through the Auto classes once sam_core is imported.
AutoConfig.register(SamConfig.model_type, SamConfig, exist_ok=True)
AutoModelForImageTextToText.register(SamConfig, SamForConditionalGeneration, exist_ok=True)

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
