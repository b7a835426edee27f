"""Tiny SAM models built from configs: for tests, benchmarks and the shipped embedded checkpoint.

The tokenizers are word-level fast tokenizers built with `tokenizers`, so a tiny model needs no download.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BlipImageProcessorPil, InstructBlipProcessor, PreTrainedTokenizerFast

from .configuration import SamConfig
from .modeling import SamForConditionalGeneration

IMAGE_TOKEN = "<image>"
LLM_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]
QFORMER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]

# Enough words for the paper's prompt templates and a simple world of coloured shapes.
BASE_WORDS = """
sum up the common factor in these two three four five six seven eight nine ten pictures picture images image a an
single statement with narratives paired initial how would you conclude story using last caption # { } : . , ? !
what is shared all of them each one there are appears every shows is in at on left right top bottom middle
red green blue yellow orange purple pink white black gray brown cyan
circle square triangle star heart diamond cross ring moon hexagon arrow bolt
small big large tiny huge color colour where which character then and it he she they was were saw found
""".split()


def build_word_tokenizer(words: list[str], specials: list[str], bos: str, eos: str) -> Tokenizer:
    """A lowercase word-level tokenizer (punctuation split off) that wraps every text in bos … eos markers
    as given by the template: `bos $A` for the LLM, `[CLS] $A [SEP]` for the Q-Former."""
    vocab = {token: index for index, token in enumerate(dict.fromkeys(specials + [w.lower() for w in words]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    single = f"{bos} $A" if eos is None else f"{bos} $A {eos}"
    special_ids = [(bos, vocab[bos])] + ([] if eos is None else [(eos, vocab[eos])])
    tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=special_ids)
    return tokenizer


def tiny_processor(words: list[str] = BASE_WORDS, image_size: int = 32, num_query_tokens: int = 4):
    """InstructBLIP processor with word-level tokenizers for the LLM and the Q-Former."""
    llm = PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(words, LLM_SPECIALS, "<s>", None),
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
        truncation_side="left",
    )
    llm.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    qformer = PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(words, QFORMER_SPECIALS, "[CLS]", "[SEP]"),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        truncation_side="left",
    )
    images = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return InstructBlipProcessor(images, llm, qformer, num_query_tokens=num_query_tokens)


def tiny_config(processor: InstructBlipProcessor, **overrides) -> SamConfig:
    """A SAM config small enough to run in milliseconds on a CPU, wired to the processor's vocabularies."""
    llm_tokenizer, qformer_tokenizer = processor.tokenizer, processor.qformer_tokenizer
    image_size = processor.image_processor.size["height"]
    text_config = {
        "model_type": "llama",
        "vocab_size": len(llm_tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": llm_tokenizer.bos_token_id,
        "eos_token_id": llm_tokenizer.eos_token_id,
        "pad_token_id": llm_tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    text_config.update(overrides.pop("text_config", {}))
    vision_config = {
        "hidden_size": 40,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
        "initializer_range": 0.02,  # InstructBLIP's default (1e-10) makes a random ViT blind to its input
    }
    vision_config.update(overrides.pop("vision_config", {}))
    qformer_config = {
        "vocab_size": len(qformer_tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "cross_attention_frequency": 1,
        "pad_token_id": qformer_tokenizer.pad_token_id,
        "max_position_embeddings": 256,
    }
    qformer_config.update(overrides.pop("qformer_config", {}))
    return SamConfig(
        vision_config=vision_config,
        qformer_config=qformer_config,
        text_config=text_config,
        num_query_tokens=processor.num_query_tokens,
        image_token_index=llm_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **overrides,
    )


def tiny_model(processor: InstructBlipProcessor, seed: int = 0, **overrides) -> SamForConditionalGeneration:
    """Random tiny SAM; query tokens are drawn at random too (InstructBLIP zero-inits them)."""
    torch.manual_seed(seed)
    model = SamForConditionalGeneration(tiny_config(processor, **overrides))
    with torch.no_grad():
        model.query_tokens.normal_(std=0.5)
    return model.eval()


def save_tiny_checkpoint(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random tiny SAM + processor in the Hugging Face format the loader reads."""
    path = Path(path)
    processor = tiny_processor()
    tiny_model(processor, seed=seed, **overrides).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a random tiny SAM checkpoint (untrained; for tests and plumbing).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(save_tiny_checkpoint(args.out, seed=args.seed))


if __name__ == "__main__":
    main()
