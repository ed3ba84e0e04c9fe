"""Turn a checkpoint archive (a PEFT-layout adapter folder under Tinker's names, see peft_export.py)
into something other tools load as is:

- `to_peft`: the same adapter under PEFT's names (the LM head's LoRA is `lm_head`), for
  `peft.PeftModel.from_pretrained` and vLLM.
- `merge_into_base`: the base model's Hugging Face folder with W + (alpha/r) * B @ A written into every
  adapted weight, plus the base's tokenizer files, for `AutoModelForCausalLM.from_pretrained`.

The merge works on the base folder's tensors shard by shard (no model is built), adding each delta in
float64 and storing it in the weight's own dtype. Our LM-head LoRA changes only the output matrix: on
a base with tied embeddings it gets an `lm_head.weight` of its own and `tie_word_embeddings` becomes
false, since merging into the tied matrix would also move the input embeddings.

`python -m lathe_worker.export --adapter DIR [--peft OUT] [--merged OUT [--base NAME_OR_FOLDER] [--models-dir DIR]]`"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError
from .lora import UNEMBED_TARGET
from .models.loading import INDEX_FILE, read_json, weight_map_of
from .models.registry import ModelRegistry
from .peft_export import TINKER_UNEMBED

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
# Files of a model folder that are not weights or config.json: tokenizer, chat template, generation defaults.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


def _read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = Path(folder)
    config = read_json(folder / ADAPTER_CONFIG)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError("model_files_missing", f"adapter folder {folder} has no {ADAPTER_WEIGHTS}")
    if config.get("use_rslora") or config.get("use_dora"):
        raise UserError("peft_export_unsupported", "rsLoRA and DoRA adapters are not supported")
    return config, load_file(folder / ADAPTER_WEIGHTS)


def _write_atomically(out: Path, write) -> None:
    """Write into a hidden sibling, then rename: an interrupted export never leaves a half folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError("invalid_field", f"output folder {out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def to_peft(adapter_dir: Path, out: Path) -> None:
    """Rewrite an archive folder under PEFT's names.

    Example: `to_peft(Path("archive"), Path("adapter"))`; then `PeftModel.from_pretrained(hf, "adapter")`
    """
    config, tensors = _read_adapter(adapter_dir)
    tinker_head, peft_head = f"{PREFIX}{TINKER_UNEMBED}.", f"{PREFIX}{UNEMBED_TARGET}."
    renamed = {peft_head + k.removeprefix(tinker_head) if k.startswith(tinker_head) else k: v for k, v in tensors.items()}
    tinker_leaf = TINKER_UNEMBED.rsplit(".", 1)[-1]
    config["target_modules"] = [UNEMBED_TARGET if t == tinker_leaf else t for t in config["target_modules"]]

    def write(tmp: Path) -> None:
        save_file(renamed, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    _write_atomically(out, write)


def lora_deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Base weight name -> (alpha/r) * B @ A (float64), from a folder under either naming."""
    config, tensors = _read_adapter(adapter_dir)
    scale = float(config["lora_alpha"]) / float(config["r"])
    deltas = {}
    for name, a in tensors.items():
        if not name.endswith(".lora_A.weight"):
            continue
        b = tensors.get(name.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise UserError("invalid_model_files", f"adapter has {name} but no matching lora_B")
        module = name.removesuffix(".lora_A.weight").removeprefix(PREFIX)
        if module == TINKER_UNEMBED:
            module = UNEMBED_TARGET
        deltas[f"{module}.weight"] = scale * (b.double() @ a.double())
    return deltas


def merge_into_base(adapter_dir: Path, base_folder: Path, out: Path) -> None:
    """Write `base_folder` with the adapter merged in, as a Hugging Face folder at `out`.

    Example: `merge_into_base(Path("archive"), registry.resolve("lathe/tiny-qwen3"), Path("merged"))`
    """
    base_folder = Path(base_folder)
    deltas = lora_deltas(adapter_dir)
    config = read_json(base_folder / "config.json")
    weight_map = weight_map_of(base_folder)
    head = f"{UNEMBED_TARGET}.weight"
    untie = head in deltas and head not in weight_map
    if untie and not config.get("tie_word_embeddings", False):
        raise UserError("invalid_model_files", f"base model {base_folder} has no {head}")
    embed_file = weight_map.get("model.embed_tokens.weight")
    missing = sorted(k for k in deltas if k not in weight_map and not (untie and k == head))
    if missing:
        raise UserError("invalid_model_files", f"the adapter changes {missing}, which base model {base_folder} does not have")

    def write(tmp: Path) -> None:
        new_map = dict(weight_map)
        for file in sorted(set(weight_map.values())):
            with safe_open(base_folder / file, framework="pt") as f:
                shard = {name: f.get_tensor(name) for name in f.keys()}
            for name, tensor in shard.items():
                if name in deltas:
                    shard[name] = (tensor.double() + deltas[name]).to(tensor.dtype)
            if untie and file == embed_file:
                embed = shard["model.embed_tokens.weight"]
                shard[head] = (embed.double() + deltas[head]).to(embed.dtype)
                new_map[head] = file
            save_file(shard, tmp / file, metadata={"format": "pt"})
        if (base_folder / INDEX_FILE).is_file():
            index = read_json(base_folder / INDEX_FILE)
            (tmp / INDEX_FILE).write_text(json.dumps({**index, "weight_map": new_map}, indent=2, sort_keys=True) + "\n")
        merged_config = {**config, "tie_word_embeddings": False} if untie else config
        (tmp / "config.json").write_text(json.dumps(merged_config, indent=2, sort_keys=True) + "\n")
        for name in TOKENIZER_FILES:
            if (base_folder / name).is_file():
                shutil.copyfile(base_folder / name, tmp / name)

    _write_atomically(out, write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lathe_worker.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="a checkpoint archive's adapter folder")
    parser.add_argument("--peft", type=Path, help="write the adapter under PEFT's names here (a new or empty folder)")
    parser.add_argument("--merged", type=Path, help="write the merged Hugging Face model here (a new or empty folder)")
    parser.add_argument("--base", help="base model name or folder (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--models-dir", type=Path, default=Path(".lathe/models"))
    args = parser.parse_args(argv)
    if args.peft is None and args.merged is None:
        parser.error("give --peft and/or --merged")
    try:
        if args.peft is not None:
            to_peft(args.adapter, args.peft)
        if args.merged is not None:
            base = args.base or read_json(args.adapter / ADAPTER_CONFIG).get("base_model_name_or_path")
            if not base:
                raise UserError("invalid_field", "the adapter names no base model; give --base")
            merge_into_base(args.adapter, ModelRegistry(args.models_dir).resolve(base), args.merged)
    except UserError as e:
        print(e.message, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
