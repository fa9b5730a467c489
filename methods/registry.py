"""Every method by name: its file, its config dataclass and its model class, and the name each run is filed under.

    registry.get("prefix_tuning").model_class        # PrefixTuning
    registry.method_for(PrefixTuningConfig())        # the entry of a config, as the pipeline looks it up
    registry.run_name(PrefixTuningConfig(flat=True))  # "prefix_tuning_flat"

The method files never import this module; the pipeline (methods/shared/pipeline.py), compare,
export_peft, `load_method` and the lessons resolve methods through it. Classes are imported on
first use, so reading the registry costs nothing.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    module: str           # the method's file, importable: python -m <module>
    config: str           # its config dataclass (command-line options come from its fields)
    model: str            # its nn.Module: Model(backbone, tokenizer, num_labels, config, task_kind, verbalizer)
    summary: str
    generates: bool = False  # trains and scores on generation tasks (table-to-text)

    @property
    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    @property
    def model_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.model)

    def default_lr_text(self) -> str:
        """The method's default learning rate(s), as its module's DEFAULT_LR says."""
        default = importlib.import_module(self.module).DEFAULT_LR
        if isinstance(default, dict):
            return ", ".join(f"{value:g} ({key})" for key, value in default.items())
        return f"{default:g}"


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("fine_tuning", "methods.fine_tuning", "FineTuningConfig", "FineTuning",
           "full fine-tuning, head-only (linear probe), top-k layers (Devlin et al. 2019)"),
    Method("hard_prompt", "methods.hard_prompt", "HardPromptConfig", "HardPrompt",
           "templates + verbalizers: zero-shot, in-context, template sensitivity, template + head"),
    Method("prompt_tuning", "methods.prompt_tuning", "PromptTuningConfig", "PromptTuning",
           "soft prompts at the input (Lester et al. 2021)"),
    Method("prefix_tuning", "methods.prefix_tuning", "PrefixTuningConfig", "PrefixTuning",
           "key/value prefixes in every layer, MLP reparameterization (Li & Liang 2021)", generates=True),
    Method("p_tuning", "methods.p_tuning", "PTuningConfig", "PTuning",
           "a prompt encoder's vectors placed by a template (Liu et al. 2021)"),
    Method("p_tuning_v2", "methods.p_tuning_v2", "PTuningV2Config", "PTuningV2",
           "deep prompts in every (or chosen) layer, [CLS] or token head (Liu et al. 2022)"),
    Method("lora", "methods.lora", "LoRAConfig", "LoRA", "low-rank updates of frozen projections (Hu et al. 2021)"),
    Method("adapters", "methods.adapters", "AdapterConfig", "Adapters",
           "bottleneck adapters or AdapterBias in every block (Houlsby et al. 2019; Fu et al. 2022)"),
    Method("bitfit", "methods.bitfit", "BitFitConfig", "BitFit", "only the biases train (Ben Zaken et al. 2021)"),
]}


def get(name: str) -> Method:
    """The method called `name`; an unknown name is an error that suggests the nearest."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        raise ValueError(f"Unknown method {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; the methods are {', '.join(METHODS)}.")
    return METHODS[name]


def method_for_class(config_class: type) -> Method:
    for method in METHODS.values():
        # by name: a method file run as a script (python methods/x.py) defines its classes in __main__
        if config_class.__name__ == method.config and config_class.__module__ in (method.module, "__main__"):
            return method
    raise ValueError(f"{config_class.__name__} is no method's config; the registry knows "
                     f"{', '.join(m.config for m in METHODS.values())}.")


def method_for(config) -> Method:
    """The method a config belongs to (exactly its class: P-tuning v2's config extends prefix tuning's)."""
    return method_for_class(type(config))


def run_name(config) -> str:
    """The one place run names come from: the method's name, plus what sets this run apart from its defaults."""
    method = method_for(config).name
    if method == "fine_tuning":
        return {"full": "full_fine_tuning", "head": "head_only", "top-k": f"top{config.top_layers}_layers"}[config.mode]
    if method == "hard_prompt":
        return {"zero-shot": "zero_shot", "icl": "in_context", "sensitivity": "template_sensitivity",
                "template-head": "template_head"}[config.mode]
    if method == "prefix_tuning" and config.flat:
        return "prefix_tuning_flat"
    if method == "p_tuning_v2" and config.prompt_layers != "all":
        return f"p_tuning_v2_layers{config.prompt_layers.replace(',', '_')}"
    if method == "adapters":
        if config.kind == "adapterbias":
            return "adapter_bias"
        return "adapters" if config.bottleneck == type(config)().bottleneck else f"adapters_m{config.bottleneck}"
    return method


def options_markdown() -> str:
    """The README's section on command-line options: the run options, then each method's own."""
    from methods.shared.options import RunOptions, options_markdown as table
    parts = ["### Shared by every method", "", table(RunOptions)]
    for method in METHODS.values():
        parts += ["", f"### `{method.module.replace('.', '/')}.py`: {method.summary}", "",
                  f"Default learning rate: {method.default_lr_text()}.", "", table(method.config_class)]
    return "\n".join(parts)


README_BLOCK = r"(<!-- options: begin \(python -m methods.registry\) -->\n).*?(\n<!-- options: end -->)"

if __name__ == "__main__":  # every method and its options, as the README lists them (--readme FILE: update them there)
    import re
    import sys
    if sys.argv[1:2] == ["--readme"]:
        path = sys.argv[2]
        with open(path) as handle:
            text = handle.read()
        with open(path, "w") as handle:
            handle.write(re.sub(README_BLOCK, lambda m: m.group(1) + options_markdown() + m.group(2), text, flags=re.S))
    else:
        print(options_markdown())
