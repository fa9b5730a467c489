"""Short runs of every method family, the same under `python` (one process) and `torchrun` (several).

    python tests/distributed_runs.py CHECKPOINT OUT                                  # one process
    torchrun --nproc_per_node 2 tests/distributed_runs.py CHECKPOINT OUT            # two: the same numbers

tests/test_distributed.py runs both and compares. On a rank other than 0 every file write is an error (all
records, weights, plots and checkpoints go through methods.shared.files.atomic_path) and what it prints goes
to OUT/rank<N>.out, which must stay empty.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

CASES = {  # name: (module, argv)
    "full_fine_tuning": ("methods.fine_tuning", ["--mode", "full", "--lr", "1e-4"]),
    "prompt_tuning": ("methods.prompt_tuning", ["--head", "classifier"]),
    "prefix_tuning": ("methods.prefix_tuning", ["--num-virtual-tokens", "4", "--mlp-hidden", "16"]),
    "p_tuning_v2_depth": ("methods.p_tuning_v2", ["--num-virtual-tokens", "4", "--prompt-layers", "2"]),
    # lr 1e-3: Adam turns the first gradients into their signs, and a gradient near 0 takes either sign by
    # rounding (one process sums in another order than two); at the default 3e-2 that shows as 1e-5 changes.
    "p_tuning": ("methods.p_tuning", ["--template", "{p:2} {text} {p:2}", "--lr", "1e-3"]),
    "lora_odd_batch": ("methods.lora", ["--batch-size", "7"]),
    "adapters": ("methods.adapters", ["--bottleneck", "8"]),
    "bitfit": ("methods.bitfit", []),
    "template_head": ("methods.hard_prompt", ["--mode", "template-head"]),
    "p_tuning_v2_ner": ("methods.p_tuning_v2", ["--num-virtual-tokens", "4", "--task", "builtin_ner"]),
}
COMMON = ["--task", "builtin_sentiment", "--max-steps", "4", "--eval-every", "2", "--batch-size", "8",
          "--max-length", "24", "--limit-dev", "16", "--no-progress", "--skip-test"]


def main(checkpoint: str, out: str) -> None:
    import torch
    from methods.shared import distributed, files
    # Dropout off (the tiny checkpoint has none; the heads' own): each process draws its own masks, so only
    # without dropout can one process and two agree number for number.
    torch.nn.Dropout.forward = lambda self, x: x
    rank = int(os.environ.get("RANK", "0"))
    stdout = open(Path(out) / f"rank{rank}.out", "w") if rank else contextlib.nullcontext(sys.stdout)
    if rank:
        def refuse(path):
            raise AssertionError(f"rank {rank} wrote {path}: only rank 0 writes")
        files.atomic_path = refuse
        import methods.shared.pipeline as pipeline
        pipeline.atomic_path = refuse
        import methods.shared.training as training
        training.atomic_path = refuse
        import methods.shared.plots as plots
        plots.atomic_path = refuse
    with stdout as stream, contextlib.redirect_stdout(stream):
        for name, (module, argv) in CASES.items():
            argv = ["--model", checkpoint, *COMMON, *argv, "--out", str(Path(out) / name)]
            importlib.import_module(module).main(argv)
        interrupted_and_resumed(checkpoint, Path(out) / RESUMED)
    distributed.barrier()


RESUMED = "prompt_tuning_resumed"  # the "prompt_tuning" case, stopped at step 3 and resumed: the same numbers


def interrupted_and_resumed(checkpoint: str, out: Path) -> None:
    """Every rank gets SIGINT during step 3 (torchrun forwards a Ctrl-C to all of them), then `--resume`."""
    import signal
    from methods import prompt_tuning
    from methods.shared import training
    argv = ["--model", checkpoint, *COMMON, *CASES["prompt_tuning"][1], "--out", str(out)]
    calls, backward = {"n": 0}, training.backward

    def interrupting_backward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return backward(*args, **kwargs)
    training.backward = interrupting_backward
    stopped = prompt_tuning.main(argv)
    assert stopped.outcome == "interrupted" and stopped.steps == 3, (stopped.outcome, stopped.steps)
    calls["n"] = 10  # no more interrupts: from here it only counts the steps the resumed run trains
    resumed = prompt_tuning.main(argv + ["--resume"])
    training.backward = backward
    assert resumed.steps == 4 and calls["n"] == 11, f"the resumed run trained {calls['n'] - 10} steps, not 1"


if __name__ == "__main__":
    main(*sys.argv[1:3])
