"""Loading SAM: the embedded default, local checkpoints, the full hub model (4-bit/8-bit), adapter weights."""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig

from .modeling import SamForConditionalGeneration
from .processing import SamProcessor, quiet_transformers

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DEFAULT = REPO_ROOT / "checkpoints" / "minilink"
EMBEDDED_NAME = "embedded"

# Named presets: the base model on the hub plus (optionally) converted SAM adapter weights.
PRESETS = {
    "instructblip-vicuna-7b": "Salesforce/instructblip-vicuna-7b",
    "instructblip-vicuna-13b": "Salesforce/instructblip-vicuna-13b",
    "instructblip-flan-t5-xl": "Salesforce/instructblip-flan-t5-xl",
}
QUANTIZATIONS = ("auto", "4bit", "8bit", "none")
# Kept in 16/32 bit under bitsandbytes: everything but the language model (DESIGN.md §2).
NOT_QUANTIZED = ["vision_model", "qformer", "query_tokens", "language_projection", "guidance", "lm_head"]
ADAPTER_PREFIX = "guidance."
IDENTITY_WARNING = (
    "No SAM adapter weights are loaded: the exchange layers are zero, so guidance is the identity and "
    "SAM's answer equals the baseline's."
)


class SamLoadError(RuntimeError):
    """Weights that cannot be found or read; the message says what is missing and how to fix it."""


@dataclass
class ModelInfo:
    """What is loaded, for the CLI, the app and JSON results."""

    name: str
    source: str
    quantization: str
    device: str
    dtype: str
    adapter: str | None
    context: str
    exchange_layer: int
    num_query_tokens: int
    guidance_identity: bool

    @property
    def warning(self) -> str | None:
        return IDENTITY_WARNING if self.guidance_identity else None

    def to_dict(self) -> dict:
        return {**asdict(self), "warning": self.warning}


@dataclass
class LoadedSam:
    model: SamForConditionalGeneration
    processor: SamProcessor
    info: ModelInfo


def resolve_model(name_or_path: str | None) -> tuple[str, str]:
    """(where to load from, what kind of source that is): embedded, local or hub."""
    if name_or_path in (None, "", EMBEDDED_NAME):
        return str(EMBEDDED_DEFAULT), "embedded"
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path)), "local"
    if name_or_path in PRESETS:
        return PRESETS[name_or_path], "hub"
    if Path(name_or_path).suffix or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise SamLoadError(f"{name_or_path}: no such model directory, and not a hub id of the form owner/name")
    return name_or_path, "hub"


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def quantization_config(quantization: str, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=NOT_QUANTIZED,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED)
    return None


def load_sam(
    model: str | None = None,
    adapter: str | Path | None = None,
    quantization: str = "auto",
    device: str = "auto",
    dtype: torch.dtype | None = None,
    context: str | None = None,
    exchange_layer: int | None = None,
) -> LoadedSam:
    """Load SAM + processor from the embedded default (None), a local directory, a preset or a hub id.

    quantization "auto" means 4-bit NF4 for hub models on a GPU and none otherwise. Quantisation always
    happens on load from the full-precision checkpoint (a 4-bit model saved after a CPU forward pass reloads
    in a re-ordered layout, so we never save quantized weights).
    """
    if quantization not in QUANTIZATIONS:
        raise SamLoadError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    location, source = resolve_model(model)
    device = pick_device(device)
    if quantization == "auto":
        quantization = "4bit" if source == "hub" and device.startswith("cuda") else "none"
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    config_overrides = {k: v for k, v in {"context": context, "exchange_layer": exchange_layer}.items() if v is not None}
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    kwargs = {"dtype": dtype, "local_files_only": offline or source != "hub", **config_overrides}
    quant = quantization_config(quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device if device != "cuda" else 0}
    try:
        with quiet_transformers(progress=source == "hub"):
            sam = SamForConditionalGeneration.from_pretrained(location, **kwargs)
        processor = SamProcessor.from_pretrained(location, local_files_only=kwargs["local_files_only"])
    except (OSError, ValueError) as error:
        raise SamLoadError(missing_weights_message(location, source, error)) from None
    except SafetensorError as error:
        raise SamLoadError(f"Could not load the model in {location}: its weights are not a readable safetensors file ({error})") from None
    if quant is None:
        sam.to(device)
    if adapter is not None:
        load_adapter(sam, adapter)
    sam.eval()
    info = ModelInfo(
        name=model or EMBEDDED_NAME,
        source=source,
        quantization=quantization,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        adapter=Path(adapter).name if adapter is not None else None,
        context=sam.config.context,
        exchange_layer=sam.config.exchange_layer,
        num_query_tokens=sam.config.num_query_tokens,
        guidance_identity=sam.guidance_is_identity,
    )
    return LoadedSam(sam, processor, info)


def missing_weights_message(location: str, source: str, error: Exception) -> str:
    if source == "hub":
        return (
            f"Could not load {location!r}: it is not in the local Hugging Face cache and the hub could not be "
            f"reached ({error.__class__.__name__}). On a machine with internet run "
            f"`huggingface-cli download {location} --local-dir DIR`, copy DIR here and pass --model DIR "
            f"(or unset HF_HUB_OFFLINE if this machine can reach the hub)."
        )
    return f"Could not load the model in {location}: {str(error).splitlines()[0]}"


def adapter_state_dict(model: SamForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The SAM-specific weights (patch scorer and exchange layers)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(ADAPTER_PREFIX)}


def save_adapter(model: SamForConditionalGeneration, path: str | Path) -> None:
    save_file(adapter_state_dict(model), str(path), metadata={"format": "pt", "context": model.config.context})


def load_adapter(model: SamForConditionalGeneration, path: str | Path) -> list[str]:
    """Load SAM adapter weights (and any overrides of the base weights the file carries) from safetensors.

    Every key must name a parameter of the model with the same shape, or nothing is loaded.
    """
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise SamLoadError(f"adapter {path.name}: no such file") from None
    except (SafetensorError, OSError) as error:
        raise SamLoadError(f"adapter {path.name}: not a readable safetensors file ({error})") from None
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if unknown or mismatched:
        problems = ([f"unknown keys {unknown[:3]}"] if unknown else []) + ([f"wrong shapes {mismatched[:3]}"] if mismatched else [])
        raise SamLoadError(f"adapter {path.name} does not fit this model: {'; '.join(problems)}")
    with torch.no_grad():
        for key, tensor in state.items():
            own[key].copy_(tensor.to(own[key].dtype))
    return sorted(state)
