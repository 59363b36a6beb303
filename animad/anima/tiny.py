"""Write a tiny, random-initialised Anima model set in the real files' key layout.

Tests and `animad demo` load these through the same loader as the real 4 GB files: the DiT file
carries `net.`-prefixed keys including `net.llm_adapter.*`, the text encoder `model.`-prefixed Qwen3
keys, and the VAE the Wan-original names. Only widths and depths are smaller.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from animad.anima import vae as vae_module
from animad.anima.dit import AnimaDiT, DiTConfig
from animad.anima.load import infer_qwen_config
from animad.anima.text import QWEN_SPECIALS, load_qwen_tokenizer

TINY_DIT = DiTConfig(dim=64, depth=2, head_dim=32, context_dim=64, adaln_lora_dim=16, mlp_ratio=4)
TINY_QWEN = dict(hidden=32, layers=2, head_dim=16, heads=2, kv_heads=1, intermediate=64)
TINY_VAE_BASE = 8
T5_VOCAB = 32128  # the adapter embedding rows in the real model (T5 v1.1 vocab + extra ids)


def find_shared_tokenizers() -> Path | None:
    """The real tokenizer files shipped beside this checkout (../shared/tokenizers), if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "tokenizers"
        if (candidate / "qwen3" / "vocab.json").is_file() and (candidate / "t5").is_dir():
            return candidate
    return None


def write_tiny_tokenizers(out: Path, corpus: list[str]) -> None:
    """Train a tiny Qwen-style byte-level BPE and build a tiny T5-style unigram (ids: pad 0, </s> 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    qwen_dir, t5_dir = out / "qwen3", out / "t5"
    qwen_dir.mkdir(parents=True, exist_ok=True)
    t5_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    bpe.model.save(str(qwen_dir))
    vocab_size = bpe.get_vocab_size()
    decoder = {str(vocab_size + i): {"content": tok, "special": True} for i, tok in enumerate(QWEN_SPECIALS)}
    (qwen_dir / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))

    words = sorted({w for line in corpus for w in line.replace(",", " ").split()})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in words] + [(w, -2.0) for w in words]
    pieces += [(c, -5.0) for c in sorted({c for line in corpus for c in line})]
    pieces += [("\u2581", -3.0)]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    unigram.save(str(t5_dir / "tokenizer.json"))


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    # Norm weights stay near 1 and linears near PyTorch's init scale, so the tiny nets behave sanely.
    for name, param in module.named_parameters():
        with torch.no_grad():
            if param.ndim == 1:
                param.copy_(1.0 + 0.05 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param.shape[1] if param.ndim > 1 else param.shape[0]
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in ** 0.5)


def make_tiny_model_set(out: Path, seed: int = 0, tokenizers: Path | None = None,
                        corpus: list[str] | None = None) -> dict[str, Path]:
    """Write dit.safetensors, text_encoder.safetensors, vae.safetensors and tokenizers/ into out."""
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKLQwenImage
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner
    from safetensors.torch import save_file
    from transformers import Qwen3Model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tok_dir = out / "tokenizers"
    tokenizers = tokenizers or find_shared_tokenizers()
    if tokenizers is not None:
        shutil.copytree(tokenizers / "qwen3", tok_dir / "qwen3", dirs_exist_ok=True)
        shutil.copytree(tokenizers / "t5", tok_dir / "t5", dirs_exist_ok=True)
        qwen_vocab, t5_vocab = 151936, T5_VOCAB  # the real embedding sizes
    else:
        write_tiny_tokenizers(tok_dir, corpus or ["1girl, solo, smile", "cat, outdoors, tree"])
        qwen_vocab = load_qwen_tokenizer(tok_dir / "qwen3").get_vocab_size(with_added_tokens=True)
        t5_vocab = 512

    dit = AnimaDiT(TINY_DIT)
    adapter = AnimaTextConditioner(source_dim=TINY_QWEN["hidden"], target_dim=TINY_DIT.context_dim,
                                   model_dim=TINY_DIT.context_dim, num_layers=2, num_attention_heads=2,
                                   target_vocab_size=t5_vocab)
    _randomise(dit, generator)
    _randomise(adapter, generator)
    state = {f"net.{k}": v.contiguous() for k, v in dit.state_dict().items()}
    state.update({f"net.llm_adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()})
    save_file(state, str(out / "dit.safetensors"), metadata={"format": "pt"})

    q = TINY_QWEN
    shapes = {"embed_tokens.weight": (None, (qwen_vocab, q["hidden"])),
              "layers.0.self_attn.q_norm.weight": (None, (q["head_dim"],)),
              "layers.0.mlp.gate_proj.weight": (None, (q["intermediate"], q["hidden"])),
              "layers.0.self_attn.q_proj.weight": (None, (q["heads"] * q["head_dim"], q["hidden"])),
              "layers.0.self_attn.k_proj.weight": (None, (q["kv_heads"] * q["head_dim"], q["hidden"]))}
    shapes.update({f"layers.{i}.x": None for i in range(q["layers"])})
    text_encoder = Qwen3Model(infer_qwen_config(shapes))
    _randomise(text_encoder, generator)
    save_file({f"model.{k}": v.contiguous() for k, v in text_encoder.state_dict().items()},
              str(out / "text_encoder.safetensors"))

    vae = AutoencoderKLQwenImage(base_dim=TINY_VAE_BASE, z_dim=16)
    save_file({k: v.contiguous() for k, v in vae_module.diffusers_to_original(vae.state_dict()).items()},
              str(out / "vae.safetensors"))
    return {"dit": out / "dit.safetensors", "text_encoder": out / "text_encoder.safetensors",
            "vae": out / "vae.safetensors", "tokenizers": tok_dir}
