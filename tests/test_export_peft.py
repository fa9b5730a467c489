"""Export to peft: what we train loads with peft.PeftModel.from_pretrained and gives the same logits."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minitransformer import load_pretrained
from methods.bitfit import BitFit, BitFitConfig
from methods.export_peft import NotExportableError, export_peft, load_run, main
from methods.import_peft import import_peft
from methods.lora import TARGETS, LoRA, LoRAConfig
from methods.p_tuning import PTuning, PTuningConfig
from methods.p_tuning import main as p_tuning_main
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from methods.prefix_tuning import main as prefix_tuning_main
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.pipeline import save_method
from tests.helpers import PAIRS, SENTENCES, TOL, masked, perturb_trainable

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

MINILM_TOL = dict(rtol=1e-4, atol=1e-4)
P = 4  # virtual tokens


@pytest.fixture(scope="module")
def pooled_checkpoints(tiny_checkpoints, tmp_path_factory):
    """The tiny BERT and RoBERTa with a random pooler added, as bert-base-uncased and roberta-base have one."""
    root, directories = tmp_path_factory.mktemp("pooled"), {}
    for kind in ("bert", "roberta"):
        directory = shutil.copytree(tiny_checkpoints[kind][0], root / kind)
        weights = load_file(str(directory / "model.safetensors"))
        generator = torch.Generator().manual_seed(0)
        weights[f"{kind}.pooler.dense.weight"] = torch.randn(32, 32, generator=generator) * 0.2
        weights[f"{kind}.pooler.dense.bias"] = torch.randn(32, generator=generator) * 0.1
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
        directories[kind] = directory
    return directories


def encode(tokenizer, kind: str) -> dict:
    """A padded batch; sentence pairs for BERT (the prompt must take token type 0 on both sides)."""
    batch = tokenizer.encode(SENTENCES, PAIRS if kind == "bert" else None)
    assert not batch["attention_mask"].all(), "the test should exercise padding"
    if kind == "gpt2":  # GPT-2 would embed token types with its word embeddings
        del batch["token_type_ids"]
    return batch


def export_trained(method: torch.nn.Module, adapter_dir, base: str, scale: float = 0.5) -> torch.nn.Module:
    """Move every trainable number as training would (none may stay at its start), export; the method in eval mode."""
    perturb_trainable(method.eval(), scale=scale)
    export_peft(method, adapter_dir, base)
    return method


def peft_logits(auto_class: str, base, adapter_dir, batch: dict, **kwargs) -> torch.Tensor:
    """Logits of the transformers model `base` (a directory, or a model to copy) with our adapter loaded by peft."""
    model = (getattr(transformers, auto_class).from_pretrained(base, **kwargs) if not isinstance(base, torch.nn.Module)
             else copy.deepcopy(base))
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("kind, flat", [("bert", False), ("roberta", True)], ids=["bert-mlp", "roberta-flat"])
def test_prefix_tuning_classifier_matches_peft(kind, flat, pooled_checkpoints, tmp_path):
    backbone, tokenizer = load_pretrained(str(pooled_checkpoints[kind]))
    ours = export_trained(PrefixTuning(backbone, tokenizer, 3, PrefixTuningConfig(P, flat=flat, mlp_hidden=16)),
                          tmp_path, str(pooled_checkpoints[kind]))
    batch = encode(tokenizer, kind)
    theirs = peft_logits("AutoModelForSequenceClassification", pooled_checkpoints[kind], tmp_path, batch, num_labels=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), theirs, **TOL, msg=f"{kind}: sequence-classification logits differ "
                                   "from peft's with our adapter (1e-5: float32 rounding)")


@pytest.mark.parametrize("kind, encoder", [("bert", "mlp"), ("roberta", "lstm"), ("bert", "none")])
def test_p_tuning_classifier_matches_peft(kind, encoder, pooled_checkpoints, tmp_path):
    """peft's classifier pools position 0, the first prompt vector: P-tuning in peft's layout, read there."""
    backbone, tokenizer = load_pretrained(str(pooled_checkpoints[kind]))
    config = PTuningConfig(encoder=encoder, encoder_hidden=16, layout="prefix", num_virtual_tokens=P)
    ours = export_trained(PTuning(backbone, tokenizer, 3, config), tmp_path, str(pooled_checkpoints[kind]))
    peft_type = json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"]
    assert peft_type == ("PROMPT_TUNING" if encoder == "none" else "P_TUNING"), peft_type
    batch = encode(tokenizer, kind)
    theirs = peft_logits("AutoModelForSequenceClassification", pooled_checkpoints[kind], tmp_path, batch, num_labels=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), theirs, **TOL, msg=f"{kind} P-tuning ({encoder}): logits differ "
                                   "from peft's with our adapter")


@pytest.mark.parametrize("method_class", [PTuningV2, PromptTuning], ids=["p_tuning_v2", "prompt_tuning"])
@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2"])
def test_token_head_matches_peft(kind, method_class, tiny_checkpoints, tmp_path):
    directory, _ = tiny_checkpoints[kind]
    backbone, tokenizer = load_pretrained(str(directory))
    config = PTuningV2Config(P) if method_class is PTuningV2 else PromptTuningConfig(P, init="random")
    ours = export_trained(method_class(backbone, tokenizer, 5, config, task_kind="ner"), tmp_path, str(directory))
    batch = encode(tokenizer, kind)
    theirs = peft_logits("AutoModelForTokenClassification", directory, tmp_path, batch, num_labels=5)
    if method_class is PromptTuning:  # virtual tokens are inputs: peft returns their rows too, in front
        assert theirs.shape[1] == batch["input_ids"].shape[1] + P, "peft's logits cover the virtual tokens"
        theirs = theirs[:, P:]
    m = batch["attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(masked(ours(batch), m), masked(theirs, m), **TOL, msg=f"{kind}: real-token "
                                   "logits differ from peft's with our adapter (1e-5: float32 rounding)")


def test_gpt2_generation_prefix_matches_peft_causal_lm(tiny_checkpoints, tmp_path):
    directory, hf_model = tiny_checkpoints["gpt2"]
    backbone, tokenizer = load_pretrained(str(directory))
    ours = export_trained(PrefixTuning(backbone, tokenizer, 0, PrefixTuningConfig(P, mlp_hidden=16), "generation"),
                          tmp_path, str(directory))
    batch = encode(tokenizer, "gpt2")
    theirs, m = peft_logits("AutoModelForCausalLM", hf_model, tmp_path, batch), batch["attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(masked(ours(batch), m), masked(theirs, m), **TOL,
                                   msg="next-token logits differ from peft's prefix on GPT2LMHeadModel (1e-5)")
    # Exported without projection, the ejected MLP output is a flat prefix that peft can also train further.
    config = peft.PeftConfig.from_pretrained(str(tmp_path))
    config.inference_mode = False
    trainable = peft.get_peft_model(copy.deepcopy(hf_model), config)
    peft.set_peft_model_state_dict(trainable, load_file(str(tmp_path / "adapter_model.safetensors")))
    assert [n for n, p in trainable.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]
    with torch.no_grad():
        torch.testing.assert_close(masked(trainable.eval()(**batch).logits, m), masked(theirs, m), **TOL,
                                   msg="a trainable peft model must start from the same prefix (1e-5)")


def test_adapter_files_use_peft_names_and_layout(pooled_checkpoints, tmp_path):
    backbone, tokenizer = load_pretrained(str(pooled_checkpoints["roberta"]))
    ours = PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(P, mlp_hidden=16))
    export_peft(ours, tmp_path, "roberta-base")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["prefix_projection"]) == ("PREFIX_TUNING", "SEQ_CLS", False)
    assert (config["num_layers"], config["token_dim"], config["base_model_name_or_path"]) == (2, 32, "roberta-base")
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors["prompt_embeddings"].shape == (P, 2 * 2 * 32), "the ejected prefix [P, 2 x layers x H]"
    assert torch.equal(tensors["base_model.classifier.dense.weight"], backbone.pooler.weight), \
        "RoBERTa's classification head starts with dense + tanh: our frozen pooler"
    assert torch.equal(tensors["base_model.classifier.out_proj.weight"], ours.head.linear.weight)


@pytest.mark.parametrize("method_class", [PrefixTuning, PTuningV2, PromptTuning, PTuning],
                         ids=["prefix_tuning", "p_tuning_v2", "prompt_tuning", "p_tuning"])
def test_minilm_matches_peft(method_class, minilm_dir, tmp_path):
    backbone, tokenizer = load_pretrained(str(minilm_dir))
    if method_class is PromptTuning:  # a classifier after a soft prompt cannot be exported: a token head
        ours, auto_class = PromptTuning(backbone, tokenizer, 5, PromptTuningConfig(8), task_kind="ner"), "Token"
    elif method_class is PTuning:  # peft's layout; the classifier on the first prompt vector, as peft pools
        ours, auto_class = PTuning(backbone, tokenizer, 5, PTuningConfig(layout="prefix", num_virtual_tokens=8)), "Sequence"
    else:  # the [CLS] classifier through MiniLM's pooler; prefix tuning with its MLP
        config = PTuningV2Config(8) if method_class is PTuningV2 else PrefixTuningConfig(8, mlp_hidden=64)
        ours, auto_class = method_class(backbone, tokenizer, 5, config), "Sequence"
    export_trained(ours, tmp_path, str(minilm_dir))
    batch = encode(tokenizer, "bert")
    theirs = peft_logits(f"AutoModelFor{auto_class}Classification", minilm_dir, tmp_path, batch, num_labels=5)
    with torch.no_grad():
        mine = ours(batch)
    if method_class is PromptTuning:
        mine, theirs = masked(mine, batch["attention_mask"]), masked(theirs[:, 8:], batch["attention_mask"])
    torch.testing.assert_close(mine, theirs, **MINILM_TOL, msg=f"MiniLM {method_class.__name__}: logits differ "
                               "from peft's with our adapter (1e-4: 6 real layers in float32)")


def test_command_line_exports_a_trained_run(pooled_checkpoints, tmp_path, capsys):
    run_dir = tmp_path / "run"
    prefix_tuning_main(["--model", str(pooled_checkpoints["bert"]), "--task", "builtin_sentiment", "--max-steps", "2",
                        "--num-virtual-tokens", "4", "--mlp-hidden", "16", "--max-length", "32", "--out", str(run_dir),
                        "--no-progress"])
    trained, _ = load_run(run_dir)
    batch = encode(load_pretrained(str(pooled_checkpoints["bert"]))[1], "bert")
    with torch.no_grad():
        expected = trained(batch)
    for source in (run_dir, run_dir / "deploy"):  # the training state (MLP) and the ejected deploy state
        out = main([str(source), "--out", str(tmp_path / f"export-{source.name}")])
        assert "AutoModelForSequenceClassification" in capsys.readouterr().out, "the command says how to load it"
        theirs = peft_logits("AutoModelForSequenceClassification", pooled_checkpoints["bert"], out, batch, num_labels=2)
        torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-7, msg=f"peft with the adapter exported "
                                   f"from {source.name} differs from the run (atol 1e-7: a 2-step head's logits ~1e-2)")


def test_command_line_exports_a_p_tuning_run(pooled_checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    p_tuning_main(["--model", str(pooled_checkpoints["bert"]), "--task", "builtin_sentiment", "--max-steps", "2",
                   "--layout", "prefix", "--head", "classifier", "--num-virtual-tokens", "4", "--encoder-hidden", "16",
                   "--max-length", "32", "--out", str(run_dir), "--no-progress"])
    trained, _ = load_run(run_dir)
    batch = encode(load_pretrained(str(pooled_checkpoints["bert"]))[1], "bert")
    with torch.no_grad():
        expected = trained(batch)
    out = main([str(run_dir), "--out", str(tmp_path / "export")])
    theirs = peft_logits("AutoModelForSequenceClassification", pooled_checkpoints["bert"], out, batch, num_labels=2)
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-7, msg="peft with the exported P-tuning run "
                               "differs from the run")


# ---- what peft cannot represent: a clear error that says why -----------------------------------

def with_template(method):
    method.template = "{text} It was {mask}."
    return method


NOT_EXPORTABLE = {  # case: (checkpoint, build(backbone, tokenizer), what the error must say)
    "verbalizer": ("bert", lambda b, t: PromptTuning(b, t, 2, PromptTuningConfig(P, head="verbalizer", template="{text} {mask}"),
                                                        verbalizer=["was", "the"]),
                   "verbalizer head .* no peft equivalent"),
    "prompt_tuning_classifier": ("bert+pooler", lambda b, t: PromptTuning(b, t, 2, PromptTuningConfig(P)),
                                 "reads position 0, .* first virtual token"),
    "gpt2_classifier": ("gpt2", lambda b, t: PrefixTuning(b, t, 2, PrefixTuningConfig(P, flat=True)),
                        "score layer has no bias"),
    "no_pooler": ("bert", lambda b, t: PrefixTuning(b, t, 2, PrefixTuningConfig(P, flat=True)), "has no pooler"),
    "some_layers": ("bert", lambda b, t: PTuningV2(b, t, 5, PTuningV2Config(P, prompt_layers="2"), task_kind="ner"),
                    r"covers layers \[2\] .* gives every layer one"),
    "p_tuning_template": ("bert+pooler", lambda b, t: PTuning(b, t, 2, PTuningConfig()),
                          "placed its prompt vectors with the template .* peft puts them all before the input"),
    "p_tuning_reads_cls": ("bert+pooler", lambda b, t: PTuning(b, t, 2, PTuningConfig(layout="prefix", read="input")),
                           r"reads \[CLS\] \(--read input\)"),
    "template": ("bert", lambda b, t: with_template(PTuningV2(b, t, 5, PTuningV2Config(P), task_kind="ner")),
                 "template .* peft feeds the text unchanged"),
}


@pytest.mark.parametrize("case", NOT_EXPORTABLE)
def test_what_peft_cannot_represent_is_a_clear_error(case, tiny_checkpoints, pooled_checkpoints, tmp_path):
    checkpoint, build, message = NOT_EXPORTABLE[case]
    directory = pooled_checkpoints["bert"] if checkpoint == "bert+pooler" else tiny_checkpoints[checkpoint][0]
    method = build(*load_pretrained(str(directory)))
    with pytest.raises(NotExportableError, match=message):
        export_peft(method, tmp_path, "tiny")
    assert not (tmp_path / "adapter_config.json").exists(), "nothing is written when the export is refused"


def test_other_methods_runs_are_not_exportable(tiny_checkpoints, tmp_path):
    backbone, tokenizer = load_pretrained(str(tiny_checkpoints["bert"][0]))
    save_method(BitFit(backbone, tokenizer, 2, BitFitConfig()), tmp_path, model_name=str(tiny_checkpoints["bert"][0]))
    with pytest.raises(NotExportableError, match="holds a 'bitfit' run; the peft formats here cover prompt_tuning, p_tuning, prefix_tuning, p_tuning_v2 and lora"):
        main([str(tmp_path), "--out", str(tmp_path / "export")])


# ---- LoRA, and the way back (methods/import_peft.py) -------------------------------------------------

LORA_CASES = {  # case: (checkpoint, targets, auto class, head)
    "bert": ("bert", ("query", "value"), "AutoModelForSequenceClassification", "classification"),
    "bert-every-projection": ("bert", tuple(TARGETS), "AutoModelForSequenceClassification", "classification"),
    "roberta": ("roberta", ("query", "key", "value"), "AutoModelForSequenceClassification", "classification"),
    "gpt2": ("gpt2", ("query", "value"), "AutoModelForTokenClassification", "ner"),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_matches_peft_and_comes_back(case, tiny_checkpoints, pooled_checkpoints, tmp_path):
    kind, targets, auto_class, task_kind = LORA_CASES[case]
    directory = pooled_checkpoints[kind] if kind != "gpt2" else tiny_checkpoints[kind][0]
    backbone, tokenizer = load_pretrained(str(directory))
    torch.manual_seed(0)
    ours = export_trained(LoRA(backbone, tokenizer, 3, LoRAConfig(rank=2, alpha=6.0, targets=targets), task_kind),
                          tmp_path, str(directory), scale=0.1)  # updates of a trained size: logits stay O(1)
    batch = encode(tokenizer, kind)
    theirs = peft_logits(auto_class, directory, tmp_path, batch, num_labels=3)
    back, _ = import_peft(tmp_path)
    with torch.no_grad():
        mine, again = ours(batch), back(batch)
    if task_kind == "ner":
        mine, theirs, again = (masked(x, batch["attention_mask"]) for x in (mine, theirs, again))
    torch.testing.assert_close(mine, theirs, **TOL, msg=f"{case}: LoRA logits differ from peft's with our adapter")
    torch.testing.assert_close(again, mine, **TOL, msg=f"{case}: the adapter read back gives other logits")
    assert isinstance(back, LoRA) and set(back.config.targets) == set(targets)


def test_minilm_lora_matches_peft(minilm_dir, tmp_path):
    backbone, tokenizer = load_pretrained(str(minilm_dir))
    torch.manual_seed(0)  # lora_A's random start, then moved: a trained size of update, whatever ran before
    ours = export_trained(LoRA(backbone, tokenizer, 2, LoRAConfig()), tmp_path, str(minilm_dir), scale=0.1)
    batch = tokenizer.encode(SENTENCES, PAIRS)
    theirs = peft_logits("AutoModelForSequenceClassification", minilm_dir, tmp_path, batch, num_labels=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), theirs, **MINILM_TOL, msg="MiniLM LoRA logits differ from peft's")


ROUND_TRIPS = {  # case: (checkpoint, build(backbone, tokenizer), how to compare)
    "prefix_tuning-mlp": ("bert+pooler", lambda b, t: PrefixTuning(b, t, 3, PrefixTuningConfig(P, mlp_hidden=16)), "seq"),
    "p_tuning_v2-token": ("roberta", lambda b, t: PTuningV2(b, t, 5, PTuningV2Config(P), "ner"), "token"),
    "p_tuning-lstm": ("bert+pooler", lambda b, t: PTuning(b, t, 3, PTuningConfig(encoder="lstm", encoder_hidden=16,
                                                                                   layout="prefix", num_virtual_tokens=P)),
                      "seq"),
    "prompt_tuning-token": ("gpt2", lambda b, t: PromptTuning(b, t, 5, PromptTuningConfig(P, init="random"), "ner"),
                            "token"),
    "prefix_tuning-generation": ("gpt2", lambda b, t: PrefixTuning(b, t, 0, PrefixTuningConfig(P, mlp_hidden=16),
                                                                    "generation"), "token"),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_every_exported_format_reads_back_with_the_same_logits(case, tiny_checkpoints, pooled_checkpoints, tmp_path):
    kind, make, compare = ROUND_TRIPS[case]
    directory = pooled_checkpoints[kind.split("+")[0]] if "+pooler" in kind else tiny_checkpoints[kind][0]
    backbone, tokenizer = load_pretrained(str(directory))
    ours = export_trained(make(backbone, tokenizer), tmp_path, str(directory))
    back, _ = import_peft(tmp_path)
    batch = encode(tokenizer, kind.split("+")[0])
    with torch.no_grad():
        mine, again = ours(batch), back(batch)
    if compare == "token":
        mine, again = masked(mine, batch["attention_mask"]), masked(again, batch["attention_mask"])
    torch.testing.assert_close(again, mine, **TOL, msg=f"{case}: the adapter read back gives other logits")


def test_an_adapter_trained_by_peft_is_read_with_peft_s_logits(tiny_checkpoints, pooled_checkpoints, tmp_path):
    """peft's own GPT-2 LoRA on the fused c_attn (every block trained) and its prompt tuning for classification."""
    directory, hf_model = tiny_checkpoints["gpt2"]
    model = peft.get_peft_model(transformers.AutoModelForTokenClassification.from_pretrained(directory, num_labels=4),
                                peft.LoraConfig(task_type="TOKEN_CLS", r=3, lora_alpha=5, target_modules=["c_attn"]))
    perturb_trainable(model, scale=0.3)
    model.save_pretrained(tmp_path / "lora")
    ours, tokenizer = import_peft(tmp_path / "lora")
    batch = encode(tokenizer, "gpt2")
    m = batch["attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(masked(ours(batch), m), masked(model.eval()(**batch).logits, m), **TOL,
                                   msg="peft's c_attn LoRA read here gives other logits")
    assert set(ours.config.targets) == {"query", "key", "value"}
    bert_dir = pooled_checkpoints["bert"]  # BertForSequenceClassification pools: a checkpoint without a pooler
    model = peft.get_peft_model(transformers.AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2),
                                peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P))
    perturb_trainable(model, scale=0.3)
    model.save_pretrained(tmp_path / "prompt")
    ours, tokenizer = import_peft(tmp_path / "prompt")
    batch = tokenizer.encode(SENTENCES)
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), model.eval()(**batch).logits, **TOL,
                                   msg="peft's SEQ_CLS prompt tuning read here gives other logits")
    assert isinstance(ours, PTuning) and ours.read_prompt and ours.config.encoder == "none"
