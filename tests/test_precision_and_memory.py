"""Mixed precision and gradient checkpointing: options of the one loop that change cost, not what is learned."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from data import batches, load_task
from methods import fine_tuning
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.training import TrainConfig, task_loss, train, trainable_parameters
from minitransformer import load_pretrained

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


@pytest.mark.parametrize("name", list(BUILD))
def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_less_memory(name, minilm_dir):
    """Dropout on: the recomputed forward replays the random state, so even its masks are the same."""
    examples = load_task("builtin_sentiment").splits["train"][:16]
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone, tokenizer = load_pretrained(str(minilm_dir))
        backbone.gradient_checkpointing = checkpointing
        method = BUILD[name](backbone, tokenizer).train()
        batch = next(batches(examples, tokenizer, 16, max_length=32))
        torch.manual_seed(1)
        loss = {}
        memory = saved_bytes(lambda: loss.setdefault("value", task_loss(method(batch), batch["labels"])).backward())
        grads = [p.grad.clone() for p in trainable_parameters(method)]
        results[checkpointing] = (loss["value"].item(), grads, memory)
    (loss_plain, grads_plain, memory_plain), (loss_cp, grads_cp, memory_cp) = results[False], results[True]
    assert loss_cp == pytest.approx(loss_plain, rel=1e-5)
    for plain, cp in zip(grads_plain, grads_cp):
        torch.testing.assert_close(cp, plain, rtol=1e-5, atol=1e-5, msg=f"{name}: gradients differ with checkpointing")
    assert memory_cp < 0.6 * memory_plain, f"{name}: {memory_cp:,} bytes kept with checkpointing, {memory_plain:,} without"


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
