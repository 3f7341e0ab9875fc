"""Random-weight, Llama-shaped test models with a locally trained tokenizer.

No weights can be downloaded where the fleet is built and tested, so the tests, the demo
and the benchmarks build their own models: a Hugging Face folder with random weights
(fixed seed) and a byte-level BPE tokenizer trained on the Python standard library,
converted to int4 ONNX by onnxruntime-genai's model builder. Results are cached by a
hash of the recipe, so a second run reuses the first one's model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hub.registry.convert import QuantOptions, convert_hf_folder

# Bump when the way a recipe turns into files changes, so old caches are not reused.
RECIPE_FORMAT = 3

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 100000.0
    tie_word_embeddings: bool = True


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    shape: ModelShape
    seed: int = 1234
    tokenizer_corpus_files: int = 0  # 0 = the whole standard library
    quant: QuantOptions = field(default_factory=QuantOptions)

    def digest(self) -> str:
        return recipe_digest(RECIPE_FORMAT, self)


RECIPES: dict[str, Recipe] = {
    # About 1 MB: for unit and integration tests.
    "tiny": Recipe(
        name="tiny",
        shape=ModelShape(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1024,
            max_position_embeddings=2048,
        ),
        tokenizer_corpus_files=300,
    ),
    # SmolLM2-360M's shape: for benchmarks and the demo.
    "small": Recipe(
        name="small",
        shape=ModelShape(
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            vocab_size=49152,
            max_position_embeddings=8192,
        ),
    ),
}


def default_cache_dir() -> Path:
    configured = os.environ.get("EDGE_TEST_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edge-fleet" / "test-models"


def model_dir_for(recipe: Recipe, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{recipe.name}-{recipe.digest()}"


def build(
    recipe: Recipe,
    cache_dir: Path | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Path:
    """Return the folder of the converted ONNX model, building it unless cached."""
    target = model_dir_for(recipe, cache_dir)
    step = on_step or (lambda _msg: None)

    def make(tmp: Path) -> Path:
        hf_dir = tmp / "hf"
        step(f"training a {recipe.shape.vocab_size}-token tokenizer")
        write_tokenizer(recipe, hf_dir)
        step("initialising random weights")
        write_random_weights(recipe, hf_dir)
        step(f"converting to {recipe.quant.precision} ONNX")
        converted = convert_hf_folder(hf_dir, tmp / "onnx", recipe.quant, on_line=on_line)
        record = {"recipe": recipe.name, "digest": recipe.digest(), **asdict(recipe)}
        (converted / "test_model.json").write_text(json.dumps(record, indent=2) + "\n")
        return converted

    return build_cached(target, "genai_config.json", make)


def recipe_digest(recipe_format: int, recipe: Any) -> str:
    """A recipe's cache key: the hash of its fields and the recipe format."""
    blob = json.dumps({"format": recipe_format, **asdict(recipe)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_cached(target: Path, marker: str, make: Callable[[Path], Path]) -> Path:
    """target, made by make(temporary folder) unless it already holds marker; a lock beside
    it lets one process build while others wait, and the result appears in one rename."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same recipe
        if (target / marker).is_file():
            return target
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
            make(Path(tmp)).replace(target)
    return target


def _corpus(limit: int) -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if limit:
        files = files[:limit]
    for path in files:
        # Some standard-library files are not valid UTF-8 on purpose (codec tests).
        yield path.read_bytes().decode("utf-8", errors="replace")


def write_tokenizer(recipe: Recipe, hf_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.shape.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(recipe.tokenizer_corpus_files), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(hf_dir)


def write_random_weights(recipe: Recipe, hf_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as transformers_logging

    # The caller's spinner names this step; transformers' own bar would break into it.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    shape = recipe.shape
    special_ids = [i for i, _ in enumerate(SPECIAL_TOKENS)]
    config = LlamaConfig(
        **_shape_kwargs(shape),
        bos_token_id=special_ids[0],
        eos_token_id=special_ids[2],
        pad_token_id=special_ids[0],
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A random model would often pick end-of-sequence at once; quieting the special
        # tokens' (tied) embeddings makes it talk until max_tokens or a stop string.
        embeddings: Any = model.get_input_embeddings().weight
        embeddings[special_ids] *= 0.0
    model.save_pretrained(hf_dir, safe_serialization=True)


def _shape_kwargs(shape: ModelShape) -> dict[str, Any]:
    return {
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "float32",
    }


def remove_cached(recipe: Recipe, cache_dir: Path | None = None) -> None:
    shutil.rmtree(model_dir_for(recipe, cache_dir), ignore_errors=True)
