"""Mixed precision and gradient checkpointing: options of the one loop that change cost, not what is learned."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from data import batches, load_task
from methods import fine_tuning, p_tuning_v2
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.training import TrainConfig, task_loss, train, trainable_parameters
from minitransformer import compile_blocks, generate, load_pretrained

BUILD = {
    "prompt_tuning": lambda b, t: PromptTuning(b, t, 2, PromptTuningConfig(4, init="random", head="classifier")),
    "prefix_tuning": lambda b, t: PrefixTuning(b, t, 2, PrefixTuningConfig(4, mlp_hidden=16)),
    "p_tuning_v2": lambda b, t: PTuningV2(b, t, 2, PTuningV2Config(4, prompt_layers="2")),
}


def saved_bytes(step) -> int:
    """Bytes of the tensors autograd keeps for backward while `step` runs (the activation memory)."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return total[0]


def minilm_step(minilm_dir, name: str, checkpointing: bool = False, compiler: str | None = None) -> dict:
    """One training step of method `name` on MiniLM, dropout on (seed 0 builds, seed 1 runs): its loss, the
    trainable parameters' gradients, the bytes autograd kept, and the graphs the compiler made."""
    torch.manual_seed(0)
    backbone, tokenizer = load_pretrained(str(minilm_dir))
    backbone.gradient_checkpointing = checkpointing
    if compiler:
        compile_blocks(backbone, compiler)
    method = BUILD[name](backbone, tokenizer).train()
    batch = next(batches(load_task("builtin_sentiment").splits["train"][:16], tokenizer, 16, max_length=32))
    torch.manual_seed(1)
    counters.clear()
    loss = {}
    memory = saved_bytes(lambda: loss.setdefault("value", task_loss(method(batch), batch["labels"])).backward())
    return {"loss": loss["value"].item(), "grads": [p.grad.clone() for p in trainable_parameters(method)],
            "memory": memory, "graphs": counters["stats"]["unique_graphs"], "layers": backbone.config.num_layers}


@pytest.mark.parametrize("name", list(BUILD))
def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_less_memory(name, minilm_dir):
    """Dropout on: the recomputed forward replays the random state, so even its masks are the same."""
    plain, cp = minilm_step(minilm_dir, name), minilm_step(minilm_dir, name, checkpointing=True)
    assert cp["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    for grad_plain, grad_cp in zip(plain["grads"], cp["grads"]):
        torch.testing.assert_close(grad_cp, grad_plain, rtol=1e-5, atol=1e-5,
                                   msg=f"{name}: gradients differ with checkpointing")
    assert cp["memory"] < 0.6 * plain["memory"], \
        f"{name}: {cp['memory']:,} bytes kept with checkpointing, {plain['memory']:,} without"


def test_bf16_on_cpu_trains_and_keeps_fp32_parameters(minilm_dir, tmp_path):
    """MiniLM's features under a classifier: a tiny random backbone learns too little in a few steps to be sure the
    loss falls (it rose at one seed), MiniLM's fell at every seed tried (0-3)."""
    record = fine_tuning.main(["--model", str(minilm_dir), "--task", "builtin_sentiment", "--mode", "head",
                               "--precision", "bf16", "--max-steps", "40", "--eval-every", "20", "--lr", "0.02",
                               "--batch-size", "8", "--max-length", "24", "--no-progress", "--out", str(tmp_path)])
    assert record.history[-1]["loss"] < record.history[0]["loss"], "the loss must fall in bf16 too"
    assert {t.dtype for t in load_file(str(tmp_path / "method.safetensors")).values()} == {torch.float32}
    assert record.options["precision"] == "bf16" and record.run_key["precision"] == "bf16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_optimizer_state_stays_fp32(precision, tiny_checkpoints):
    backbone, tokenizer = load_pretrained(str(tiny_checkpoints["bert"][0]))
    method = PrefixTuning(backbone, tokenizer, 2, PrefixTuningConfig(4, flat=True))
    examples = load_task("builtin_sentiment").splits["train"][:32]
    seen = {}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # look at the optimizer after its update
        out = original(self, *args, **kwargs)
        seen["state"] = [v.dtype for state in self.state.values() for v in state.values() if torch.is_tensor(v)]
        return out
    torch.optim.AdamW.step = step
    try:
        result = train(method, lambda epoch: batches(examples, tokenizer, 8, shuffle=True, seed=epoch, max_length=24),
                       4, None, TrainConfig(epochs=1, lr=1e-2, precision=precision, progress=False))
    finally:
        torch.optim.AdamW.step = original
    assert result.outcome == "finished" and all(p.dtype == torch.float32 for p in trainable_parameters(method))
    assert set(seen["state"]) == {torch.float32}, seen["state"]


def test_compiled_blocks_give_the_same_numbers_and_share_one_compilation(minilm_dir):
    """compile_blocks with aot_eager (the traced graphs, no generated code: seconds, and eager's numbers bit for bit,
    dropout included): a depth ablation (a prompt in layer 2 of 6 only) with gradient checkpointing, so the
    layers' variants (no prompt, no gradient below, the checkpoint's recomputation) all go through the compiler."""
    torch._dynamo.reset()
    eager = minilm_step(minilm_dir, "p_tuning_v2")
    compiled = minilm_step(minilm_dir, "p_tuning_v2", checkpointing=True, compiler="aot_eager")
    assert compiled["loss"] == eager["loss"]
    for grad_eager, grad_compiled in zip(eager["grads"], compiled["grads"]):
        assert torch.equal(grad_eager, grad_compiled), "aot_eager runs eager's operators: the same gradients"
    assert eager["graphs"] == 0
    assert 0 < compiled["graphs"] < compiled["layers"], \
        f"{compiled['graphs']} compilations for {compiled['layers']} layers: the layers must share them"
    backbone, _ = load_pretrained(str(minilm_dir))
    with pytest.raises(ValueError, match="inductor, aot_eager"):
        compile_blocks(backbone, "tvm")


def test_generation_runs_compiled_blocks_eagerly(tiny_checkpoints):
    """Every decoding step has a new length: the compiler must not see them (generate.decoding)."""
    torch._dynamo.reset()
    model, _ = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    expected = generate(model.eval(), ids, max_new_tokens=6)
    compile_blocks(model, "aot_eager")
    counters.clear()
    with torch.no_grad():  # what generate does first: read the prompt, through the compiled blocks
        model(ids, attention_mask=torch.ones_like(ids), return_cache=True)
    assert counters["stats"]["unique_graphs"] > 0
    counters.clear()
    assert torch.equal(generate(model, ids, max_new_tokens=6), expected)
    assert counters["stats"]["unique_graphs"] == 0, "the prompt's pass is compiled already; no decoding step may be"


def test_the_compile_option_reaches_the_blocks_and_keeps_the_run(tiny_checkpoints, tmp_path):
    torch._dynamo.reset()
    records = {}
    for backend in (None, "aot_eager"):
        argv = ["--model", str(tiny_checkpoints["gpt2"][0]), "--task", "builtin_sentiment", "--max-steps", "3",
                "--eval-every", "1", "--batch-size", "8", "--max-length", "24", "--limit-dev", "16", "--skip-test",
                "--no-progress", "--out", str(tmp_path / str(backend))] + (["--compile", backend] if backend else [])
        counters.clear()
        records[backend] = p_tuning_v2.main(argv)
        records[backend].graphs = counters["stats"]["unique_graphs"]
    eager, compiled = records[None], records["aot_eager"]
    assert compiled.options["compile"] == "aot_eager" and compiled.graphs > 0 and eager.graphs == 0
    assert [(h["loss"], h["dev_metric"]) for h in compiled.history] == [(h["loss"], h["dev_metric"]) for h in eager.history]
