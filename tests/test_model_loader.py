"""The loader takes the real ComfyUI key layout (scaled down) and rejects wrong or damaged files clearly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from animad.errors import ModelFileError
from animad.anima import load as model_load
from animad.anima.dit import ANIMA_2B, AnimaDiT


def test_full_size_dit_has_the_released_layout():
    # docs/anima_arch.md 1.4: 567 DiT tensors, 1,956,405,248 parameters, 20 tensors per block.
    with torch.device("meta"):
        state = AnimaDiT(ANIMA_2B).state_dict()
    assert len(state) == 567
    assert sum(v.numel() for v in state.values()) == 1_956_405_248
    assert tuple(state["x_embedder.proj.1.weight"].shape) == (2048, 68)
    assert tuple(state["blocks.27.cross_attn.k_proj.weight"].shape) == (2048, 1024)
    assert tuple(state["t_embedder.1.linear_2.weight"].shape) == (6144, 2048)
    assert tuple(state["final_layer.adaln_modulation.2.weight"].shape) == (4096, 256)


def test_full_size_adapter_has_the_released_layout():
    from accelerate import init_empty_weights
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    with init_empty_weights():
        adapter = AnimaTextConditioner()
    state = adapter.state_dict()
    assert len(state) == 118 and sum(v.numel() for v in state.values()) == 134_663_680


def test_tiny_set_is_written_in_the_real_key_layout(tiny_models):
    with safe_open(str(tiny_models["dit"]), "pt") as f:
        keys = set(f.keys())
    assert "net.x_embedder.proj.1.weight" in keys and "net.blocks.1.mlp.layer2.weight" in keys
    assert "net.llm_adapter.blocks.0.cross_attn.o_proj.weight" in keys and "net.llm_adapter.embed.weight" in keys
    with safe_open(str(tiny_models["text_encoder"]), "pt") as f:
        assert "model.layers.0.self_attn.q_norm.weight" in set(f.keys())
    with safe_open(str(tiny_models["vae"]), "pt") as f:
        vae_keys = set(f.keys())
    assert "encoder.conv1.weight" in vae_keys and "decoder.upsamples.4.shortcut.weight" in vae_keys
    # Same names as the full-size model, only smaller: every tiny DiT key exists in the 2B model.
    with torch.device("meta"):
        real = set(AnimaDiT(ANIMA_2B).state_dict())
    tiny_dit = {k[len("net."):] for k in keys if not k.startswith("net.llm_adapter.")}
    assert tiny_dit <= real


def test_tiny_set_loads_and_runs(tiny_models):
    dit, adapter = model_load.load_dit(tiny_models["dit"])
    encoder = model_load.load_text_encoder(tiny_models["text_encoder"])
    vae = model_load.load_vae(tiny_models["vae"])
    latents = vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert latents.shape == (1, 16, 8, 8)
    context = torch.zeros(1, 512, dit.config.context_dim)
    assert dit(latents, torch.tensor([0.5]), context).shape == latents.shape
    assert encoder.config.hidden_size == adapter.config.source_dim


def _rewrite(src, dst, change):
    state = load_file(str(src))
    change(state)
    save_file(state, str(dst))
    return dst


def test_missing_key_is_named(tiny_models, tmp_path):
    bad = _rewrite(tiny_models["dit"], tmp_path / "dit.safetensors",
                   lambda s: s.pop("net.blocks.1.cross_attn.v_proj.weight"))
    with pytest.raises(ModelFileError) as error:
        model_load.load_dit(bad)
    assert "blocks.1.cross_attn.v_proj.weight" in str(error.value) and str(bad) in str(error.value)


def test_renamed_key_is_named(tiny_models, tmp_path):
    def rename(s):
        s["net.blocks.0.mlp.fc1.weight"] = s.pop("net.blocks.0.mlp.layer1.weight")

    bad = _rewrite(tiny_models["dit"], tmp_path / "dit.safetensors", rename)
    with pytest.raises(ModelFileError) as error:
        model_load.load_dit(bad)
    message = str(error.value)
    assert "missing" in message and "blocks.0.mlp.layer1.weight" in message and "mlp.fc1" in message


def test_wrong_shape_is_named(tiny_models, tmp_path):
    def widen(s):
        s["net.blocks.1.cross_attn.k_norm.weight"] = torch.ones(7)

    bad = _rewrite(tiny_models["dit"], tmp_path / "dit.safetensors", widen)
    with pytest.raises(ModelFileError, match="k_norm.weight has shape"):
        model_load.load_dit(bad)


def test_truncated_file_says_download_again(tiny_models, tmp_path):
    data = tiny_models["dit"].read_bytes()
    cut = tmp_path / "anima.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.*Download it again"):
        model_load.load_dit(cut)


def test_swapped_files_say_what_they_are(tiny_models):
    with pytest.raises(ModelFileError, match="looks like a VAE"):
        model_load.load_dit(tiny_models["vae"])
    with pytest.raises(ModelFileError, match="not the Qwen3"):
        model_load.load_text_encoder(tiny_models["dit"])


def test_not_a_safetensors_file(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(ModelFileError, match="not a .safetensors file"):
        model_load.load_dit(fake)


def test_vae_accepts_both_key_layouts(tiny_models, tmp_path):
    from animad.anima.vae import original_to_diffusers

    diffusers_layout = tmp_path / "vae_diffusers.safetensors"
    save_file(original_to_diffusers(load_file(str(tiny_models["vae"]))), str(diffusers_layout))
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    a = model_load.load_vae(tiny_models["vae"]).encode(image)
    b = model_load.load_vae(diffusers_layout).encode(image)
    assert torch.equal(a, b)


def test_our_dit_matches_diffusers_cosmos_reference():
    """Our DiT (original key names) against diffusers' CosmosTransformer3DModel with converted weights."""
    from diffusers import CosmosTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    from animad.anima.dit import DiTConfig

    torch.manual_seed(0)
    config = DiTConfig(dim=64, depth=2, head_dim=32, context_dim=48, adaln_lora_dim=16)
    ours = AnimaDiT(config)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    converted = convert_cosmos_transformer_checkpoint_to_diffusers({f"net.{k}": v for k, v in ours.state_dict().items()})
    # in_channels=17 + a zero condition mask is the same network without diffusers' torchvision dependency.
    ref = CosmosTransformer3DModel(in_channels=17, out_channels=16, num_attention_heads=2, attention_head_dim=32,
                                   num_layers=2, text_embed_dim=48, adaln_lora_dim=16, rope_scale=(1.0, 4.0, 4.0),
                                   concat_padding_mask=False, extra_pos_embed_type=None)
    ref.load_state_dict(converted, strict=True)
    x, sigma, context = torch.randn(2, 16, 12, 16), torch.tensor([0.3, 0.8]), torch.randn(2, 512, 48)
    with torch.no_grad():
        a = ours(x, sigma, context)
        b = ref(hidden_states=x[:, :, None], timestep=sigma, encoder_hidden_states=context,
                condition_mask=torch.zeros(2, 1, 1, 12, 16), return_dict=False)[0][:, :, 0]
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
