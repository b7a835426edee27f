"""transformers' own common model tests, run on InstructBLIP and on SAM with the same tiny configs and inputs.

The tests are `ModelTesterMixin` from the installed transformers version's source distribution, which ships
tests/test_modeling_common.py (never copied into this repo). CI fetches it (`.ci/fetch-transformers-tests`) and
points TRANSFORMERS_TESTS at its tests/ folder; without it this module skips, saying so. The sdist lacks the
generation and export tester mixins that test_modeling_common imports: they are empty stand-ins here, so no
generation or torch.export tests run from it (SAM's generate contract is tested in test_contract.py).

The model tester below is ours, in the pattern of transformers' InstructBLIP tester, and the test class carries
the skips transformers' own InstructBLIP test class carries, with its reasons. SAM runs twice: with one image per
sample (the inputs InstructBLIP gets) and with two, where guidance acts (its exchange layers get random weights
after every initialisation, so the guided streams change the numbers).
"""

import importlib
import os
import sys
import types
import unittest
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration
from transformers import initialization as init

from sam_core import SamConfig, SamForConditionalGeneration

TESTS_DIR = os.environ.get("TRANSFORMERS_TESTS", "")
PACKAGE = "transformers_common_tests"


def import_model_tester_mixin(tests_dir: Path):
    """ModelTesterMixin from the sdist's tests/, imported as a package whose missing mixins are empty classes."""
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(tests_dir)]
    sys.modules[PACKAGE] = package
    for module, mixin in (("generation.test_utils", "GenerationTesterMixin"), ("exporters.test_export", "ExportTesterMixin")):
        folder = f"{PACKAGE}.{module.split('.')[0]}"
        sys.modules.setdefault(folder, types.ModuleType(folder))
        stand_in = types.ModuleType(f"{PACKAGE}.{module}")
        setattr(stand_in, mixin, type(mixin, (), {}))
        sys.modules[f"{PACKAGE}.{module}"] = stand_in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)  # marks transformers' own conftest registers
        return importlib.import_module(f"{PACKAGE}.test_modeling_common")


def sdist_tests_missing() -> str | None:
    """Why the common tests cannot run here, or None."""
    tests_dir = Path(TESTS_DIR)
    if not TESTS_DIR or not (tests_dir / "test_modeling_common.py").is_file():
        return (
            "transformers' common model tests are not here: set TRANSFORMERS_TESTS=$(.ci/fetch-transformers-tests), "
            f"the tests/ folder of the transformers {transformers.__version__} source distribution"
        )
    metadata = tests_dir.parent / "PKG-INFO"
    version = f"Version: {transformers.__version__}\n"
    if not metadata.is_file() or version not in metadata.read_text(encoding="utf-8"):
        return f"TRANSFORMERS_TESTS={TESTS_DIR} is not from transformers {transformers.__version__}, the installed version"
    return None


if (missing := sdist_tests_missing()) is not None:
    pytest.skip(missing, allow_module_level=True)

common = import_model_tester_mixin(Path(TESTS_DIR))
ModelTesterMixin, floats_tensor, ids_tensor = common.ModelTesterMixin, common.floats_tensor, common.ids_tensor


class TinyVisionLanguageTester:
    """Tiny InstructBLIP-family config (ViT, Q-Former, Llama) and inputs with `num_images` images per sample."""

    # batch 7: the eager-vs-SDPA tests pad smaller batches to 7 rows with random ids, placeholders included
    def __init__(self, parent, config_class, num_images=1, batch_size=7, text_length=7, num_query_tokens=4):
        self.parent, self.config_class, self.num_images = parent, config_class, num_images
        self.batch_size, self.text_length, self.num_query_tokens = batch_size, text_length, num_query_tokens
        self.seq_length = num_images * num_query_tokens + text_length  # what the LLM reads
        self.is_training = True
        self.image_token_index, self.pad_token_id, self.vocab_size = 4, 1, 99
        self.image_size, self.qformer_length = 16, 6
        self.vision_config = {
            "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": self.image_size, "patch_size": 4, "initializer_range": 0.02,
        }
        self.qformer_config = {
            "vocab_size": self.vocab_size, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "cross_attention_frequency": 1, "max_position_embeddings": 64,
        }
        self.text_config = {
            "model_type": "llama", "vocab_size": self.vocab_size, "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": self.pad_token_id,
            "tie_word_embeddings": False,
        }

    def get_config(self):
        return self.config_class(
            vision_config=self.vision_config, qformer_config=self.qformer_config, text_config=self.text_config,
            num_query_tokens=self.num_query_tokens, image_token_index=self.image_token_index,
        )

    def prepare_config_and_inputs_for_common(self):
        batch = self.batch_size
        text = ids_tensor([batch, self.text_length], self.vocab_size).clamp(min=5)  # no special ids in the text
        placeholders = torch.full((batch, self.num_images * self.num_query_tokens), self.image_token_index)
        input_ids = torch.cat([placeholders, text], dim=1).to(text.device)
        qformer_mask = torch.ones(batch, self.qformer_length, dtype=torch.long, device=text.device)
        qformer_mask[0, -2:] = 0  # one padded instruction
        image_shape = [3, self.image_size, self.image_size]
        pixels = floats_tensor([batch, *image_shape] if self.num_images == 1 else [batch, self.num_images, *image_shape])
        inputs = {
            "pixel_values": pixels,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "qformer_input_ids": ids_tensor([batch, self.qformer_length], self.vocab_size),
            "qformer_attention_mask": qformer_mask,
            "labels": input_ids,
        }
        return self.get_config(), inputs


class InstructBlipFamilyTest(ModelTesterMixin):
    """The common tests with the skips of transformers' InstructBLIP test class (their reasons quoted)."""

    config_class, num_images = InstructBlipConfig, 1
    all_generative_model_classes = ()  # transformers: "has a custom input structure" for the generation tests
    additional_model_inputs = ["input_ids", "qformer_input_ids", "qformer_attention_mask"]
    test_resize_embeddings = True
    _is_composite = True

    def setUp(self):
        self.model_tester = TinyVisionLanguageTester(self, self.config_class, self.num_images)
        if self.config_class is SamConfig:
            # The mixin picks the tests for an image-text-to-text head by transformers' own table of model names;
            # SAM is in that family through its Auto registration (sam_core/__init__.py), so list it there too.
            names = pytest.MonkeyPatch()
            names.setitem(common.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, SamConfig.model_type, "SamForConditionalGeneration")
            self.addCleanup(names.undo)

    @unittest.skip(reason="transformers: test_attention_outputs = False (attentions are in language_model_outputs)")
    def test_attention_outputs(self):
        pass

    @unittest.skip(reason="transformers: Hidden_states is tested in individual model tests")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="transformers: InstructBlipForConditionalGeneration doesn't support inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="transformers: Tied weights are tested in individual model tests")
    def test_tied_weights_keys(self):
        pass

    @unittest.skip(reason="transformers: Retain_grad is tested in individual model tests")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="transformers: InstructBlipModel does not have input/output embeddings")
    def test_model_get_set_embeddings(self):
        pass


class InstructBlipCommonTest(InstructBlipFamilyTest, unittest.TestCase):
    all_model_classes = (InstructBlipForConditionalGeneration,)


def skip_blip_named_tests(test_class):
    """test_eager_matches_sdpa_inference reads InstructBLIP's outputs only for classes with "blip" in their name
    (`"blip" in model_class.__name__.lower()`), else a top-level `hidden_states` that InstructBLIP's output class
    does not have: it cannot pass for SAM's class name. test_contract.py compares eager and SDPA attention instead."""
    for name in dir(test_class):
        if name.startswith("test_eager_matches_sdpa_inference_"):  # the parameterized cases
            reason = "the mixin finds InstructBLIP's language_model_outputs by 'blip' in the class name"
            setattr(test_class, name, unittest.skip(reason)(lambda self: None))
    return test_class


@skip_blip_named_tests
class SamCommonTest(InstructBlipFamilyTest, unittest.TestCase):
    all_model_classes = (SamForConditionalGeneration,)
    config_class = SamConfig
    # One image per sample: guidance does not act (SAM is then InstructBLIP), so its parameters get no gradient.
    test_all_params_have_gradient = False


@skip_blip_named_tests
class SamGuidedCommonTest(InstructBlipFamilyTest, unittest.TestCase):
    """Two images per sample, with exchange layers that are not the identity."""

    all_model_classes = (SamForConditionalGeneration,)
    config_class, num_images = SamConfig, 2

    def setUp(self):
        super().setUp()
        active = pytest.MonkeyPatch()
        original = SamForConditionalGeneration._init_weights

        def random_exchange(model, module):
            original(model, module)
            guidance = model.__dict__["_modules"].get("guidance")  # absent while the parent's __init__ runs
            if guidance is not None and module in (guidance.image_to_context, guidance.context_to_image):
                init.normal_(module.weight, std=0.5)
                init.normal_(module.bias, std=0.1)

        active.setattr(SamForConditionalGeneration, "_init_weights", random_exchange)
        self.addCleanup(active.undo)
