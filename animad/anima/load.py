"""Load the ComfyUI split files offline, with strict key and shape checks and clear errors.

The same loader loads the real 4 GB files and the tiny test models: the architecture sizes (width,
depth, heads, vocab) are read from the tensor shapes, the way ComfyUI's model detection does, and
then every key and shape must match exactly what that architecture has.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch

from animad.anima import vae as vae_module
from animad.anima.dit import AnimaDiT, DiTConfig
from animad.errors import ModelFileError

DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "net.")
DIT_IGNORED = re.compile(r"^(pos_embedder\.|accum_|.*_extra_state$|.*\.inv_freq$)")
TE_PREFIXES = ("text_encoders.qwen3_06b.transformer.model.", "transformer.model.", "model.")

WHAT = {
    "dit": "an Anima DiT (ComfyUI models/diffusion_models, keys like net.blocks.0.self_attn.q_proj.weight "
           "and net.llm_adapter.*)",
    "text_encoder": "the Qwen3-0.6B text encoder (ComfyUI models/text_encoders/qwen_3_06b_base.safetensors, "
                    "keys like model.layers.0.self_attn.q_proj.weight)",
    "vae": "the Qwen-Image VAE (ComfyUI models/vae/qwen_image_vae.safetensors, keys like "
           "encoder.conv1.weight and decoder.upsamples.0.residual.0.gamma)",
}


def read_header(path: Path, what: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse a safetensors header: {key: (dtype, shape)}. Checks the file is complete, reads no data."""
    path = Path(path)
    expected = WHAT.get(what, what)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: empty or not a .safetensors file; expected {expected}")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                raise ModelFileError(f"{path}: not a .safetensors file (bad header length); expected {expected}. "
                                     "Was it downloaded completely? .ckpt/.pt/.gguf files are not supported.")
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found; expected {expected}") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: cannot read a safetensors header ({error}); expected {expected}") from None
    header.pop("__metadata__", None)
    out, end = {}, 0
    for key, info in header.items():
        try:
            out[key] = (info["dtype"], tuple(info["shape"]))
            end = max(end, info["data_offsets"][1])
        except (KeyError, TypeError, IndexError):
            raise ModelFileError(f"{path}: damaged safetensors header at key {key}") from None
    if 8 + length + end > size:
        missing = 8 + length + end - size
        raise ModelFileError(f"{path}: file is truncated ({missing:,} bytes missing of {8 + length + end:,}); "
                             f"expected {expected}. Download it again.")
    return out


def strip_prefix(keys, prefixes) -> str:
    """The prefix that every relevant key carries ('' if none)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def _fail_missing(path, what, missing, unexpected, hint=""):
    lines = [f"{path}: does not match {WHAT.get(what, what)}."]
    if missing:
        lines.append(f"  missing {len(missing)} key(s), e.g. {', '.join(sorted(missing)[:4])}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} key(s), e.g. {', '.join(sorted(unexpected)[:4])}")
    if hint:
        lines.append(f"  {hint}")
    raise ModelFileError("\n".join(lines))


def _check_against(path, what, model_shapes: dict, file_shapes: dict, hint=""):
    missing = set(model_shapes) - set(file_shapes)
    unexpected = set(file_shapes) - set(model_shapes)
    if missing or unexpected:
        _fail_missing(path, what, missing, unexpected, hint)
    for key, shape in model_shapes.items():
        if tuple(file_shapes[key]) != tuple(shape):
            raise ModelFileError(f"{path}: {key} has shape {list(file_shapes[key])}, expected {list(shape)} "
                                 f"for {WHAT.get(what, what)}")


def _guess_kind(keys) -> str:
    keys = list(keys)
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        return " It looks like a Flux model."
    if any("input_blocks." in k for k in keys):
        return " It looks like an SD1.5/SDXL UNet."
    if any(k.endswith("encoder.conv1.weight") or "decoder.upsamples" in k for k in keys):
        return " It looks like a VAE."
    if any(".layers.0.self_attn.q_proj" in k for k in keys):
        return " It looks like a text encoder."
    if any("blocks.0.self_attn.q_proj" in k for k in keys):
        return " It looks like an Anima DiT."
    if any(k.endswith(".scale_weight") or k.endswith(".weight_scale") for k in keys):
        return " It looks like a scaled-fp8 repack: use the original bf16 file."
    return ""


# ---- DiT + LLM adapter -------------------------------------------------------------------------

def infer_dit_config(shapes: dict) -> DiTConfig:
    dim, patch_in = shapes["x_embedder.proj.1.weight"][1]
    depth = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    head_dim = shapes["blocks.0.self_attn.q_norm.weight"][1][0]
    context_dim = shapes["blocks.0.cross_attn.k_proj.weight"][1][1]
    lora_dim = shapes["blocks.0.adaln_modulation_self_attn.1.weight"][1][0]
    mlp_hidden = shapes["blocks.0.mlp.layer2.weight"][1][1]
    out = shapes["final_layer.linear.weight"][1][0]
    channels = out // 4
    return DiTConfig(dim=dim, depth=depth, head_dim=head_dim, context_dim=context_dim, adaln_lora_dim=lora_dim,
                     mlp_ratio=mlp_hidden // dim, latent_channels=channels)


def infer_adapter_config(shapes: dict) -> dict:
    vocab, target_dim = shapes["embed.weight"][1]
    head_dim = shapes["blocks.0.self_attn.q_norm.weight"][1][0]
    model_dim = shapes["blocks.0.self_attn.q_proj.weight"][1][0]
    source_dim = shapes["blocks.0.cross_attn.k_proj.weight"][1][1]
    layers = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    mlp_hidden = shapes["blocks.0.mlp.0.weight"][1][0]
    return dict(source_dim=source_dim, target_dim=target_dim, model_dim=model_dim, num_layers=layers,
                num_attention_heads=model_dim // head_dim, mlp_ratio=mlp_hidden / model_dim,
                target_vocab_size=vocab, use_self_attention=True, use_layer_norm=False, min_sequence_length=512)


def dit_layout(path: Path) -> tuple[str, dict, dict, DiTConfig, dict]:
    """Read and check a DiT file's header: (prefix, dit_shapes, adapter_shapes, dit_config, adapter_config)."""
    header = read_header(path, "dit")
    prefix = strip_prefix(header, DIT_PREFIXES)
    body = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
    adapter = {k[len("llm_adapter."):]: v for k, v in body.items() if k.startswith("llm_adapter.")}
    dit = {k: v for k, v in body.items() if not k.startswith("llm_adapter.") and not DIT_IGNORED.match(k)}
    if "x_embedder.proj.1.weight" not in dit or "blocks.0.self_attn.q_proj.weight" not in dit:
        raise ModelFileError(f"{path}: this is not {WHAT['dit']}: no x_embedder.proj.1.weight / "
                             f"blocks.0.self_attn.q_proj.weight.{_guess_kind(header)}")
    if "embed.weight" not in adapter:
        raise ModelFileError(f"{path}: the DiT file has no llm_adapter.* weights. Anima keeps the LLM adapter "
                             "inside the DiT file; use the ComfyUI split file from circlestone-labs/Anima.")
    for key, (dtype, _) in dit.items():
        if dtype.startswith("F8"):
            raise ModelFileError(f"{path}: {key} is stored as {dtype}; fp8 base weights are not supported for "
                                 "training. Use the bf16 release file.")
    try:
        config = infer_dit_config(dit)
        adapter_config = infer_adapter_config(adapter)
    except KeyError as error:
        import difflib

        close = difflib.get_close_matches(error.args[0], list(dit) + [f"llm_adapter.{k}" for k in adapter], n=2)
        found = f" (found instead: {', '.join(close)})" if close else ""
        raise ModelFileError(f"{path}: missing {error.args[0]}{found}; expected {WHAT['dit']}") from None
    with torch.device("meta"):
        model_shapes = {k: tuple(v.shape) for k, v in AnimaDiT(config).state_dict().items()}
    _check_against(path, "dit", model_shapes, {k: v[1] for k, v in dit.items()})
    return prefix, dit, adapter, config, adapter_config


def load_dit(path: Path, device="cpu", dtype=torch.float32):
    """Return (AnimaDiT, AnimaTextConditioner) loaded from one ComfyUI DiT file."""
    from accelerate import init_empty_weights
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner
    from safetensors import safe_open

    prefix, dit_shapes, adapter_shapes, config, adapter_config = dit_layout(path)
    with torch.device("meta"):
        dit = AnimaDiT(config)
    with init_empty_weights(include_buffers=False):
        adapter = AnimaTextConditioner(**adapter_config)
    adapter_model_shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    _check_against(path, "dit", {f"llm_adapter.{k}": v for k, v in adapter_model_shapes.items()},
                   {f"llm_adapter.{k}": v[1] for k, v in adapter_shapes.items()})
    dit_state, adapter_state = {}, {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name.startswith("llm_adapter."):
                adapter_state[name[len("llm_adapter."):]] = handle.get_tensor(key).to(dtype)
            elif name in dit_shapes:
                dit_state[name] = handle.get_tensor(key).to(dtype)
    dit.load_state_dict(dit_state, strict=True, assign=True)
    adapter.load_state_dict(adapter_state, strict=True, assign=True)
    return dit.to(device), adapter.to(device)


# ---- Qwen3 text encoder ------------------------------------------------------------------------

def infer_qwen_config(shapes: dict):
    from transformers import Qwen3Config

    vocab, hidden = shapes["embed_tokens.weight"][1]
    head_dim = shapes["layers.0.self_attn.q_norm.weight"][1][0]
    layers = len({k.split(".")[1] for k in shapes if k.startswith("layers.")})
    return Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][1][0],
        num_hidden_layers=layers, head_dim=head_dim,
        num_attention_heads=shapes["layers.0.self_attn.q_proj.weight"][1][0] // head_dim,
        num_key_value_heads=shapes["layers.0.self_attn.k_proj.weight"][1][0] // head_dim,
        rms_norm_eps=1e-6, rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"},
        max_position_embeddings=32768, tie_word_embeddings=True, attention_bias=False, use_cache=False)


def text_encoder_layout(path: Path):
    header = read_header(path, "text_encoder")
    prefix = strip_prefix(header, TE_PREFIXES)
    body = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
    body = {k: v for k, v in body.items() if not DIT_IGNORED.match(k) and not k.startswith("lm_head.")}
    if "embed_tokens.weight" not in body or "layers.0.self_attn.q_norm.weight" not in body:
        raise ModelFileError(f"{path}: this is not {WHAT['text_encoder']}.{_guess_kind(header)}")
    return prefix, body, infer_qwen_config(body)


def load_text_encoder(path: Path, device="cpu", dtype=torch.float32):
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import Qwen3Model

    prefix, body, config = text_encoder_layout(path)
    with init_empty_weights(include_buffers=False):
        model = Qwen3Model(config)
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # lm_head is tied to the embedding (and unused: we read hidden states), so a file may carry it or not.
    file_shapes = {k: v[1] for k, v in body.items()}
    _check_against(path, "text_encoder", model_shapes, file_shapes)
    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            name = key[len(prefix):] if key.startswith(prefix) else None
            if name in model_shapes:
                state[name] = handle.get_tensor(key).to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return model.to(device)


# ---- VAE ---------------------------------------------------------------------------------------

def load_vae(path: Path, device="cpu", dtype=torch.float32):
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    header = read_header(path, "vae")
    keys = set(header)
    if not (vae_module.is_original_layout(keys) or "encoder.conv_in.weight" in keys):
        raise ModelFileError(f"{path}: this is not {WHAT['vae']}.{_guess_kind(keys)}")
    state = load_file(str(path))
    if vae_module.is_original_layout(keys):
        state = vae_module.original_to_diffusers(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        kwargs = vae_module.infer_vae_config(shapes)
    except KeyError as error:
        raise ModelFileError(f"{path}: missing {error.args[0]}; expected {WHAT['vae']}") from None
    with init_empty_weights(include_buffers=False):
        model = vae_module.vae_class()(**kwargs)
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_against(path, "vae", model_shapes, shapes)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.eval()
    return vae_module.VAE(model.to(device))


def check_compatible(dit_config: DiTConfig, adapter_config: dict, qwen_config, vae_z: int | None, files) -> None:
    """The three files must fit together (a mix of model families fails here, not mid-training)."""
    if adapter_config["source_dim"] != qwen_config.hidden_size:
        raise ModelFileError(f"{files.text_encoder}: hidden size {qwen_config.hidden_size} does not match the "
                             f"LLM adapter in {files.dit} (expects {adapter_config['source_dim']}); use "
                             "qwen_3_06b_base.safetensors")
    if adapter_config["target_dim"] != dit_config.context_dim:
        raise ModelFileError(f"{files.dit}: the LLM adapter's output ({adapter_config['target_dim']}) does not "
                             f"match the DiT's context size ({dit_config.context_dim})")
    if vae_z is not None and vae_z != dit_config.latent_channels:
        raise ModelFileError(f"{files.vae}: latent channels {vae_z} do not match the DiT "
                             f"({dit_config.latent_channels}); use qwen_image_vae.safetensors")
