"""Low-VRAM training: the memory model, partial checkpointing, block swap and the mode picker (all on the CPU).

The memory model is checked against what autograd really saves for a tiny block (fp32, where the
model's counting is exact), and its parameter counts against the modules and the released file.
"""

from __future__ import annotations

import pytest
import torch

from animad.anima import memory
from animad.anima.blockswap import swap_blocks
from animad.anima.dit import ANIMA_2B, AnimaDiT, Block, DiTConfig, rope_3d
from animad.train.networks.lora import LoRAModule

SMALL = DiTConfig(dim=64, depth=4, head_dim=32, context_dim=48, adaln_lora_dim=16, mlp_ratio=4)


def with_lora(module: torch.nn.Module, rank: int) -> list[LoRAModule]:
    module.requires_grad_(False)
    loras = []
    for name, linear in module.named_modules():
        if isinstance(linear, torch.nn.Linear) and "adaln" not in name \
                and any(group in name for group in ("self_attn", "cross_attn", "mlp")):
            lora = LoRAModule(linear, rank, rank)
            torch.nn.init.normal_(lora.lora_up.weight)
            lora.attach()
            loras.append(lora)
    return loras


def saved_bytes(run, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while run() builds its graph, minus `exclude`'s."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return sum(seen.values()), out


def test_parameter_counts_match_the_modules_and_the_released_file():
    assert memory.dit_parameters(ANIMA_2B) + memory.ADAPTER_PARAMETERS == 2_091_068_928  # docs/anima_arch.md 1.4
    assert memory.block_parameters(ANIMA_2B) == 69_206_528
    assert memory.network_parameters(ANIMA_2B, 16) == 16 * 1_433_600  # docs/anima_arch.md 6.1
    model = AnimaDiT(SMALL)
    assert memory.dit_parameters(SMALL) == sum(p.numel() for p in model.parameters())
    loras = with_lora(model, 4)
    assert memory.network_parameters(SMALL, 4) == sum(p.numel() for lora in loras for p in lora.parameters())


def block_inputs(tokens: int, text_tokens: int, batch: int):
    """A block's inputs at these sizes: x (needing its gradient), context, t_emb, adaln and rope."""
    return (torch.randn(batch, tokens, SMALL.dim, requires_grad=True), torch.randn(batch, text_tokens, SMALL.context_dim),
            torch.randn(batch, SMALL.dim), torch.randn(batch, 3 * SMALL.dim), rope_3d(SMALL, 4, tokens // 4, "cpu"))


@pytest.mark.parametrize("tokens,text_tokens,batch,rank", [(24, 10, 2, 4), (40, 7, 1, 8)])
def test_block_activation_count_equals_what_autograd_saves(tokens, text_tokens, batch, rank):
    torch.manual_seed(0)
    block = Block(SMALL)
    loras = with_lora(block, rank)
    x, context, t_emb, adaln, rope = block_inputs(tokens, text_tokens, batch)
    params = list(block.parameters()) + [p for lora in loras for p in lora.parameters()]
    measured, out = saved_bytes(lambda: block(x, context, t_emb, adaln, rope), params + [context, *rope])
    out.sum().backward()  # the graph is a real training graph
    predicted = memory.block_activations(SMALL, rank, mixed="fp32").full(tokens, text_tokens, batch)
    assert measured == predicted


def test_checkpointing_keeps_only_block_inputs_for_checkpointed_blocks():
    """Partial checkpointing (every k-th block) saves what the model says: full sets for the others."""
    torch.manual_seed(0)
    model = AnimaDiT(SMALL)
    loras = with_lora(model, 4)
    latents, sigma, context = torch.randn(1, 16, 8, 12), torch.rand(1), torch.randn(1, 5, SMALL.context_dim)
    params = list(model.parameters()) + [p for lora in loras for p in lora.parameters()]
    rope = list(model.rope(4, 6, "cpu"))  # shared by all blocks and tiny: the model leaves it out
    measured = {}
    for every in (0, 1, 2, 3):
        model.checkpoint_every = every
        measured[every], _ = saved_bytes(lambda: model(latents, sigma, context), params + [context] + rope)
    tokens, counts = 4 * 6, memory.block_activations(SMALL, 4, mixed="fp32")
    per_block, block_input = counts.full(tokens, 5, 1), tokens * counts.input_per_token
    # With every block checkpointed, autograd keeps each block's input and nothing of its inside; a
    # block that is not checkpointed keeps its full set instead (its input included).
    for every in (2, 3):  # blocks 0, k, 2k, ... are checkpointed
        stored = SMALL.depth - memory.checkpointed_blocks(SMALL.depth, every)
        assert measured[every] - measured[1] == stored * (per_block - block_input)
    # Block 0's input has no gradient path (the patch embedding is frozen), so without checkpointing its
    # first layer norm saves neither its input and statistics nor its (1 + scale); with checkpointing
    # the checkpoint also keeps the timestep tensors (dim + 3 * dim) it will rerun the block with.
    first_block_less = tokens * (4 * SMALL.dim + 8) + 4 * SMALL.dim
    timestep_inputs = 4 * (SMALL.dim + 3 * SMALL.dim)
    assert measured[0] - measured[1] == (SMALL.depth * (per_block - block_input) - first_block_less
                                         - timestep_inputs)


def test_the_defaults_at_1024_fit_the_numbers_the_issue_gives():
    defaults = dict(rank=16, optimizer="prodigy", text_encoder_on_gpu=True)
    full = memory.training_memory(1024, 1024, 1, checkpoint_every=1, **defaults)
    assert full.weights == pytest.approx(4.18e9, rel=0.01)
    assert full.text_encoder == pytest.approx(1.19e9, rel=0.01)
    assert full.lora_and_optimizer == pytest.approx(0.55e9, rel=0.01)
    assert 0.8e9 < full.activations < 1.6e9  # ~1 GB a 1024² sample with checkpointing
    plain = memory.training_memory(1024, 1024, 1, checkpoint_every=0, **defaults)
    assert 10e9 < plain.activations < 17e9  # ~12 GB without
    swapped = memory.training_memory(1024, 1024, 1, checkpoint_every=1, swapped_blocks=10, **defaults)
    assert full.weights - swapped.weights == 8 * memory.block_parameters(ANIMA_2B) * 2  # two stay in flight
    assert "total" in full.lines()[-1] and all("GB" in line for line in full.lines())


def lora_model(seed=0, config=SMALL):
    torch.manual_seed(seed)
    model = AnimaDiT(config)
    return model, with_lora(model, 4)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, 8, 12, generator=g), torch.rand(2, generator=g),
            torch.randn(2, 5, SMALL.context_dim, generator=g))


def step(model, loras, batch):
    for lora in loras:
        for p in lora.parameters():
            p.grad = None
    out = model(*batch)
    (out.float() ** 2).mean().backward()
    return out.detach(), [p.grad.clone() for lora in loras for p in lora.parameters()]


def test_partial_checkpointing_gives_bitwise_the_same_gradients():
    model, loras = lora_model()
    batch = inputs()
    model.checkpoint_every = 0
    reference = step(model, loras, batch)
    for every in (1, 2, 3):
        model.checkpoint_every = every
        out, grads = step(model, loras, batch)
        assert torch.equal(out, reference[0])
        assert all(torch.equal(a, b) for a, b in zip(grads, reference[1]))


def test_block_swap_gives_bitwise_the_same_output_and_lora_gradients():
    """Swapped blocks compute with a separate copy of their weights, loaded by the hooks in the forward,
    in the no-grad eval, and again for the backward's recompute; outside a block's use its weights
    point at the CPU master. On the CPU the "device copy" is another CPU tensor: the hook logic is
    what this tests (the CUDA streams and pinned memory run in tests/test_gpu.py)."""
    plain, plain_loras = lora_model()
    swapped, swapped_loras = lora_model()  # the same seed: the same weights
    swap = swap_blocks(swapped, 2, "cpu")
    assert sorted(swap.swapped) == [2, 3] and swapped.checkpointed(2) and not swapped.checkpointed(1)

    seen = []  # (block, in backward, weights are a loaded copy)

    def watch(index):
        def hook(module, args):
            block = swap.swapped[index]
            loaded = all(p.data_ptr() != m.data_ptr() for p, m in zip(block.params, block.masters))
            seen.append((index, torch._C._current_graph_task_id() != -1, loaded))
        return hook

    for index in (2, 3):
        swapped.blocks[index].register_forward_pre_hook(watch(index))  # runs after the swap's own pre-hook
    batch = inputs()
    for _ in range(2):  # a second step finds the weights where the first left them
        seen.clear()
        reference, ours = step(plain, plain_loras, batch), step(swapped, swapped_loras, batch)
        assert torch.equal(ours[0], reference[0])
        assert all(torch.equal(a, b) for a, b in zip(ours[1], reference[1]))
        assert (2, False, True) in seen and (3, False, True) in seen  # loaded in the forward
        assert (3, True, True) in seen and (2, True, True) in seen  # and again for the backward
        assert not swap.swapped[3].resident  # block 3's backward was done once block 2 started its own
    with torch.no_grad():
        assert torch.equal(swapped(*batch), plain(*batch))
    assert not any(block.resident for block in swap.swapped.values())  # the eval leaves nothing behind
    assert all(p.grad is None for block in swap.swapped.values() for p in block.params)


GiB = 2 ** 30
DEFAULTS = dict(width=1024, height=1024, batch=4, rank=16, optimizer="prodigy", text_encoder_live=True)


def card(gib: float) -> int:
    """What a card of that size has free for a job: ~3% goes to the driver and a desktop."""
    return int(gib * GiB * 0.97)


def test_the_picker_fits_the_defaults_on_8_12_24_and_80_gb_cards():
    from animad.config import vram

    plans = {gib: vram.pick(card(gib), **DEFAULTS) for gib in (8, 12, 24, 80)}
    assert all(plan.fits for plan in plans.values())
    eight, twelve, twenty_four, eighty = plans[8], plans[12], plans[24], plans[80]
    assert (eighty.checkpoint_every, eighty.text_encoder_on_gpu, eighty.swapped_blocks) == (0, True, 0)
    assert (twenty_four.checkpoint_every, twenty_four.text_encoder_on_gpu, twenty_four.swapped_blocks) == (1, True, 0)
    assert (twelve.checkpoint_every, twelve.text_encoder_on_gpu, twelve.swapped_blocks) == (1, False, 0)
    assert eight.checkpoint_every == 1 and not eight.text_encoder_on_gpu and 0 < eight.swapped_blocks <= 26
    assert eight.estimate.total <= vram.FIT_SHARE * card(8)
    # Batch 1 with checkpointing fits an 8 GB card without swapping, and under 7 GB by the model.
    small = vram.pick(card(8), **{**DEFAULTS, "batch": 1})
    assert small.swapped_blocks == 0 and small.estimate.total < 7e9
    # Partial checkpointing is chosen where it is enough: one 1024² sample on a 16 GB card.
    partial = vram.pick(card(16), **{**DEFAULTS, "batch": 1})
    assert partial.checkpoint_every > 1 and partial.swapped_blocks == 0
    assert "every 2nd block (14 of 28)" in partial.line(28)


def test_the_picker_takes_the_cheapest_plan_that_fits():
    from animad.config import vram

    ladder = list(vram.candidates(28, True))
    previous = -1
    for gib in (4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 80):
        plan = vram.pick(card(gib), **DEFAULTS)
        position = ladder.index((plan.checkpoint_every, plan.text_encoder_on_gpu, plan.swapped_blocks))
        assert previous == -1 or position <= previous  # more memory never means more savings
        previous = position
        for cheaper in ladder[:position]:  # and nothing cheaper would have fitted
            every, on_gpu, swapped = cheaper
            estimate = memory.training_memory(1024, 1024, 4, checkpoint_every=every, rank=16, optimizer="prodigy",
                                              text_encoder_on_gpu=on_gpu, swapped_blocks=swapped)
            assert estimate.total > vram.FIT_SHARE * card(gib)


def test_the_picker_keeps_a_training_text_encoder_and_says_when_nothing_fits():
    from animad.config import vram

    trains = vram.pick(card(8), **DEFAULTS, text_encoder_trains=True)
    assert trains.text_encoder_on_gpu and trains.swapped_blocks > 0
    cached = vram.pick(card(12), **{**DEFAULTS, "text_encoder_live": False})  # captions cached: no encoder
    assert cached.estimate.text_encoder == 0 and cached.swapped_blocks == 0
    hopeless = vram.pick(card(3), **DEFAULTS)
    assert not hopeless.fits and hopeless.swapped_blocks == 26
    assert "may run out of memory" in hopeless.line(28) and "data.batch_size" in hopeless.line(28)


def test_build_parts_applies_a_plan_that_changes_nothing_it_computes(tiny_models, monkeypatch):
    """The plan's wiring on the real (tiny) model set: one block swapped and the text encoder kept in CPU
    memory between encodes give the same embeddings, velocity and LoRA gradients as the plain model."""
    from animad.anima.files import ModelFiles
    from animad.anima.pipeline import Anima
    from animad.config import vram
    from animad.train import loop
    from animad.train.networks.network import build_network
    from animad.train.precision import Precision
    from animad.config.job import JobConfig

    def model(plan):
        files = ModelFiles(tiny_models["dit"], tiny_models["text_encoder"], tiny_models["vae"],
                           tiny_models["tokenizers"] / "qwen3", tiny_models["tokenizers"] / "t5")
        anima = Anima(files, "cpu")
        anima.load_text_encoder()  # captions shuffle: the encoder runs in the loop
        anima.load_dit()
        anima.freeze()
        torch.manual_seed(0)
        network = build_network(anima, JobConfig().network)
        for lora in network.loras.values():
            torch.nn.init.normal_(lora.lora_up.weight, std=0.1)
        if plan is not None:
            monkeypatch.setattr(loop, "plan_for_job", lambda *args: plan)
            assert loop.apply_vram_plan(JobConfig(), anima, Precision(torch.device("cpu"), "fp32", "auto")) is plan
        return anima, network

    estimate = memory.training_memory(64, 64, 1, checkpoint_every=1, rank=4, optimizer="prodigy",
                                      text_encoder_on_gpu=False, swapped_blocks=1)
    plain, plain_net = model(None)
    saving, saving_net = model(vram.VramPlan(1, False, 1, estimate, budget=8 * GiB))
    assert saving.block_swap is not None and saving.text_encoder_offload is not None
    assert not saving.text_encoder_offload.resident  # the encoder waits in CPU memory

    results = []
    for anima, network in ((plain, plain_net), (saving, saving_net)):
        with torch.no_grad():
            embeddings = anima.encode_text(["a cat, sitting", "a dog"])
        torch.manual_seed(3)
        x, sigma = torch.randn(2, 16, 8, 8), torch.rand(2)
        out = anima.velocity(x, sigma, anima.context(embeddings))
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in network.parameters() if p.requires_grad]))
    assert not saving.text_encoder_offload.resident  # ... and went back after the encode
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("kind,dim", [("lokr", 100000), ("loha", 4)])
def test_lokr_and_loha_save_no_activation_of_their_own(kind, dim):
    """The memory model counts no rank-sized tensor per token for LoKr and LoHa (train/networks/: their
    autograd functions keep only the input a LoRA keeps too and recompute their products in the
    backward). Measured against autograd on a tiny block in fp32, as for LoRA above."""
    from animad.config.job import NetworkConfig
    from animad.train.networks import kind_named

    torch.manual_seed(0)
    block = Block(SMALL).requires_grad_(False)
    config = NetworkConfig(type=kind, dim=dim)
    modules = []
    for name, linear in block.named_modules():
        if isinstance(linear, torch.nn.Linear) and "adaln" not in name:
            module = kind_named(kind).new_module(linear, config, dim, None)
            for p in module.parameters():
                torch.nn.init.normal_(p)
            module.attach()
            modules.append(module)
    tokens, text_tokens, batch = 24, 10, 2
    x, context, t_emb, adaln, rope = block_inputs(tokens, text_tokens, batch)
    params = list(block.parameters()) + [p for m in modules for p in m.parameters()]
    measured, out = saved_bytes(lambda: block(x, context, t_emb, adaln, rope), params + [context, *rope])
    out.sum().backward()
    assert all(p.grad is not None for m in modules for p in m.parameters())
    assert measured == memory.block_activations(SMALL, 0, mixed="fp32").full(tokens, text_tokens, batch)
