"""data: the tasks of the project, their real file formats, prompts, batching and metrics.

    from data import load_task, batches
    task = load_task("sst2")                 # or "builtin_sentiment" offline
    for batch in batches(task.split("train"), tokenizer, batch_size=16, shuffle=True, seed=0):
        ...

Data files are found in the ``data_dir`` argument, PROMPT_DATA_DIR, the cache, or
downloaded (see data/download.py); the built-in sets in data/builtin/ were written
for this project and are not benchmarks.
"""
from .batching import (IGNORE_INDEX, align_word_labels, batches, causal_lm_batches, seq2seq_batches, encode_examples, fit_template,
                       k_shot, table_prompt)
from .download import DataNotFoundError, DownloadError, cache_dir, download, find_file
from .metrics import METRICS, accuracy, corpus_bleu, entity_f1, entity_spans, macro_f1
from .prompts import (TemplateError, VerbalizerError, apply_template, check_template, check_verbalizer,
                      label_word)
from .readers import (NER_TAGS, DataFormatError, Example, NerExample, TableExample, iob1_to_bio,
                      linearize_mr)
from .tasks import TASKS, MissingSplitError, Task, UnknownTaskError, hash_split, load_task

__all__ = [
    "load_task", "Task", "TASKS", "hash_split", "Example", "NerExample", "TableExample", "NER_TAGS",
    "batches", "causal_lm_batches", "seq2seq_batches", "table_prompt", "encode_examples", "fit_template", "align_word_labels", "k_shot", "IGNORE_INDEX",
    "apply_template", "check_template", "check_verbalizer", "label_word",
    "accuracy", "macro_f1", "entity_spans", "entity_f1", "corpus_bleu", "METRICS",
    "find_file", "download", "cache_dir", "iob1_to_bio", "linearize_mr",
    "DataFormatError", "DataNotFoundError", "DownloadError", "MissingSplitError", "UnknownTaskError",
    "TemplateError", "VerbalizerError",
]
