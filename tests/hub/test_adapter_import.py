"""`edge-hub model import-adapter`: a PEFT LoRA adapter becomes a signed release that names
its base; an unknown base, a base not built for adapters and a mismatched adapter are
refused before anything is published."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.runtime import LoadedModel, RuntimeSettings, SamplingParams
from edge_agent.runtime.adapters import ADAPTER_CONFIG, ADAPTER_FILE, LORA_INPUTS, AdapterRef
from hub.cli import app
from hub.registry import synthetic, synthetic_adapter
from hub.registry.adapter_convert import convert_adapter
from hub.registry.adapter_import import import_adapter
from hub.registry.errors import ReleaseRefused
from hub.registry.importer import import_release
from hub.registry.lora_base import TARGET_BLOCKS, parse_targets
from hub.registry.repository import ReleaseRepository


@pytest.fixture
def repo_with_base(repo: ReleaseRepository, tiny_lora_base_dir: Path) -> ReleaseRepository:
    repo.publish(tiny_lora_base_dir, "tiny", "1.0.0")
    return repo


def _greedy(model: LoadedModel, adapter: str | None = None) -> list[int]:
    prompt = model.encode("def parse(text):")
    params = SamplingParams(max_tokens=12, temperature=0, adapter=adapter)
    generator = model.new_generator([prompt], params, len(prompt) + 12)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(prompt) :]]


def test_the_base_built_for_adapters_answers_as_the_plain_model(
    tiny_lora_base_dir: Path, tiny_model_dir: Path
) -> None:
    # Its LoRA branches default to zero: no adapter active is the plain base.
    assert json.loads((tiny_lora_base_dir / LORA_INPUTS).read_text())
    lora = LoadedModel.load("base", tiny_lora_base_dir, RuntimeSettings())
    plain = LoadedModel.load("plain", tiny_model_dir, RuntimeSettings())
    assert _greedy(lora) == _greedy(plain)


def test_an_adapter_changes_the_output_and_matches_the_builder_baking_it_in(
    tiny_lora_base_dir: Path, peft_adapters: dict[str, Path], tmp_path: Path
) -> None:
    # The conversion's names, transposes and scaling are checked against the builder's own
    # arithmetic: the same adapter baked into the graph must generate the same tokens.
    from hub.registry.convert import convert_hf_folder

    peft = peft_adapters["contracts-fr"]
    folder = tmp_path / "adapter"
    convert_adapter(peft, tiny_lora_base_dir, folder / ADAPTER_FILE)
    model = LoadedModel.load("base", tiny_lora_base_dir, RuntimeSettings())
    model.adapters.ensure(AdapterRef("contracts-fr", folder, "tiny", "1.0.0"))
    with_adapter = _greedy(model, "contracts-fr")
    assert with_adapter != _greedy(model)
    assert with_adapter == _greedy(model, "contracts-fr")  # stable

    recipe = synthetic.RECIPES["tiny"]
    hf = tmp_path / "hf"
    synthetic.write_tokenizer(recipe, hf)
    synthetic.write_random_weights(recipe, hf)
    options = replace(
        recipe.quant,
        extra={
            "adapter_path": str(peft),
            # float branches, as the base built for adapters has them
            "nodes_to_exclude": ",".join(
                f"/model/layers.{i}/attn/{t}/lora_{m}/MatMul"
                for i in range(recipe.shape.num_hidden_layers)
                for t in ("q_proj", "k_proj", "v_proj", "o_proj")
                for m in "AB"
            ),
        },
    )
    baked = convert_hf_folder(hf, tmp_path / "baked", options)
    assert _greedy(LoadedModel.load("baked", baked, RuntimeSettings())) == with_adapter


def test_import_adapter_publishes_only_the_adapter_naming_its_base(
    repo_with_base: ReleaseRepository, peft_adapters: dict[str, Path]
) -> None:
    manifest = import_adapter(
        repo_with_base, peft_adapters["contracts-fr"], "tiny@1.0.0", "contracts-fr", "1.0.0"
    )
    extra = manifest.model_extra or {}
    assert (extra["kind"], extra["base"]) == ("adapter", "tiny@1.0.0")
    assert sorted(f.path for f in manifest.files) == [ADAPTER_CONFIG, ADAPTER_FILE]
    base = repo_with_base.manifest("tiny", "1.0.0")
    assert not set(manifest.unique_chunks()) & set(base.unique_chunks())
    assert manifest.total_bytes < base.total_bytes / 5


def test_import_adapter_on_the_command_line(
    repo_with_base: ReleaseRepository, peft_adapters: dict[str, Path], tmp_path: Path
) -> None:
    args = ["model", "import-adapter", str(peft_adapters["triage-en"]), "--base", "tiny@1.0.0"]
    args += ["--name", "triage-en", "--version", "2.0.0", "--repo", str(repo_with_base.root)]
    args += ["--keys", str(tmp_path / "keys")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "published adapter triage-en 2.0.0 for tiny@1.0.0" in result.output
    assert repo_with_base.index().versions("triage-en") == ["2.0.0"]


def _refused(repo: ReleaseRepository, peft: Path, base: str, pattern: str) -> None:
    with pytest.raises(ReleaseRefused, match=pattern):
        import_adapter(repo, peft, base, "contracts-fr", "1.0.0")
    assert repo.index().versions("contracts-fr") == []


def test_unknown_base_is_refused(
    repo_with_base: ReleaseRepository, peft_adapters: dict[str, Path]
) -> None:
    _refused(
        repo_with_base,
        peft_adapters["contracts-fr"],
        "tiny@9.9.9",
        r"^unknown base tiny@9\.9\.9: no release tiny 9\.9\.9 .*listed versions of tiny: 1\.0\.0",
    )


def test_base_not_built_for_adapters_is_refused(
    repo: ReleaseRepository, tiny_model_dir: Path, peft_adapters: dict[str, Path]
) -> None:
    repo.publish(tiny_model_dir, "plain", "1.0.0")
    _refused(
        repo,
        peft_adapters["contracts-fr"],
        "plain@1.0.0",
        r"^base plain@1\.0\.0 was not built to accept adapters; import its Hugging Face "
        r"folder again as a new version with --adapter-targets",
    )


def test_adapter_of_another_shape_is_refused(repo_with_base: ReleaseRepository) -> None:
    tiny = synthetic.RECIPES["tiny"]
    wider = replace(tiny, name="wider", shape=replace(tiny.shape, hidden_size=96))
    peft = synthetic_adapter.build_adapter(synthetic_adapter.AdapterRecipe(model=wider))
    _refused(
        repo_with_base,
        peft,
        "tiny@1.0.0",
        re.escape("has shape [4, 96], which does not fit the base (")
        + r".* takes \[64, rank\]\): the adapter was trained on a model of another shape",
    )


def test_adapter_on_projections_the_base_lacks_is_refused(
    repo_with_base: ReleaseRepository,
) -> None:
    tiny = synthetic.RECIPES["tiny"]
    recipe = synthetic_adapter.AdapterRecipe(model=tiny, targets=("down_proj",))
    _refused(
        repo_with_base,
        synthetic_adapter.build_adapter(recipe),
        "tiny@1.0.0",
        r"adapts down_proj of a layer the base has no LoRA input for \(the base accepts "
        r"adapters on k_proj, o_proj, q_proj, v_proj of 2 layers\)",
    )


def test_a_folder_that_is_no_peft_adapter_is_refused(
    repo_with_base: ReleaseRepository, tiny_model_dir: Path
) -> None:
    _refused(
        repo_with_base,
        tiny_model_dir,
        "tiny@1.0.0",
        r"no adapter_config\.json; pass a PEFT adapter folder",
    )


def test_adapter_targets_are_checked_before_any_conversion(
    repo: ReleaseRepository, tiny_model_dir: Path
) -> None:
    assert parse_targets(" v_proj,q_proj ,") == ("q_proj", "v_proj")
    with pytest.raises(ReleaseRefused, match=r"^adapter targets 'lm_head': lm_head not supported"):
        parse_targets("lm_head")
    with pytest.raises(ReleaseRefused, match="--adapter-targets applies when converting"):
        import_release(repo, tiny_model_dir, "tiny", "1.0.0", adapter_targets=("q_proj",))


def test_an_adapter_on_some_of_the_base_projections_imports(repo: ReleaseRepository) -> None:
    # A base with branches on every projection; the adapter fills some of them, the others
    # keep their rank-1 zero defaults beside its rank-4 matrices (one rank dimension for
    # all inputs, or the template's rank left in the graph's shapes, failed here).
    tiny = synthetic.RECIPES["tiny"]
    every = tuple(sorted(TARGET_BLOCKS))
    base = synthetic_adapter.build_base(
        synthetic_adapter.AdapterBaseRecipe(model=tiny, targets=every)
    )
    repo.publish(base, "tiny", "1.0.0")
    targets = ("down_proj", "gate_proj", "q_proj", "up_proj")
    recipe = synthetic_adapter.AdapterRecipe(model=tiny, targets=targets)
    manifest = import_adapter(
        repo, synthetic_adapter.build_adapter(recipe), "tiny@1.0.0", "some", "1.0.0"
    )
    assert manifest.quantization["targets"] == list(targets)
