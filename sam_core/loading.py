"""Loading SAM: the embedded default, local checkpoints, the full hub model, 4-bit/8-bit quantisation, and SAM
adapter weights from a file or the Hugging Face Hub."""

import functools
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig

from .modeling import SamForConditionalGeneration
from .processing import SamProcessor, quiet_transformers

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# A checkout keeps the embedded checkpoint at the repository root; `pip install .` puts it inside the package.
EMBEDDED_DEFAULT = next(
    (path for path in (PACKAGE_DIR / "checkpoints" / "minilink", REPO_ROOT / "checkpoints" / "minilink") if path.is_dir()),
    REPO_ROOT / "checkpoints" / "minilink",
)
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
ADAPTER_FILENAME = "sam_adapter.safetensors"  # what `convert` writes into an upload folder; a Hub reference's default
ADAPTER_IN_CHECKPOINT = "in the checkpoint"
IDENTITY_WARNING = (
    "No SAM adapter weights are loaded: the exchange layers are zero, so guidance is the identity and "
    "SAM's answer equals the baseline's."
)
# `owner/name`, optionally `@revision` (branch, tag or commit) and `:filename` (default ADAPTER_FILENAME).
HUB_ADAPTER = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^:@\s]+))?(?::(?P<filename>[^:\s]+))?")

# bitsandbytes logs at import, on CPUs with AVX512-BF16, that an optional Hub kernel package is missing; it then
# uses its own kernels. The advice (download a kernel from the Hub) is not one an offline app should print.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class SamLoadError(RuntimeError):
    """Weights that cannot be found or read; the message says what is missing and how to fix it."""


@dataclass
class ModelInfo:
    """What is loaded, for the CLI, the app and JSON results."""

    name: str
    source: str
    quantization: str  # what is in use: "4bit", "8bit" or "none" ("auto" resolved)
    device: str
    dtype: str  # of everything not quantised, and the 4-bit layers' compute dtype
    adapter: str | None  # where SAM's adapter comes from: a file name, a Hub reference, ADAPTER_IN_CHECKPOINT, None
    context: str
    exchange_layer: int
    num_query_tokens: int
    guidance_identity: bool
    precision_note: str | None = None  # why the model runs in full precision where 4-bit was possible or asked
    weights_mb: float | None = None  # the weights' memory as loaded (4-bit layers: packed weights + statistics)
    adapter_tensors: dict[str, int] = field(default_factory=dict)  # tensors the adapter file set, per module

    @property
    def warning(self) -> str | None:
        return IDENTITY_WARNING if self.guidance_identity else None

    @property
    def precision(self) -> str:
        """In words, e.g. "4-bit NF4 language model, float32 elsewhere"."""
        if self.quantization == "4bit":
            return f"4-bit NF4 language model, {self.dtype} elsewhere"
        if self.quantization == "8bit":
            return f"8-bit (LLM.int8) language model, {self.dtype} elsewhere"
        return f"{self.dtype} throughout"

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "warning": self.warning}


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


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


@functools.cache
def four_bit_unavailable(device: str) -> str | None:
    """None where bitsandbytes runs NF4 on `device`, else why not (one line). Checked by quantising and running
    one small 4-bit layer there: an installed bitsandbytes without a backend for this device fails here, not
    halfway through loading a model."""
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 8, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
        with torch.no_grad():
            layer(torch.ones(2, 64, device=device))
    except Exception as error:  # ImportError, a missing native library, an unsupported device: all mean no 4-bit
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        return f"bitsandbytes cannot run 4-bit on {device} ({error.__class__.__name__}{': ' + reason if reason else ''})"
    return None


def resolve_quantization(quantization: str, device: str) -> tuple[str, str | None]:
    """`auto` → 4-bit NF4 wherever bitsandbytes runs it (CPU and GPU), else full precision; returns the
    quantisation in use and, when that is full precision, a one-line note saying why."""
    if quantization not in QUANTIZATIONS:
        raise SamLoadError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization == "none":
        return "none", "Full precision: quantization is set to none (SAM_QUANTIZATION / --quantization)."
    if quantization == "auto":
        reason = four_bit_unavailable(device)
        if reason is not None:
            return "none", f"Full precision: {reason}."
        return "4bit", None
    if quantization == "4bit" and (reason := four_bit_unavailable(device)) is not None:
        raise SamLoadError(f"--quantization 4bit: {reason}; use auto or none")
    return quantization, None


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


def keep_cpu_4bit_layout(model: torch.nn.Module) -> int:
    """Keep every 4-bit layer in bitsandbytes' standard layout on CPU; returns how many layers that concerns.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 re-packs a 4-bit layer's weights at its first inference
    forward and from then on multiplies in bfloat16 through a kernel without a backward: answers then depend on
    the CPU model, gradients through the layer are silently dropped (training after generation), and the
    re-packed weights are what a later save would write. The standard layout dequantises to the compute dtype
    (float32 here) on every CPU alike."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def weight_bytes(model: torch.nn.Module) -> int:
    """Memory of the weights as loaded: parameters and buffers at their storage size; a 4-bit weight is its
    packed bytes plus its quantisation statistics (absmax per block, double-quantised)."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        while state is not None:
            total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code, state.offset) if torch.is_tensor(t))
            state = state.state2
    return total


def load_sam(
    model: str | None = None,
    adapter: str | Path | None = None,
    quantization: str = "auto",
    device: str = "auto",
    dtype: torch.dtype | None = None,
    context: str | None = None,
    exchange_layer: int | None = None,
) -> LoadedSam:
    """Load SAM + processor from the embedded default (None), a local directory, a preset or a hub id, and
    optionally SAM adapter weights from a file or a Hub reference (`resolve_adapter`).

    quantization "auto" means 4-bit NF4 for the language model wherever bitsandbytes can run it (CPU or GPU),
    full precision elsewhere (`info.precision_note` says why). Quantisation always happens on load from the
    full-precision checkpoint: we never save quantised weights.
    """
    location, source = resolve_model(model)
    device = pick_device(device)
    quantization, precision_note = resolve_quantization(quantization, device)
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    adapter_path, adapter_label = resolve_adapter(adapter) if adapter is not None else (None, None)
    config_overrides = {k: v for k, v in {"context": context, "exchange_layer": exchange_layer}.items() if v is not None}
    kwargs = {"dtype": dtype, "local_files_only": hub_offline() or source != "hub", **config_overrides}
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
    else:
        keep_cpu_4bit_layout(sam)
    adapter_keys = load_adapter(sam, adapter_path, adapter_label) if adapter_path is not None else []
    sam.eval()
    identity = sam.guidance_is_identity
    info = ModelInfo(
        name=model or EMBEDDED_NAME,
        source=source,
        quantization=quantization,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        adapter=adapter_label if adapter_label is not None else (None if identity else ADAPTER_IN_CHECKPOINT),
        context=sam.config.context,
        exchange_layer=sam.config.exchange_layer,
        num_query_tokens=sam.config.num_query_tokens,
        guidance_identity=identity,
        precision_note=precision_note,
        weights_mb=round(weight_bytes(sam) / 2**20, 2),
        adapter_tensors=adapter_summary(adapter_keys),
    )
    return LoadedSam(sam, processor, info)


def missing_weights_message(location: str, source: str, error: Exception) -> str:
    if source == "hub":
        return (
            f"Could not load {location!r}: it is not in the local Hugging Face cache and the hub could not be "
            f"reached ({error.__class__.__name__}). On a machine with internet run "
            f"`hf download {location} --local-dir DIR`, copy DIR here and pass --model DIR "
            f"(or unset HF_HUB_OFFLINE if this machine can reach the hub)."
        )
    return f"Could not load the model in {location}: {str(error).splitlines()[0]}"


def resolve_adapter(reference: str | Path) -> tuple[Path, str]:
    """(a local file, how to name it) for SAM adapter weights given as a local .safetensors file or a Hub
    reference `owner/name[@revision][:filename]` (filename defaults to sam_adapter.safetensors).

    An existing file wins; a path that ends in .safetensors and names no Hub file (no `:`) is a local file. Hub
    files come through huggingface_hub's cache (downloaded once, HF_TOKEN for private repositories), and with
    HF_HUB_OFFLINE=1 only from that cache. Local files are named by their file name only (no server paths)."""
    text = str(reference)
    path = Path(text).expanduser()
    match = HUB_ADAPTER.fullmatch(text)
    local = path.is_file() or match is None or (":" not in text and path.suffix == ".safetensors")
    if local:
        if not path.is_file():
            raise SamLoadError(f"adapter {path.name}: no such file (nor a Hub reference owner/name[@revision][:file])")
        return path, path.name
    repo, revision, filename = match["repo"], match["revision"], match["filename"] or ADAPTER_FILENAME
    label = f"{repo}{'@' + revision if revision else ''}:{filename}"
    return Path(download_adapter(repo, filename, revision, label)), label


def download_adapter(repo: str, filename: str, revision: str | None, label: str) -> str:
    """The cached path of one Hub file, or a SamLoadError that says what is missing and what to do."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
        RepositoryNotFoundError, RevisionNotFoundError,
    )

    get = f"`hf download {repo} {filename}{' --revision ' + revision if revision else ''}`"
    try:
        return hf_hub_download(repo, filename, revision=revision, local_files_only=hub_offline())
    except LocalEntryNotFoundError:
        reach = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub could not be reached"
        raise SamLoadError(
            f"adapter {label}: not in the local Hugging Face cache and {reach}; run {get} on a machine with "
            "internet (it fills the cache) or pass the adapter as a local file"
        ) from None
    except GatedRepoError:
        raise SamLoadError(f"adapter {label}: {repo} is gated; accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise SamLoadError(f"adapter {label}: no repository {repo} on the Hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise SamLoadError(f"adapter {label}: {repo} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise SamLoadError(f"adapter {label}: {repo} has no file {filename!r}") from None
    except HFValidationError as error:
        raise SamLoadError(f"adapter {label}: not a valid Hub reference ({str(error).splitlines()[0]})") from None
    except (HfHubHTTPError, OSError) as error:
        raise SamLoadError(f"adapter {label}: download failed ({error.__class__.__name__}); try again or run {get}") from None


def adapter_state_dict(model: SamForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The SAM-specific weights (patch scorer and exchange layers)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(ADAPTER_PREFIX)}


def save_adapter(model: SamForConditionalGeneration, path: str | Path) -> None:
    save_file(adapter_state_dict(model), str(path), metadata={"format": "pt", "context": model.config.context})


def load_adapter(model: SamForConditionalGeneration, path: str | Path, name: str | None = None) -> list[str]:
    """Load SAM adapter weights (and any overrides of the base weights the file carries) from safetensors;
    returns the keys loaded. `name` is how messages call the file (default: its file name).

    Every key must name a parameter of the model with the same shape, or nothing is loaded (a quantised layer's
    packed weights have another shape: overrides of the language model need a full-precision load).
    """
    path = Path(path)
    name = name or path.name
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise SamLoadError(f"adapter {name}: no such file") from None
    except (SafetensorError, OSError) as error:
        raise SamLoadError(f"adapter {name}: not a readable safetensors file ({error})") from None
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if unknown or mismatched:
        problems = ([f"unknown keys {unknown[:3]}"] if unknown else []) + ([f"wrong shapes {mismatched[:3]}"] if mismatched else [])
        raise SamLoadError(f"adapter {name} does not fit this model: {'; '.join(problems)}")
    with torch.no_grad():
        for key, tensor in state.items():
            own[key].copy_(tensor.to(own[key].dtype))
    return sorted(state)


def adapter_summary(keys: list[str]) -> dict[str, int]:
    """Tensors loaded per module, two levels deep: {"guidance.patch_scorer": 2, "qformer.encoder": 180, ...}."""
    return dict(Counter(".".join(key.rsplit(".", 1)[0].split(".")[:2]) for key in keys))
