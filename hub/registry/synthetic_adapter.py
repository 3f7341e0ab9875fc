"""Test LoRA adapters and a test base that accepts them, built locally like the test model.

The base is the test model's recipe (same tokenizer, same random weights) converted with
LoRA branches on `targets` (hub.registry.lora_base). An adapter is a PEFT LoRA folder
made by peft on the recipe's shape, its matrices drawn from a seeded normal distribution
(A scaled by 1/sqrt(in) as usual; B large enough that greedy text visibly changes).
Both are cached by a hash of their recipe, as synthetic.build does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hub.registry import synthetic
from hub.registry.convert import convert_hf_folder
from hub.registry.lora_base import DEFAULT_TARGETS, write_peft_adapter
from hub.registry.synthetic import Recipe, build_cached, default_cache_dir, recipe_digest

RECIPE_FORMAT = 2  # 2: each LoRA input has its own rank dimension


@dataclass(frozen=True, kw_only=True)
class AdapterBaseRecipe:
    model: Recipe
    targets: tuple[str, ...] = DEFAULT_TARGETS


@dataclass(frozen=True, kw_only=True)
class AdapterRecipe:
    model: Recipe  # the shape it is trained on
    targets: tuple[str, ...] = DEFAULT_TARGETS
    rank: int = 4
    alpha: int = 8
    seed: int = 1
    b_scale: float = 0.5


def build_base(recipe: AdapterBaseRecipe, cache_dir: Path | None = None) -> Path:
    """The converted base (a model folder with lora_inputs.json), built unless cached."""
    digest = recipe_digest(RECIPE_FORMAT, recipe)
    target = (cache_dir or default_cache_dir()) / f"{recipe.model.name}-lora-{digest}"

    def make(tmp: Path) -> Path:
        hf_dir = tmp / "hf"
        synthetic.write_tokenizer(recipe.model, hf_dir)
        synthetic.write_random_weights(recipe.model, hf_dir)
        return convert_hf_folder(
            hf_dir, tmp / "onnx", recipe.model.quant, adapter_targets=recipe.targets
        )

    return build_cached(target, "genai_config.json", make)


def build_adapter(recipe: AdapterRecipe, cache_dir: Path | None = None) -> Path:
    """A PEFT adapter folder (adapter_config.json, adapter_model.safetensors)."""
    digest = recipe_digest(RECIPE_FORMAT, recipe)
    target = (cache_dir or default_cache_dir()) / f"{recipe.model.name}-peft-{digest}"

    def make(tmp: Path) -> Path:
        import torch
        from transformers import LlamaConfig

        config = LlamaConfig(**synthetic._shape_kwargs(recipe.model.shape))
        generator = torch.Generator().manual_seed(recipe.seed)

        def fill(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            values = torch.randn(shape, generator=generator)
            if ".lora_B." in name:  # (out, rank)
                return values * recipe.b_scale
            return values / math.sqrt(shape[-1])  # A: (rank, in)

        return write_peft_adapter(
            config, tmp / "peft", recipe.targets, rank=recipe.rank, alpha=recipe.alpha, fill=fill
        )

    return build_cached(target, "adapter_config.json", make)
