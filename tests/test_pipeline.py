"""The methods' plumbing: the registry, command lines derived from the configs, one run pipeline, the layout rules."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from data import batches, load_task
from methods import registry
from methods.adapters import AdapterConfig
from methods.fine_tuning import FineTuningConfig
from methods.hard_prompt import HardPromptConfig
from methods.lora import LoRAConfig
from methods.p_tuning_v2 import PTuningV2Config
from methods.prefix_tuning import PrefixTuningConfig
from methods.shared.options import cli_fields, flag_of, from_args, to_argv
from methods.shared.pipeline import RunOptions, RunRecord, load_method, parse_command_line

ROOT = Path(__file__).parent.parent
METHOD_FILES = sorted(m.module.split(".")[1] + ".py" for m in registry.METHODS.values())
# The imports between method files that say something true about the method (everything else goes via shared/).
ALLOWED_IMPORTS = {"p_tuning_v2.py": {"prefix_tuning"}, "lora.py": {"fine_tuning"}, "adapters.py": {"fine_tuning"},
                   "bitfit.py": {"fine_tuning"}}


def test_readme_option_tables_are_the_config_dataclasses():
    readme = (ROOT / "README.md").read_text()
    block = re.search(registry.README_BLOCK, readme, re.S)
    assert block, "README.md lacks the generated options section"
    assert readme[block.end(1):block.start(2)] == registry.options_markdown(), \
        "README's option tables are stale: run python -m methods.registry --readme README.md"


@pytest.mark.parametrize("name", list(registry.METHODS))
def test_help_shows_each_option_once_with_its_default(name, capsys):
    method = registry.get(name)
    with pytest.raises(SystemExit):
        parse_command_line(method.config_class, "doc", ["--help"])
    text = capsys.readouterr().out
    for field in cli_fields(method.config_class) + cli_fields(RunOptions):
        flag = flag_of(field)
        assert len(re.findall(rf"^  {re.escape(flag)}(?=[ ,\n])", text, re.M)) == 1, f"{flag} must be listed once"
    assert text.count("(default:") >= len(cli_fields(method.config_class) + cli_fields(RunOptions)), \
        "every option shows its default"
    assert "default learning rate:" in text


def test_one_flag_per_idea_across_methods():
    flags = {name: {flag_of(f) for f in cli_fields(m.config_class)} for name, m in registry.METHODS.items()}
    for renamed in ("--virtual-tokens", "--layers", "--reparameterize", "--frozen-layer-norms"):
        assert not any(renamed in f for f in flags.values()), f"{renamed} was renamed (one flag per idea)"
    assert all("--num-virtual-tokens" in flags[n] for n in ("prompt_tuning", "prefix_tuning", "p_tuning", "p_tuning_v2"))
    assert "--top-layers" in flags["fine_tuning"] and "--prompt-layers" in flags["p_tuning_v2"]


def test_configs_round_trip_through_their_command_line():
    for config in (LoRAConfig(rank=4, targets=("query", "key")), AdapterConfig(train_layer_norms=False),
                   PTuningV2Config(flat=False, prompt_layers="2-3"), HardPromptConfig("sensitivity", ["a {text} {mask}",
                                                                                                 "b {text} {mask}"])):
        config_class = type(config)
        changed = {f.name: getattr(config, f.name) for f in cli_fields(config_class)
                   if getattr(config, f.name) != getattr(config_class(), f.name)}
        parsed, _ = parse_command_line(config_class, "doc", to_argv(config_class, changed))
        assert parsed == config, f"{config_class.__name__}: {to_argv(config_class, changed)} gave {parsed}"


def test_registry_names_every_run_from_its_config():
    assert registry.run_name(FineTuningConfig(mode="head")) == "head_only"
    assert registry.run_name(FineTuningConfig(mode="top-k", top_layers=3)) == "top3_layers"
    assert registry.run_name(PrefixTuningConfig(flat=True)) == "prefix_tuning_flat"
    assert registry.run_name(PTuningV2Config(prompt_layers="1,3-4")) == "p_tuning_v2_layers1_3-4"
    assert registry.run_name(AdapterConfig()) == "adapters" and registry.run_name(AdapterConfig(bottleneck=8)) == \
        "adapters_m8"
    assert registry.run_name(HardPromptConfig(mode="template-head")) == "template_head"
    assert registry.method_for(PTuningV2Config()).name == "p_tuning_v2", "a subclass config is its own method"
    for method in registry.METHODS.values():
        assert dataclasses.is_dataclass(method.config_class) and hasattr(method.model_class, "for_task")
    with pytest.raises(ValueError, match="did you mean 'prefix_tuning'"):
        registry.get("prefix_tunning")


def test_a_saved_run_is_rebuilt_through_the_registry(tiny_checkpoints, tmp_path):
    from methods.p_tuning_v2 import main
    record = main(["--model", str(tiny_checkpoints["bert"][0]), "--task", "builtin_sentiment", "--max-steps", "2",
                   "--num-virtual-tokens", "3", "--prompt-layers", "2", "--max-length", "24", "--out", str(tmp_path),
                   "--no-progress"])
    assert isinstance(record, RunRecord) and record.method == "p_tuning_v2" and record.run_name == "p_tuning_v2_layers2"
    meta = json.loads((tmp_path / "method.json").read_text())
    assert meta["method"] == "p_tuning_v2" and meta["config"] == record.config and meta["task"]["kind"] == "classification"
    model, tokenizer = load_method(tmp_path)
    assert model.config == PTuningV2Config(num_virtual_tokens=3, prompt_layers="2")
    batch = next(batches(load_task("builtin_sentiment").splits["dev"], tokenizer, 8, max_length=24))
    model2, _ = load_method(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(batch), model2(batch)), "two rebuilds of one run give one model"
    assert json.loads((tmp_path / "results.json").read_text())["dev_metric"] == record.dev_metric


def test_options_parse_into_their_dataclass():
    words = ["--mode", "top-k", "--top-layers", "1", "--no-progress", "--lr", "0.1"]
    config, options = parse_command_line(FineTuningConfig, "doc", words)
    assert config == FineTuningConfig(mode="top-k", top_layers=1)
    assert options == RunOptions(progress=False, lr=0.1, command=words), "the words are kept: --resume repeats them"
    assert from_args(FineTuningConfig, type("Args", (), {"mode": "head", "top_layers": 2, "head": "auto"})) == \
        FineTuningConfig(mode="head")


def test_method_files_stay_small_and_import_only_what_they_are():
    for name in METHOD_FILES:
        source = (ROOT / "methods" / name).read_text()
        assert len(source.splitlines()) <= 300, f"methods/{name} has {len(source.splitlines())} lines (at most 300)"
        tree = ast.parse(source)
        imported = {node.module.split(".")[1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module and node.module.startswith("methods.") and not node.module.startswith("methods.shared")}
        assert imported <= ALLOWED_IMPORTS.get(name, set()), f"methods/{name} imports method files {imported}"
        main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
        assert main.end_lineno - main.lineno + 1 <= 20, f"methods/{name}: main() is {main.end_lineno - main.lineno + 1} lines"
