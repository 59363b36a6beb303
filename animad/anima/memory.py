"""How much GPU memory an Anima LoRA training step needs, from the DiT's shapes (no GPU, no torch calls).

The picker (train/vram.py) and the dataset report ask this before anything is loaded, so it is plain
arithmetic on the model's tensor shapes. How the activation figure is built:

* Per block, per image token, it adds up the tensors autograd saves for the backward, read off the
  block's forward (dit.Block) under CUDA bf16 autocast with LoRA on the 10 attention/MLP linears:
  the pre-norm inputs (layer_norm runs in fp32 under autocast: 4 bytes a feature, three of them),
  the bf16 copy of the modulated input each LoRA-wrapped linear casts for itself (q, k, v share no
  cast: 3 in self-attention, 1 in cross-attention, 1 in the MLP), the fp32 inputs of the q/k
  RMSNorms, SDPA's q, k, v, output and log-sum-exp, both MLP hidden tensors (GELU input and output,
  4x wide), the LoRA rank-r intermediates and the per-row norm statistics. Cross-attention keys and
  values add a per-text-token part (512 text tokens a sample). That is 62 x dim bytes + small terms
  a token: ~0.52 GB a block for one 1024x1024 sample, ~14.6 GB for 28 blocks without checkpointing.
* A checkpointed block keeps only its input (the bf16 residual stream, 2 x dim bytes a token) and
  recomputes the rest in the backward, so one block's full set is alive again at the peak.
* The backward's own working set (the gradients flowing through a block, the MLP-wide ones included)
  is taken as 32 x dim bytes a token, and the LoRA weights' bf16 casts that autocast saves are added.

The same counting in fp32 (every tensor 4 bytes, no casts: `mixed="fp32"`) is checked exactly against
the bytes autograd saves for a tiny block on the CPU (tests/test_low_vram.py), which pins the
structure (which tensors, how wide). Error bars on a real GPU: the bf16 dtype bookkeeping is read from
autocast's op lists, not measured here (no GPU), and the backward working set and the allocator's
fragmentation are estimates: treat the activation figure as +-25%, the fixed parts (weights, LoRA and
optimizer state) as exact to within 2%, the CUDA context as 0.4-0.8 GB depending on the driver.

precision.vram: auto's ladder of savings over this model is config/vram.py's `pick`; train/vram.py
applies it to a job on a device, and the dataset report shows what it would choose.
"""

from __future__ import annotations

import dataclasses
import math

from animad import network_shapes

GB = 1e9

# Counted from the released files' shapes (docs/anima_arch.md sections 1.4, 2 and 3): the LLM
# adapter inside the DiT file, and Qwen3-0.6B (embeddings tied, no separate lm_head).
ADAPTER_PARAMETERS = 134_663_680
QWEN3_PARAMETERS = 596_049_920
TEXT_TOKENS = 512  # the context is zero-padded to 512 rows (docs/anima_arch.md section 2.4)
CUDA_CONTEXT = int(0.6 * GB)  # the CUDA context and cuBLAS/cuDNN workspaces, before any tensor
ALLOCATOR_SLACK = 0.05  # the caching allocator's fragmentation, a share of the activations

# Per LoRA parameter: fp32 weight and fp32 gradient, plus the optimizer's own state.
OPTIMIZER_STATE_BYTES = {"prodigy": 16, "adamw": 8, "adamw8bit": 2, "adafactor": 4}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    text_encoder: int
    lora_and_optimizer: int
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.text_encoder + self.lora_and_optimizer + self.activations + self.runtime

    def lines(self) -> list[str]:
        def gb(value: int) -> str:
            return f"{value / GB:.2f} GB"
        return [f"model weights on the GPU: {gb(self.weights)}",
                f"text encoder on the GPU: {gb(self.text_encoder)}",
                f"network (LoRA/LoKr/LoHa) weights, gradients and optimizer state: {gb(self.lora_and_optimizer)}",
                f"activations kept for the backward pass: {gb(self.activations)}",
                f"CUDA context and allocator slack: {gb(self.runtime)}",
                f"total: {gb(self.total)}"]


def default_config():
    from animad.anima.dit import ANIMA_2B  # imported here: callers that only do arithmetic skip the import cost
    return ANIMA_2B


def block_parameters(c) -> int:
    attention = 4 * c.dim * c.dim + 2 * c.head_dim
    cross = 2 * c.dim * c.dim + 2 * c.dim * c.context_dim + 2 * c.head_dim
    mlp = 2 * c.dim * c.dim * c.mlp_ratio
    adaln = 3 * (c.dim * c.adaln_lora_dim + c.adaln_lora_dim * 3 * c.dim)
    return attention + cross + mlp + adaln


def dit_parameters(c) -> int:
    """The DiT without its LLM adapter."""
    patch_in = (c.latent_channels + 1) * c.patch * c.patch * c.dim
    timestep = c.dim * c.dim + 3 * c.dim * c.dim + c.dim
    final = c.dim * c.patch * c.patch * c.latent_channels + c.dim * c.adaln_lora_dim + c.adaln_lora_dim * 2 * c.dim
    return c.depth * block_parameters(c) + patch_in + timestep + final


def block_linear_shapes(c) -> list[tuple[int, int]]:
    """(out, in) of the 10 attention/MLP linears of a block, the ones a network wraps."""
    d, ctx, hidden = c.dim, c.context_dim, c.dim * c.mlp_ratio
    return [(d, d)] * 4 + [(d, d), (d, ctx), (d, ctx), (d, d)] + [(hidden, d), (d, hidden)]


def network_parameters(c, rank: int, kind: str = "lora", factor: int = -1) -> int:
    """The network of network.type `kind` on the 10 attention/MLP linears of every block (LoRA: rank x
    (in + out) each; the others by network_shapes' rules)."""
    return c.depth * sum(network_shapes.parameter_count(kind, out, inp, rank, factor)
                         for out, inp in block_linear_shapes(c))


@dataclasses.dataclass(frozen=True)
class BlockActivations:
    """Bytes autograd saves for one block's backward, and the block's input a checkpoint keeps."""
    per_token: int
    per_text_token: int
    per_sample: int
    input_per_token: int

    def full(self, tokens: int, text_tokens: int, batch: int) -> int:
        return batch * (tokens * self.per_token + text_tokens * self.per_text_token + self.per_sample)


def block_activations(c, rank: int, mixed: str = "bf16") -> BlockActivations:
    """What one Block saves, per image token, per text token and per sample (see the module docstring).

    mixed="fp32" is the same list with every tensor in fp32 and no autocast casts (q, k and v then
    share one input); the tiny-model test checks that variant exactly against autograd's saved bytes."""
    d, heads, hidden = c.dim, c.heads, c.dim * c.mlp_ratio
    if mixed == "fp32":
        e, norm, cast_copies = 4, 4, 1
    else:
        e, norm, cast_copies = 2, 4, 3  # half activations; fp32 norms; q, k, v each cast h for themselves
    stats = 2 * 4  # layer_norm's mean and rstd, fp32
    self_attn = (norm * d + stats + cast_copies * e * d + 2 * 4 * d + 2 * 4 * heads
                 + 4 * e * d + 4 * heads + 4 * e * rank)
    cross_attn = norm * d + stats + e * d + 4 * d + 4 * heads + 2 * e * d + 4 * heads + 2 * e * rank
    mlp = norm * d + stats + e * d + 2 * e * hidden + 2 * e * rank
    per_text_token = 4 * d + 4 * heads + 2 * e * d + 2 * e * rank
    per_sample = 3 * e * (d + 3 * d)  # each (1 + scale) and the gates' (B, 1, 3*dim) storage
    return BlockActivations(self_attn + cross_attn + mlp, per_text_token, per_sample, e * d)


def checkpointed_blocks(depth: int, checkpoint_every: int) -> int:
    """How many blocks AnimaDiT checkpoints: blocks 0, k, 2k, ... (0 = none)."""
    return 0 if checkpoint_every <= 0 else math.ceil(depth / checkpoint_every)


def activation_bytes(c, tokens: int, batch: int, *, checkpoint_every: int, rank: int, mixed: str = "bf16",
                     kind: str = "lora", factor: int = -1) -> int:
    # Only LoRA saves a rank-sized intermediate per token; LoKr and LoHa (train/networks/) save nothing
    # beyond the input the base linear keeps, and recompute their small products in the backward.
    blocks = block_activations(c, rank if kind == "lora" else 0, mixed)
    full = blocks.full(tokens, TEXT_TOKENS, batch)
    checkpointed = checkpointed_blocks(c.depth, checkpoint_every)
    kept = (c.depth - checkpointed) * full + checkpointed * batch * tokens * blocks.input_per_token
    recompute = full if checkpointed else 0  # one checkpointed block is fully alive again in its backward
    e = 4 if mixed == "fp32" else 2
    backward = batch * tokens * 32 * c.dim
    # Under autocast LoRA and LoKr keep bf16 casts of their weights for the backward; LoHa keeps its
    # fp32 factors and, in the backward, a few out x in fp32 products of one linear at a time.
    lora_casts = 0 if mixed == "fp32" or kind == "loha" else network_parameters(c, rank, kind, factor) * e
    if kind == "loha":
        backward += 4 * 4 * max(out * inp for out, inp in block_linear_shapes(c))
    outside = batch * tokens * (4 * c.dim + e * c.dim + 4 * c.latent_channels * c.patch * c.patch * 3)
    return kept + recompute + backward + lora_casts + outside


def tokens_for(width: int, height: int, c) -> int:
    side = 8 * c.patch  # the VAE's 8x and the 2x2 patch
    return (width // side) * (height // side)


def training_memory(width: int, height: int, batch: int, *, checkpoint_every: int, rank: int, optimizer: str,
                    text_encoder_on_gpu: bool, swapped_blocks: int = 0, config=None,
                    weight_bytes: int = 2, kind: str = "lora", factor: int = -1) -> MemoryEstimate:
    """GPU memory for one training step at this bucket size and micro-batch (see the module docstring).

    swapped_blocks DiT blocks live in pinned CPU memory; two of them are on the GPU at a time (the one
    computing and the one being prefetched). optimizer is the job's optimizer.type; kind, rank and factor
    the job's network.type, dim and factor."""
    c = config or default_config()
    swapped = min(max(swapped_blocks, 0), c.depth)
    resident_blocks = c.depth - swapped + min(swapped, 2)
    weights = (dit_parameters(c) - c.depth * block_parameters(c) + resident_blocks * block_parameters(c)
               + ADAPTER_PARAMETERS) * weight_bytes
    text_encoder = QWEN3_PARAMETERS * weight_bytes if text_encoder_on_gpu else 0
    per_parameter = 8 + OPTIMIZER_STATE_BYTES.get(optimizer, 16)
    lora = network_parameters(c, rank, kind, factor) * per_parameter
    activations = activation_bytes(c, tokens_for(width, height, c), batch, checkpoint_every=checkpoint_every,
                                   rank=rank, kind=kind, factor=factor)
    runtime = CUDA_CONTEXT + int(ALLOCATOR_SLACK * activations)
    return MemoryEstimate(int(weights), int(text_encoder), int(lora), int(activations), runtime)
