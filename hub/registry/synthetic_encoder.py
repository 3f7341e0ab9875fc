"""A random-weight BERT-style sentence encoder with a locally trained WordPiece tokenizer.

The embeddings counterpart of `synthetic`: no weights can be downloaded where the fleet
is built and tested, so the tests and the benchmark make their own Hugging Face encoder
folder (fixed seed), which `encoder_export` then turns into an int8 ONNX release folder.
Cached by a hash of the recipe, like `synthetic.build`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hub.registry.encoder_export import export_encoder
from hub.registry.synthetic import _corpus, build_cached, default_cache_dir, recipe_digest

RECIPE_FORMAT = 1
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True, kw_only=True)
class EncoderRecipe:
    name: str = "encoder-tiny"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    vocab_size: int = 2048
    max_position_embeddings: int = 256
    seed: int = 1234
    tokenizer_corpus_files: int = 300

    def digest(self) -> str:
        return recipe_digest(RECIPE_FORMAT, self)


ENCODER_RECIPES = {
    "tiny": EncoderRecipe(),  # for tests: a few hundred kB
    # all-MiniLM-L6-v2's shape (about 22 M parameters before the smaller vocabulary): for
    # the benchmark, where the graph, not the HTTP around it, must take most of the time.
    "minilm": EncoderRecipe(
        name="encoder-minilm",
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=12,
        vocab_size=8192,
        max_position_embeddings=512,
    ),
}


def build_hf_encoder(recipe: EncoderRecipe, out_dir: Path) -> Path:
    """The Hugging Face folder: config.json, model.safetensors, WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=recipe.vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(recipe.tokenizer_corpus_files), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    wrapped.model_max_length = recipe.max_position_embeddings
    wrapped.save_pretrained(out_dir)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    torch.manual_seed(recipe.seed)
    BertModel(config).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build(recipe: EncoderRecipe | None = None, cache_dir: Path | None = None) -> Path:
    """The converted encoder folder (embeddings.json, int8 ONNX), built unless cached."""
    recipe = recipe or EncoderRecipe()
    target = (cache_dir or default_cache_dir()) / f"{recipe.name}-{recipe.digest()}"

    def make(tmp: Path) -> Path:
        return export_encoder(build_hf_encoder(recipe, tmp / "hf"), tmp / "onnx")

    return build_cached(target, "embeddings.json", make)
