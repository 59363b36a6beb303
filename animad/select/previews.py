"""Fixed-seed previews of the shortlisted epochs and a no-LoRA baseline, after training ends.

The models load once; switching epochs only swaps the LoRA tensors (no reload). Each image uses the
same prompt, seed, steps, CFG and flow shift, so rows differ only by the LoRA. CFG runs cond and
uncond as one batch of two, and the initial noise is drawn on the CPU in fp32 from the seed (as
sd-scripts does), so a seed means the same picture on any device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animad.anima.lora_names import read_lora_file
from animad.anima.pipeline import Anima
from animad.intake.dataset import split_tags
from animad.train.flow import euler_sample
from animad.train.lora import load_weights, network_from_state
from animad.train.precision import resolve_precision

log = logging.getLogger("animad.select")

NOVEL_TAGS = ("outdoors", "night sky", "smile", "sitting", "looking at viewer", "upper body", "city street",
              "sunset", "rain", "holding umbrella", "cherry blossoms", "from side", "snow", "beach")


@dataclasses.dataclass(frozen=True)
class Row:
    key: str  # "baseline" or "e0012" (with "@0.8" when several strengths are rendered)
    epoch: int | None
    strength: float


def default_prompts(captions: list[str], trigger: str | None) -> list[str]:
    """SPEC 3: a typical dataset caption, the same without the trigger, and two novel prompts."""
    frequency = Counter(tag for c in captions for tag in split_tags(c))
    typical = max(captions, key=lambda c: (sum(frequency[t] for t in split_tags(c)), c)) if captions else ""
    prompts = [typical]
    if trigger and trigger in split_tags(typical):
        prompts.append(", ".join(t for t in split_tags(typical) if t != trigger))
    absent = [t for t in NOVEL_TAGS if t not in frequency]
    lead = f"{trigger}, " if trigger else ""
    for first, second in ((0, 1), (2, 3)):
        if len(absent) > second:
            prompts.append(f"{lead}{absent[first]}, {absent[second]}")
    return [p for p in prompts if p.strip()] or ["1girl"]


def preview_rows(epochs: list[int], strengths: list[float]) -> list[Row]:
    rows = [Row("baseline", None, 0.0)]
    for epoch in epochs:
        for strength in strengths:
            suffix = "" if len(strengths) == 1 else f"@{strength:g}"
            rows.append(Row(f"e{epoch:04d}{suffix}", epoch, strength))
    return rows


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def to_png(image: torch.Tensor, path: Path) -> None:
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    tmp.replace(path)


def render_previews(config, files, epoch_files: dict[int, Path], out_dir: Path, prompts: list[str],
                    seeds: list[int], settings: dict, should_stop=None) -> dict[tuple[str, int], Path]:
    """Render every (row, prompt) image into out_dir; images already rendered with the same settings are kept."""
    precision = resolve_precision(config)
    device, dtype = precision.device, precision.weight_dtype
    rows = preview_rows(sorted(epoch_files), settings["strengths"])
    key = settings_key({**settings, "prompts": prompts, "seeds": seeds})
    out_dir = Path(out_dir) / key
    targets = {(row.key, i): out_dir / f"{row.key}-p{i}-s{seeds[i]}.png" for row in rows for i in range(len(prompts))}
    if all(p.is_file() for p in targets.values()):
        return targets
    states = {epoch: read_lora_file(path) for epoch, path in epoch_files.items()}
    anima = Anima(files, device, dtype)
    anima.load_text_encoder()
    anima.load_dit()
    anima.load_vae()
    network = None
    if states:
        network = network_from_state(anima, next(iter(states.values())))
        network.to(device)
        network.eval()
    # A text-encoder LoRA changes the embeddings with every row; otherwise the prompts encode once.
    has_te_lora = network is not None and bool(network.text_encoder_parameters())
    height, width = settings["height"], settings["width"]
    cfg = settings["cfg"]
    with torch.no_grad():
        cached_text = None if has_te_lora else anima.encode_text(prompts + [settings["negative_prompt"]])
        for row in rows:
            if should_stop and should_stop():
                break
            if network is not None:
                if row.epoch is not None:
                    load_weights(network, states[row.epoch])
                network.set_multiplier(row.strength if row.epoch is not None else 0.0)
            texts = cached_text or anima.encode_text(prompts + [settings["negative_prompt"]])
            uncond = texts[-1]
            for index, prompt in enumerate(prompts):
                path = targets[(row.key, index)]
                if path.is_file():
                    continue
                with precision.autocast(), precision.attention_context():
                    context = anima.context([texts[index], uncond])
                generator = torch.Generator().manual_seed(seeds[index])
                noise = torch.randn(anima.latent_shape(width, height), generator=generator).to(device)

                def velocity(x, sigma):
                    with precision.autocast(), precision.attention_context():
                        if cfg == 1.0:
                            return anima.velocity(x, sigma, context[:1])
                        both = anima.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), context)
                        cond, neg = both.float().chunk(2)
                        return neg + cfg * (cond - neg)

                latents = euler_sample(velocity, noise, settings["steps"], settings["flow_shift"])
                to_png(anima.decode_latents(latents)[0], path)
    if network is not None:
        network.detach_all()
    return targets
