"""Load a model from a hub id, a local checkpoint directory, a ``.gguf`` file or an embedded name."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miprun.errors import MiprunError, did_you_mean
from miprun.models.adapters import ArchitectureAdapter, adapter_for
from miprun.models.embedded import EMBEDDED, embedded_checkpoint


@dataclass
class LoadedModel:
    """A model ready for pruning: the module, its tokenizer, its adapter and where it came from."""

    model: Any
    tokenizer: Any
    adapter: ArchitectureAdapter
    source: dict[str, Any]


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a local file or directory rather than a hub id."""
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or Path(spec).exists() or spec.count("/") > 1


def source_locations(model: Any) -> list[Path]:
    """The local files and directories a run of ``model`` (a name, path or hub id, or a
    :class:`LoadedModel`) reads its weights from, found without loading or fetching anything: a
    checkpoint directory or ``.gguf`` file itself, miprun's cache (where embedded models and converted
    ``.gguf`` files live), or the Hugging Face hub cache."""
    if isinstance(model, LoadedModel):
        return [Path(model.source[key]) for key in ("path", "converted") if key in model.source]
    spec = str(model)
    if spec in EMBEDDED:
        from miprun.models.embedded import cache_dir

        return [cache_dir()]
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            from miprun.models.embedded import cache_dir

            return [path, cache_dir()]
        return [path]
    from huggingface_hub.constants import HF_HUB_CACHE

    return [Path(HF_HUB_CACHE)]


DEVICE_MAP_WORDS = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's placement strategies; any other string names one device."""

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
"""The weights files a checkpoint directory holds (sharded ones included)."""


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu`` and every CUDA / XPU / MPS device present."""
    import torch

    found = ["cpu"]
    found += [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found += [f"xpu:{i}" for i in range(torch.xpu.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device_map(device_map: str | dict, flag: str = "--device-map") -> str | dict:
    """``device_map`` if every device it names exists here; else a one-line error listing the
    devices there are and how to choose one with ``flag`` (``--device`` names one device only)."""
    import torch

    named = [device_map] if isinstance(device_map, str) else [v for v in device_map.values() if isinstance(v, str)]
    for device in named:
        if device in DEVICE_MAP_WORDS or device == "disk":
            continue
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError):
            what = f"neither a device nor one of {', '.join(DEVICE_MAP_WORDS)}" if flag == "--device-map" else "not a device"
            raise MiprunError(f"{flag} '{device}' is {what}; "
                              f"devices here: {', '.join(available_devices())}") from None
        index = parsed.index or 0
        present = parsed.type == "cpu" or (
            parsed.type == "cuda" and torch.cuda.is_available() and index < torch.cuda.device_count()) or (
            parsed.type == "mps" and torch.backends.mps.is_available()) or (
            parsed.type == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available() and index < torch.xpu.device_count())
        if not present:
            raise MiprunError(f"device '{device}' is not available on this machine (devices here: "
                              f"{', '.join(available_devices())}); pass {flag} cpu{', auto' if flag == '--device-map' else ''} or one of those")
    return device_map


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load ``spec``: an embedded name (``smollm2-135m``), a local directory, a ``.gguf`` file, or a
    Hugging Face hub id.

    :param dtype: ``"auto"`` (the checkpoint's dtype; float32 for GGUF), ``"float32"``,
        ``"bfloat16"`` or ``"float16"``.
    :param device_map: passed to ``from_pretrained`` (accelerate), e.g. ``"auto"`` to spread a model
        larger than one device across GPUs, CPU and disk.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from miprun.options import check_dtype

    check_dtype(dtype)
    start = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if dtype != "auto":
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = check_device_map(device_map)
    source: dict[str, Any] = {"spec": spec}
    if spec in EMBEDDED:
        location: str | Path = embedded_checkpoint(spec)
        source.update(kind="embedded", path=str(location), description=EMBEDDED[spec]["description"],
                      hub_id=EMBEDDED[spec]["hub_id"])
    elif looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise MiprunError(f"model path '{spec}' does not exist; pass a checkpoint directory, a .gguf file or a hub id")
        if path.is_file() and path.suffix == ".gguf":
            from miprun.models.embedded import cache_dir
            from miprun.models.gguf_cache import converted_checkpoint

            try:  # de-quantised once per file content, then read as a checkpoint directory
                location, digest, cached = converted_checkpoint(path, cache_dir())
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MiprunError(f"cannot load model '{spec}': {first}") from exc
            source.update(kind="gguf", path=str(path.resolve()), sha256=digest, converted=str(location),
                          conversion_cached=cached)
        elif path.is_dir() and (path / "config.json").exists():
            location = path
            source.update(kind="directory", path=str(path.resolve()))
        else:
            raise MiprunError(f"'{spec}' is neither a checkpoint directory (with config.json) nor a .gguf file")
    else:
        location = spec
        source.update(kind="hub")
    from safetensors import SafetensorError

    local = source["kind"] != "hub"
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise _load_error(spec, source, exc, "") from exc
    if source["kind"] == "directory" and all(next(Path(location).glob(pattern), None) is None
                                                    for pattern in WEIGHT_FILES):
        raise MiprunError(f"cannot load model '{spec}': the directory has config.json but no weights file "
                          f"({', '.join(WEIGHT_FILES)}); save the model there or point --model at the checkpoint")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        if local:  # transformers' first line is not a sentence here ("… from one of")
            raise MiprunError(f"cannot load model '{spec}': its tokenizer files (tokenizer.json, tokenizer.model or "
                              f"vocabulary files) are missing or unreadable; copy them from the model it was saved "
                              f"from") from exc
        raise _load_error(spec, source, exc, "") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # a damaged weights file raises SafetensorError
        damaged = isinstance(exc, SafetensorError)
        raise _load_error(spec, source, exc, "; a weights file is damaged: re-save or re-download the checkpoint"
                          if damaged else "") from exc
    model.eval()
    left_out = parts_not_loaded(config, model)
    if left_out:
        source["not_loaded"] = left_out
    source["load_seconds"] = round(time.perf_counter() - start, 3)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model), source=source)


def _load_error(spec: str, source: dict[str, Any], exc: Exception, fix: str) -> MiprunError:
    """The one-line error for a checkpoint transformers could not load: the first line of its
    message, a did-you-mean for a misspelt embedded name, and ``fix``."""
    first = str(exc).strip().splitlines()[0].rstrip(": ") if str(exc).strip() else type(exc).__name__
    hint = did_you_mean(spec, list(EMBEDDED)) if source["kind"] == "hub" and "/" not in spec else ""
    return MiprunError(f"cannot load model '{spec}'{hint}: {first}{fix}")


def parts_not_loaded(config: Any, model: Any) -> list[str]:
    """The sub-models (``vision_config``, ``audio_config``, …) of a multimodal checkpoint whose
    ``config`` says it has them that the causal-LM class did not load: transformers loads a Qwen3.5
    checkpoint's language model alone, so the pruned checkpoint has no vision tower. Empty where the
    loaded model is the checkpoint's own type (Gemma 3's multimodal class keeps every part)."""
    if config.model_type == model.config.model_type:
        return []
    loaded = type(model.config)
    return sorted(name for name, kind in (getattr(config, "sub_configs", None) or {}).items()
                  if getattr(config, name, None) is not None and kind is not loaded)
