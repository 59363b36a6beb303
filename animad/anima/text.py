"""Anima's text path: Qwen3 last hidden state -> LLM adapter (with T5 token ids) -> 512-row context.

Conventions follow ComfyUI, which is what our users sample with (docs/anima_arch.md section 2.4):
- Qwen ids have no BOS/EOS; an empty prompt is one pad token (<|endoftext|>), as ComfyUI's
  min_length=1 gives. T5 ids end with </s> (id 1); the empty prompt is just [1].
- The adapter sees only real tokens (a batch uses key-only masks, which equals running each prompt
  unpadded), padded T5 rows are zeroed, and the output is zero-padded to 512 rows, never truncated.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

CONTEXT_ROWS = 512
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def load_qwen_tokenizer(directory: Path):
    """Qwen2/Qwen3 byte-level BPE from tokenizer.json, or from vocab.json + merges.txt."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    directory = Path(directory)
    if (directory / "tokenizer.json").is_file() and not (directory / "merges.txt").is_file():
        return Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok = Tokenizer(models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = list(QWEN_SPECIALS)
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            decoder = json.loads(config.read_text()).get("added_tokens_decoder", {})
            ordered = sorted(decoder.items(), key=lambda kv: int(kv[0]))
            specials = [entry["content"] for _, entry in ordered] or specials
        except (ValueError, KeyError, TypeError):
            pass
    tok.add_special_tokens(specials)
    return tok


class T5Ids:
    """T5 v1.1 SentencePiece ids with the trailing </s>; only ids are used (no T5 model exists)."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
            self._sp = None
        else:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
            self._tok = None

    def __call__(self, text: str) -> list[int]:
        if self._tok is not None:
            ids = self._tok.encode(text).ids
            return ids if ids and ids[-1] == 1 else ids + [1]
        return list(self._sp.encode(text)) + [1]


@dataclasses.dataclass
class TextEmbedding:
    """What the adapter needs for one caption; this is what the text cache stores."""

    qwen: torch.Tensor  # (Lq, Dq) Qwen3 final-norm hidden states of the real tokens
    t5_ids: torch.Tensor  # (Lt,) int64, ending with </s>

    # To everything outside anima/ an embedding is opaque: a cache stores these named tensors and gives
    # them back. The names are the keys in the text cache's files on users' disks: renaming one orphans
    # every cached caption.
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The parts on the host, the hidden states in fp32."""
        return {"qwen": self.qwen.float().cpu(), "t5_ids": self.t5_ids.cpu()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TextEmbedding:
        return cls(tensors["qwen"], tensors["t5_ids"])


class TextEncoder:
    """Tokenizers plus the Qwen3 model. Call encode() under torch.no_grad() unless training its LoRA."""

    def __init__(self, model, qwen_tokenizer, t5_ids: T5Ids):
        self.model = model
        self.qwen_tokenizer = qwen_tokenizer
        self.t5_ids = t5_ids
        self.pad_id = qwen_tokenizer.token_to_id("<|endoftext|>")
        if self.pad_id is None:
            raise ValueError("Qwen tokenizer has no <|endoftext|> token")

    def qwen_ids(self, text: str) -> list[int]:
        ids = self.qwen_tokenizer.encode(text, add_special_tokens=False).ids
        return ids or [self.pad_id]  # ComfyUI: min_length=1 pads an empty prompt with one pad token

    def encode(self, texts: list[str]) -> list[TextEmbedding]:
        device = next(self.model.parameters()).device
        ids = [self.qwen_ids(t) for t in texts]
        longest = max(len(i) for i in ids)
        batch = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        for row, seq in enumerate(ids):
            batch[row, : len(seq)] = torch.tensor(seq)
        # Right padding under a causal mask cannot change the real positions, so slicing is exact. The
        # mask is the causal one, built on the host: given a padding mask, transformers inspects it on
        # the device (mask.all(), packed-sequence checks), a host sync on every shuffled-caption step.
        causal = torch.ones(longest, longest, dtype=torch.bool).tril()[None, None].expand(len(ids), 1, -1, -1)
        hidden = self.model(input_ids=batch.to(device), attention_mask=causal.to(device)).last_hidden_state
        return [TextEmbedding(hidden[row, : len(seq)], torch.tensor(self.t5_ids(texts[row])))
                for row, seq in enumerate(ids)]


def adapter_context(adapter, embeddings: list[TextEmbedding], device, dtype=None) -> torch.Tensor:
    """Run the LLM adapter on a batch and return the DiT context (B, max(512, Lt), Dctx)."""
    dtype = dtype or next(adapter.parameters()).dtype
    batch = len(embeddings)
    lq = max(e.qwen.shape[0] for e in embeddings)
    lt = max(e.t5_ids.shape[0] for e in embeddings)
    dq = embeddings[0].qwen.shape[-1]
    source = torch.zeros(batch, lq, dq, device=device, dtype=dtype)
    source_mask = torch.zeros(batch, lq, dtype=torch.bool, device=device)
    target = torch.zeros(batch, lt, dtype=torch.long, device=device)
    target_mask = torch.zeros(batch, lt, dtype=torch.bool, device=device)
    for row, emb in enumerate(embeddings):
        source[row, : emb.qwen.shape[0]] = emb.qwen.to(device, dtype)
        source_mask[row, : emb.qwen.shape[0]] = True
        target[row, : emb.t5_ids.shape[0]] = emb.t5_ids.to(device)
        target_mask[row, : emb.t5_ids.shape[0]] = True
    context = adapter(source_hidden_states=source, target_input_ids=target,
                      target_attention_mask=target_mask, source_attention_mask=source_mask)
    if context.shape[1] < CONTEXT_ROWS:  # the conditioner pads already; keep the contract explicit
        context = torch.nn.functional.pad(context, (0, 0, 0, CONTEXT_ROWS - context.shape[1]))
    return context
