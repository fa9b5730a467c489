"""A thin tokenizer over the Hugging Face `tokenizers` library.

It reads what a checkpoint directory ships (tokenizer.json, or vocab.txt for
WordPiece, or vocab.json + merges.txt for byte-level BPE) and turns lists of
strings into padded id tensors. Padding is done here, not in the backend, so that
left padding (for GPT-2 generation) and right padding share one code path.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer as Backend
from tokenizers import processors
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

# The first name found in the vocabulary wins; BERT, RoBERTa and GPT-2 spell them differently.
SPECIAL_TOKENS = {
    "cls": ["[CLS]", "<s>"],
    "sep": ["[SEP]", "</s>"],
    "mask": ["[MASK]", "<mask>"],
    "pad": ["[PAD]", "<pad>"],
    "bos": ["<s>", "<|endoftext|>", "[CLS]"],
    "eos": ["</s>", "<|endoftext|>", "[SEP]"],
    "unk": ["[UNK]", "<unk>"],
}


class Tokenizer:
    """Batch encoding and decoding with the special-token ids a model needs.

    Output of `encode`: a dict of LongTensors `input_ids`, `attention_mask`,
    `token_type_ids`, each [batch, longest sequence in the batch].
    """

    def __init__(self, backend: Backend, model_max_length: int = 512):
        self.backend = backend
        self.backend.no_padding()  # checkpoints often ship fixed padding/truncation; we decide per call
        self.backend.no_truncation()
        self.model_max_length = model_max_length
        # Byte-level BPE (GPT-2, RoBERTa) marks a leading space in its tokens: " great" != "great".
        pre_tokenizer = json.dumps(json.loads(backend.to_str())["pre_tokenizer"])
        self.is_byte_level = "ByteLevel" in pre_tokenizer
        # SentencePiece (T5) marks a word start with "▁" instead
        self.is_sentencepiece = "Metaspace" in pre_tokenizer
        for role, names in SPECIAL_TOKENS.items():
            token = next((n for n in names if backend.token_to_id(n) is not None), None)
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_id", None if token is None else backend.token_to_id(token))
        if self.pad_id is None:  # GPT-2 has no pad token; padded positions are masked out anyway
            self.pad_id = self.eos_id if self.eos_id is not None else 0

    @classmethod
    def from_dir(cls, directory: str | Path, model_type: str = "bert", model_max_length: int = 512) -> "Tokenizer":
        """Load tokenizer.json, else vocab.txt (WordPiece), else vocab.json + merges.txt (byte-level BPE)."""
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        lowercase = json.loads(config_path.read_text()).get("do_lower_case", True) if config_path.exists() else True
        if (directory / "tokenizer.json").exists():
            backend = Backend.from_file(str(directory / "tokenizer.json"))
        elif (directory / "vocab.txt").exists():
            backend = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lowercase)._tokenizer
        elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
            backend = ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))._tokenizer
            if model_type in ("roberta", "bart"):  # <s> A </s></s> B </s>, as RobertaTokenizerFast builds it
                backend.post_processor = processors.RobertaProcessing(
                    ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")), trim_offsets=True)
        else:
            raise FileNotFoundError(
                f"No tokenizer files in {directory}: expected tokenizer.json, vocab.txt, "
                "or vocab.json + merges.txt (the files a Hugging Face checkpoint ships).")
        return cls(backend, model_max_length)

    def __len__(self) -> int:
        return self.backend.get_vocab_size()

    def token_ids(self, text: str) -> list[int]:
        """Ids of `text` without special tokens (e.g. to check a verbalizer word is one token)."""
        self._set_truncation(None)
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None,
               padding_side: str = "right", add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Encode a batch of sentences (or sentence pairs), truncated longest-first to `max_length`."""
        if isinstance(texts, str):
            texts = [texts]
        inputs = texts if pairs is None else list(zip(texts, pairs))
        self._set_truncation(max_length)
        encodings = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        return self._pad([e.ids for e in encodings], [e.type_ids for e in encodings], padding_side)

    def encode_words(self, word_lists: list[list[str]], max_length: int | None = None
                     ) -> tuple[dict[str, torch.Tensor], list[list[int | None]]]:
        """Encode pre-split words (NER); also return, per token, the index of the word it came from."""
        self._set_truncation(max_length)
        encodings = self.backend.encode_batch(word_lists, is_pretokenized=True)
        batch = self._pad([e.ids for e in encodings], [e.type_ids for e in encodings], "right")
        return batch, [e.word_ids for e in encodings]

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(torch.as_tensor(ids).tolist(), skip_special_tokens=skip_special_tokens)

    def _set_truncation(self, max_length: int | None) -> None:
        if max_length is None:
            return self.backend.no_truncation()
        self.backend.enable_truncation(max_length, strategy="longest_first")

    def _pad(self, ids: list[list[int]], type_ids: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(ids), longest), dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, (seq, types) in enumerate(zip(ids, type_ids)):
            cols = slice(longest - len(seq), longest) if side == "left" else slice(0, len(seq))
            input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            token_type_ids[row, cols] = torch.tensor(types, dtype=torch.long)
            attention_mask[row, cols] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
