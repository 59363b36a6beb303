"""Fixed-seed previews of the shortlisted epochs and a no-LoRA baseline, after training ends.

Each preview is what ComfyUI's KSampler makes from the same settings (anima/sampling.py: the noise
from the seed, Anima's flow sigma table, euler on the CFG'd denoised prediction), and its PNG carries
the ComfyUI graph and the A1111 parameters that reproduce it (anima/comfyui.py). The models load
once; switching epochs only swaps the LoRA tensors (no reload). Rows differ only by the LoRA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors import safe_open

from animad.anima import comfyui
from animad.anima.pipeline import Anima
from animad.config.job import JobConfig
from animad.errors import UserError
from animad.layout import JobPaths
from animad.select.package import package_folder
from animad.select.prompts import USER, Prompt
from animad.train.networks.network import load_weights, network_from_state, read_network_file
from animad.train.precision import resolve_precision

log = logging.getLogger("animad.select")

# The settings that decide pixels for every image alike; prompts, seeds and LoRA rows are per image
# and are checked against the recipe each finished PNG carries.
PIXEL_SETTINGS = ("steps", "cfg", "flow_shift", "sampler", "width", "height", "negative_prompt")


@dataclasses.dataclass(frozen=True)
class Row:
    key: str  # "baseline" or "e0012" (with "@0.8" when several strengths are rendered)
    epoch: int | None
    strength: float


@dataclasses.dataclass(frozen=True)
class LoraFile:
    name: str  # the file name the ComfyUI graph loads
    text_encoder: bool  # has a text-encoder part: ComfyUI needs LoraLoader, not LoraLoaderModelOnly
    hash: str  # A1111/Civitai's LoRA hash (sha256 of the tensor bytes)


def preview_rows(epochs: list[int], strengths: list[float]) -> list[Row]:
    rows = [Row(key="baseline", epoch=None, strength=0.0)]
    for epoch in epochs:
        for strength in strengths:
            suffix = "" if len(strengths) == 1 else f"@{strength:g}"
            rows.append(Row(key=f"e{epoch:04d}{suffix}", epoch=epoch, strength=strength))
    return rows


def settings_key(settings: dict) -> str:
    # "comfyui-ksampler": renders of the earlier linspace sampler are never taken for these.
    chosen = {"sampler_version": "comfyui-ksampler", **{k: settings.get(k) for k in PIXEL_SETTINGS}}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def recipe(files, settings: dict, row: Row, prompt: str, seed: int, lora: LoraFile | None) -> comfyui.Recipe:
    """The ComfyUI recipe of one preview: the template's values with ours filled in."""
    return comfyui.Recipe(
        prompt=prompt, seed=seed, negative_prompt=settings["negative_prompt"], steps=settings["steps"],
        cfg=float(settings["cfg"]), width=settings["width"], height=settings["height"], sampler=settings["sampler"],
        shift=float(settings["flow_shift"]), **comfyui.loader_names(files),
        lora_name=lora.name if lora and row.epoch is not None else None, lora_strength=float(row.strength),
        lora_text_encoder=bool(lora and lora.text_encoder))


def to_png(image: torch.Tensor, path: Path, texts: dict[str, str] | None = None) -> None:
    """Write (3, H, W) in [-1, 1] as ComfyUI's VAEDecode + SaveImage do: clamp to [0, 1], 255x, truncate."""
    unit = ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()
    array = np.clip(255.0 * unit, 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    for key, value in (texts or {}).items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", pnginfo=info, compress_level=4)
    tmp.replace(path)


def already_rendered(path: Path, texts: dict[str, str]) -> bool:
    """The PNG exists and says it was made from exactly this recipe (graph and parameters)."""
    if not path.is_file():
        return False
    found = comfyui.read_png_chunks(path)
    return all(found.get(key) == texts[key] for key in ("prompt", "parameters"))


def lora_file(path: Path) -> LoraFile:
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    return LoraFile(Path(path).name, comfyui.has_text_encoder_part(keys), comfyui.lora_file_hash(path))


def render_previews(config: JobConfig, files, epoch_files: dict[int, Path], out_dir: Path, prompts: list[str],
                    seeds: list[int], settings: dict, rows: list[Row] | None = None,
                    should_stop=None, on_image=None) -> dict[tuple[str, int], Path]:
    """Render every (row, prompt) image into out_dir; an image already rendered from the same recipe is kept.

    rows: what to render (Row(key, epoch, strength)); each epoch named must be in epoch_files. None: the
    baseline and every epoch at every settings["strengths"] (preview_rows). Returns {(row key, prompt
    index): path}; file names are stable per (row, prompt index, seed). on_image(done, total), if given,
    hears (0, total) once the models are loaded and then each image rendered (total counts only the
    images to render, not those kept), so a caller can show a bar and an ETA.
    """
    if rows is None:
        rows = preview_rows(sorted(epoch_files), settings["strengths"])
    out_dir = Path(out_dir) / settings_key(settings)
    loras = {row.epoch: lora_file(epoch_files[row.epoch]) for row in rows if row.epoch is not None}
    targets, texts = {}, {}
    for row in rows:
        for index, prompt in enumerate(prompts):
            targets[(row.key, index)] = out_dir / f"{row.key}-p{index}-s{seeds[index]}.png"
            lora = loras.get(row.epoch)
            texts[(row.key, index)] = comfyui.png_chunks(recipe(files, settings, row, prompt, seeds[index], lora),
                                                        lora.hash if lora else None)
    todo = {key for key, path in targets.items() if not already_rendered(path, texts[key])}
    if todo:
        render(config, files, epoch_files, prompts, seeds, settings,
               [row for row in rows if any((row.key, i) in todo for i in range(len(prompts)))],
               {key: (targets[key], texts[key]) for key in todo}, should_stop, on_image)
    return targets


def render(config: JobConfig, files, epoch_files, prompts, seeds, settings, rows, todo, should_stop,
           on_image=None) -> None:
    """Load the models once and render each image in todo ({(row, prompt): (path, chunks)}), row by row."""
    precision = resolve_precision(config)
    device, dtype = precision.device, precision.weight_dtype
    states = {row.epoch: read_network_file(epoch_files[row.epoch]) for row in rows if row.epoch is not None}
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
    cfg, negative = float(settings["cfg"]), settings["negative_prompt"]

    @contextlib.contextmanager
    def scope():
        with precision.autocast(), precision.attention_context():
            yield

    done = 0
    with torch.no_grad():
        cached_text = None if has_te_lora else anima.encode_text(prompts + [negative])
        # Counted from here, not from the call: loading the models is not a preview's cost, and an
        # ETA that included it would run long for the whole render.
        if on_image:
            on_image(done, len(todo))
        for row in rows:
            if should_stop and should_stop():
                break
            if network is not None:
                if row.epoch is not None:
                    load_weights(network, states[row.epoch])
                network.set_multiplier(row.strength if row.epoch is not None else 0.0)
            embeddings = cached_text or anima.encode_text(prompts + [negative])
            for index in range(len(prompts)):
                if (row.key, index) not in todo:
                    continue
                path, chunks = todo[(row.key, index)]
                with scope():
                    context = anima.context([embeddings[index], embeddings[-1]])
                noise = anima.preview_noise(seeds[index], settings["width"], settings["height"])
                latents = anima.sample(noise, context, settings["steps"], cfg, float(settings["flow_shift"]), scope)
                to_png(anima.decode_latents(latents)[0], path, chunks)
                done += 1
                if on_image:
                    on_image(done, len(todo))
    if network is not None:
        network.detach_all()


SOFTER = 0.8  # the guide: "try 0.8" when a LoRA overpowers the prompt; rendered for the lowest-loss epoch


def row_key(epoch: int, strength: float) -> str:
    """e0012 at strength 1.0, e0012@0.8 otherwise: a row keeps its name whatever else is rendered."""
    return f"e{epoch:04d}" if strength == 1.0 else f"e{epoch:04d}@{strength:g}"


def review_rows(shortlist: list[int], lowest: int | None, strengths: list[float], added: list[Row]) -> list[Row]:
    """Baseline first, then (epoch, strength) rows by epoch, stronger first.

    Default strengths ([], the schema default): every pick at 1.0 and the lowest also at 0.8.
    Any other previews.strengths: every pick at each of them. Rows added by hand come on top.
    """
    wanted = {(epoch, s) for epoch in shortlist for s in (strengths or [1.0])}
    if not strengths and lowest is not None and lowest in shortlist:
        wanted.add((lowest, SOFTER))
    wanted |= {(row.epoch, row.strength) for row in added}
    ordered = sorted(wanted, key=lambda pair: (pair[0], -pair[1]))
    return [Row(key="baseline", epoch=None, strength=0.0)] + [Row(key=row_key(e, s), epoch=e, strength=s)
                                                              for e, s in ordered]


def hand_rows(paths: JobPaths, name: str, epochs, strengths, shortlist: list[int]) -> list[Row]:
    """The rows `--epoch N --strength S` ask for: each epoch at each strength (1.0 by default; every
    shortlisted epoch when only strengths are given). An epoch without its file is a UserError."""
    for strength in strengths:
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
            raise UserError(f"--strength must be a number of at least 0 (got {strength})")
    epochs = list(epochs) or list(shortlist)
    for epoch in epochs:
        if not paths.epoch_file(name, epoch).is_file():
            saved = sorted(int(p.stem.rsplit("-e", 1)[-1]) for p in paths.epochs_dir.glob(f"{name}-e*.safetensors")
                           if p.stem.rsplit("-e", 1)[-1].isdigit())
            have = ", ".join(map(str, saved)) or "none"
            raise UserError(f"--epoch {epoch}: {paths.epoch_file(name, epoch)} does not exist (epochs saved in "
                            f"{paths.epochs_dir}: {have}). Pick one of those; keep_epochs: shortlist removes the "
                            "others once a package is written.")
    return [Row(key=row_key(e, float(s)), epoch=e, strength=float(s)) for e in epochs for s in (strengths or [1.0])]


def with_hand_picks(analysis: dict, added: list[Row]) -> dict:
    """Epochs added by hand join the shortlist (their files are copied into the package, the plot marks them)."""
    losses = dict(zip(analysis.get("epochs") or [], analysis.get("losses") or []))
    picks = list(analysis.get("picks") or [])
    for epoch in sorted({row.epoch for row in added} - set(analysis.get("shortlist") or [])):
        picks.append({"epoch": epoch, "loss": losses.get(epoch), "kind": "added",
                      "reason": f"added by hand (animad select --epoch {epoch})"})
    picks.sort(key=lambda pick: pick["epoch"])
    return {**analysis, "picks": picks, "shortlist": [pick["epoch"] for pick in picks]}


def row_labels(rows: list[Row], analysis: dict) -> dict[str, str]:
    kind = {pick["epoch"]: pick["kind"] for pick in analysis["picks"]}
    labels = {"baseline": "no LoRA"}
    for row in rows[1:]:
        strength = "" if row.strength == 1.0 else f" @ {row.strength:g}"
        labels[row.key] = f"epoch {row.epoch} ({kind.get(row.epoch, 'pick')}){strength}"
    return labels


def previous_selection(outbox: Path) -> dict:
    """What the existing package rendered: {"prompts": [Prompt], "seeds": [int], "added_rows": [Row]}.

    Read from its summary.json; no package (or an unreadable one) gives {} and the job's defaults.
    """
    summary_file = package_folder(outbox) / "summary.json"
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict):
        return {}
    texts = [str(t) for t in summary.get("prompts") or []]
    kinds = summary.get("prompt_kinds") or []
    prompts = []
    for index, text in enumerate(texts):
        kind = kinds[index] if index < len(kinds) and isinstance(kinds[index], dict) else {}
        prompts.append(Prompt(text, str(kind.get("kind") or USER), str(kind.get("note") or "")))
    seeds = [int(s) for s in summary.get("seeds") or [] if isinstance(s, int)]
    added = [Row(key=row_key(int(r["epoch"]), float(r["strength"])), epoch=int(r["epoch"]),
                 strength=float(r["strength"])) for r in summary.get("added_rows") or []
             if isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("strength"), (int, float))]
    return {"prompts": prompts, "seeds": seeds if len(seeds) == len(prompts) else [], "added_rows": added}
