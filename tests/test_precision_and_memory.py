"""Mixed precision and gradient checkpointing: options of the one loop that change cost, not what is learned."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from data import batches, load_task
from methods import fine_tuning, p_tuning_v2, registry
from methods.bitfit import BitFitConfig
from methods.lora import LoRAConfig
from methods.p_tuning_v2 import PTuningV2, PTuningV2Config
from methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from methods.prompt_tuning import PromptTuning, PromptTuningConfig
from methods.shared.training import TrainConfig, task_loss, train, trainable_parameters
from minitransformer import compile_blocks, generate, load_pretrained
from minitransformer.model import Linear, cast_frozen_weights_once

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


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_generation_under_autocast_casts_the_frozen_weights_once(kind, tiny_checkpoints, tmp_path, monkeypatch):
    """generate.decoding keeps the frozen weights in bf16 for the whole generation: the same tokens, and as many
    casts of the frozen projections' weights for 3 new tokens as for 6 (none per decoding step)."""
    import importlib
    from minitransformer import generate_seq2seq
    from tests.test_seq2seq_methods import save_tiny
    generation = importlib.import_module("minitransformer.generate")  # the module (the package exports a function)
    if kind == "t5":
        save_tiny("t5", tmp_path)
    model, _ = load_pretrained(str(tmp_path if kind == "t5" else tiny_checkpoints["gpt2"][0]))
    model.eval().requires_grad_(False)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    frozen = {p.data_ptr() for m in model.modules() if isinstance(m, Linear) for p in m.parameters()}

    def run(new_tokens: int) -> tuple[torch.Tensor, int]:
        with Casts() as casts, torch.autocast("cpu", dtype=torch.bfloat16):
            out = (generate_seq2seq(model, ids, torch.ones_like(ids), max_new_tokens=new_tokens, eos_id=-1)
                   if kind == "t5" else generate(model, ids, max_new_tokens=new_tokens, eos_id=-1))
        return out, sum(ptr in frozen for ptr in casts.cast)
    (short, kept_short), (tokens, kept_long) = run(3), run(6)
    original = generation.cast_frozen_weights_once  # the same generation, each step casting its weights again:
    monkeypatch.setattr(generation, "cast_frozen_weights_once", lambda model, dtype: original(model, None))
    (_, recast_short), (recast_tokens, recast_long) = run(3), run(6)
    assert torch.equal(tokens, recast_tokens) and torch.equal(short, tokens[:, :short.shape[1]])
    assert kept_short == kept_long and recast_short < recast_long, (kept_short, kept_long, recast_short, recast_long)


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


class Casts(TorchDispatchMode):
    """The tensors cast (aten._to_copy) and stacked (aten.cat) while inside."""

    def __init__(self):
        super().__init__()
        self.cast, self.stacked = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_to_copy":
            self.cast.append(args[0].data_ptr())
        self.stacked += func.overloadpacket.__name__ == "cat"
        return func(*args, **(kwargs or {}))


def bf16_steps(directory, config, kept: bool, steps: int = 2) -> dict:
    """`steps` training steps under bf16 autocast (dropout on, seeded), inside cast_frozen_weights_once or not: the
    losses, the trainable gradients, and which frozen Linear tensors the last step cast."""
    torch.manual_seed(0)
    backbone, tokenizer = load_pretrained(str(directory))
    method = registry.method_for(config).model_class(backbone, tokenizer, 2, config).train()
    batch = next(batches(load_task("builtin_sentiment").splits["train"][:8], tokenizer, 8, max_length=24))
    frozen = {p.data_ptr() for m in backbone.modules() if hasattr(type(m), "cast")  # Linear, LoRALinear
              for p in m.parameters() if not p.requires_grad}
    torch.manual_seed(1)
    losses = []
    with cast_frozen_weights_once(method, torch.bfloat16 if kept else None):
        for _ in range(steps):
            method.zero_grad(set_to_none=True)
            with Casts() as casts:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = task_loss(method(batch), batch["labels"])
                loss.backward()
            losses.append(loss.detach())
    assert all(m.cast is None for m in method.modules() if hasattr(m, "cast")), "the copies go with the block"
    return {"losses": losses, "grads": [p.grad for p in trainable_parameters(method)],
            "frozen_cast": sum(ptr in frozen for ptr in casts.cast), "stacked": casts.stacked,
            "layers": backbone.config.num_layers}


@pytest.mark.parametrize("kind, config", [
    ("gpt2", PromptTuningConfig(4, init="random", head="classifier")), ("gpt2", PTuningV2Config(4)),
    ("bert", PrefixTuningConfig(4, mlp_hidden=16)), ("bert", LoRAConfig()), ("gpt2", BitFitConfig())],
    ids=["prompt_tuning", "p_tuning_v2", "prefix_tuning", "lora", "bitfit"])
def test_frozen_weights_cast_once_keep_the_numbers_and_drop_the_casts(kind, config, tiny_checkpoints):
    """minitransformer.model.cast_frozen_weights_once: under autocast a frozen weight is not cast again at every
    step (nor the query/key/value weights stacked again), and every loss and gradient stays the same bit for bit,
    a trainable bias's (BitFit) included."""
    directory = tiny_checkpoints[kind][0]
    recast, kept = bf16_steps(directory, config, kept=False), bf16_steps(directory, config, kept=True)
    assert all(torch.equal(a, b) for a, b in zip(recast["losses"], kept["losses"]))
    assert all(torch.equal(a, b) for a, b in zip(recast["grads"], kept["grads"]))
    assert recast["frozen_cast"] > 0 and kept["frozen_cast"] == 0, (recast["frozen_cast"], kept["frozen_cast"])
    if not isinstance(config, LoRAConfig):  # LoRA's wrapped projections are not stacked
        stacks = 1 if isinstance(config, BitFitConfig) else 2  # BitFit trains the biases: stacked at each step
        assert recast["stacked"] - kept["stacked"] == stacks * kept["layers"], "q/k/v's weights (and biases) a layer"


def test_frozen_weights_cast_once_follow_changes_nest_and_cost_half(tiny_checkpoints):
    """The copies cost half the frozen Linear weights' fp32 bytes (q/k/v's are views of their stacked copy); a weight
    changed in place, made trainable or hooked inside the block is used as itself; an inner block keeps the outer
    block's copies."""
    torch.manual_seed(0)
    backbone, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    method = PTuningV2(backbone, tokenizer, 2, PTuningV2Config(4)).train()
    batch = next(batches(load_task("builtin_sentiment").splits["train"][:8], tokenizer, 8, max_length=24))
    attention = backbone.layers[0].attention

    def logits():
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return method(batch)
    with cast_frozen_weights_once(method, torch.bfloat16):
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for m in backbone.modules()
                    if isinstance(m, Linear) for t in (m.cast.weight, m.cast.bias)}
        fp32 = sum(p.numel() * 4 for m in backbone.modules() if isinstance(m, Linear) for p in m.parameters())
        assert sum(storages.values()) == fp32 // 2
        assert attention.query.cast.weight.untyped_storage().data_ptr() == attention.cast.weight.data_ptr()
        outer = attention.cast
        with cast_frozen_weights_once(method, torch.bfloat16):
            assert attention.cast is outer
        assert attention.cast is outer, "leaving an inner block keeps the outer block's copies"
        with torch.no_grad():
            backbone.layers[0].mlp.up.weight.mul_(2)
            attention.key.bias.add_(1)
        changed = logits()
        calls = []
        attention.query.register_forward_hook(lambda *args: calls.append(1))
        logits()
        assert calls == [1], "a projection hooked inside the block runs as a module of its own"
        attention.query._forward_hooks.clear()
        backbone.layers[1].mlp.down.weight.requires_grad_(True)
        logits().float().sum().backward()
        assert backbone.layers[1].mlp.down.weight.grad is not None, "made trainable inside the block: it learns"
    backbone.layers[1].mlp.down.weight.requires_grad_(False)
    assert torch.equal(changed, logits()), "the changed weights were used inside the block as they are outside"
    assert all(m.cast is None for m in method.modules() if hasattr(type(m), "cast"))


def test_frozen_weights_cast_once_leave_fp32_and_training_runs_alone(tiny_checkpoints, monkeypatch):
    """Outside autocast (fp32 evaluation inside the training loop, on CPU) the fp32 weights serve, bit for bit, and
    under autocast to another dtype they are cast from fp32 as without the block (not from bf16); the
    training loop keeps the casts for its bf16 steps and none in fp32, and its history is the one without them."""
    from methods.shared import training
    backbone, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
    method = PTuningV2(backbone, tokenizer, 2, PTuningV2Config(4)).eval()
    batch = next(batches(load_task("builtin_sentiment").splits["train"][:8], tokenizer, 8, max_length=24))
    with torch.no_grad():
        fp32 = method(batch)
        with torch.autocast("cpu", dtype=torch.float16):
            fp16 = method(batch)
        with cast_frozen_weights_once(method, torch.bfloat16):
            assert torch.equal(method(batch), fp32)
            with torch.autocast("cpu", dtype=torch.float16):  # another dtype than the kept one: autocast casts
                assert torch.equal(method(batch), fp16)
    examples = load_task("builtin_sentiment").splits["train"][:32]
    entered = []

    def run(precision: str, keep: bool) -> list:
        def spy(model, dtype):
            entered.append(dtype)
            return cast_frozen_weights_once(model, dtype if keep else None)
        monkeypatch.setattr(training, "cast_frozen_weights_once", spy)
        torch.manual_seed(0)
        model = PTuningV2(load_pretrained(str(tiny_checkpoints["gpt2"][0]))[0], tokenizer, 2, PTuningV2Config(4))
        return train(model, lambda epoch: batches(examples, tokenizer, 8, shuffle=True, seed=epoch, max_length=24),
                     4, lambda: batches(examples[:8], tokenizer, 8, max_length=24),
                     TrainConfig(epochs=1, eval_every=2, lr=1e-2, precision=precision, progress=False)).history
    kept, recast = run("bf16", True), run("bf16", False)
    assert [(h["loss"], h["dev_metric"]) for h in kept] == [(h["loss"], h["dev_metric"]) for h in recast]
    run("fp32", True)
    assert entered == [torch.bfloat16, torch.bfloat16, None]


def test_compiled_blocks_take_the_kept_casts(tiny_checkpoints):
    """Compiled blocks inside cast_frozen_weights_once: eager's bf16 numbers without the block bit for bit, no graph
    break and no graph more than compiled without it, nothing compiled anew for a second block (a second run), and
    fewer casts in the compiled forward graphs (the kept copies come in as inputs)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from minitransformer.model import Block

    def losses(compiled: bool, kept: bool) -> dict:
        casts = []

        def count_casts(graph, example_inputs):  # the forward graph of a compiled block, run as it is
            casts.append(sum(node.target == torch.ops.aten._to_copy.default for node in graph.graph.nodes))
            return make_boxed_func(graph.forward)
        torch.manual_seed(0)
        backbone, tokenizer = load_pretrained(str(tiny_checkpoints["gpt2"][0]))
        for block in backbone.modules() if compiled else []:
            if isinstance(block, Block):
                block.compile(backend=aot_autograd(fw_compiler=count_casts), dynamic=True)
        method = PTuningV2(backbone, tokenizer, 2, PTuningV2Config(4)).train()
        batch = next(batches(load_task("builtin_sentiment").splits["train"][:8], tokenizer, 8, max_length=24))
        torch.manual_seed(1)
        counters.clear()
        out, graphs = [], []
        for _ in range(2):  # two runs, each in a block of its own
            with cast_frozen_weights_once(method, torch.bfloat16 if kept else None):
                for _ in range(2):
                    method.zero_grad(set_to_none=True)
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = task_loss(method(batch), batch["labels"])
                    loss.backward()
                    out.append((loss.item(), method.prefix.flat_prefix.grad.clone()))
            graphs.append(counters["stats"]["unique_graphs"])
        return {"steps": out, "graphs": graphs, "casts": sum(casts), "breaks": sum(counters["graph_break"].values())}
    eager, recast, kept = losses(False, False), losses(True, False), losses(True, True)
    assert [loss for loss, _ in kept["steps"]] == [loss for loss, _ in eager["steps"]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(kept["steps"], eager["steps"]))
    assert kept["breaks"] == recast["breaks"] == 0
    assert kept["graphs"][0] == kept["graphs"][1] == recast["graphs"][1] > 0, (kept["graphs"], recast["graphs"])
    assert kept["casts"] < recast["casts"], (kept["casts"], recast["casts"])
