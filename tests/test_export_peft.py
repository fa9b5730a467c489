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


def export_trained(method: torch.nn.Module, adapter_dir, base: str) -> torch.nn.Module:
    """Move every trainable number as training would (none may stay at its start), export; the method in eval mode."""
    perturb_trainable(method.eval(), scale=0.5)
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
    with pytest.raises(NotExportableError, match="holds a 'bitfit' run; .* prompt_tuning, p_tuning, prefix_tuning and p_tuning_v2"):
        main([str(tmp_path), "--out", str(tmp_path / "export")])
