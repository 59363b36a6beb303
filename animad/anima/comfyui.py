"""A preview as a ComfyUI recipe: the graphs and the A1111 text that a preview PNG carries.

ComfyUI's SaveImage writes two PNG text chunks, `prompt` (the API-format graph that ran) and
`workflow` (the editor's graph); dragging such a PNG into ComfyUI opens the workflow. A1111, Civitai and
image viewers read one `parameters` chunk instead. We write all three, so every preview says how to
make it again.

The graph is ComfyUI's official Anima text-to-image template (`image_anima_base_v1.json` in the PyPI
package comfyui-workflow-templates-json 0.1.123) flattened: the template wraps its nodes in a subgraph
with a switch for the turbo LoRA; we keep its nodes, ids and values and put our LoRA, prompt, seed and
size in. How ComfyUI turns those numbers into pixels, and so how our previews do, is anima/sampling.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

# Plain Python on purpose (no torch at import): config/ reads the template's defaults from here.

# Anima's sampling in ComfyUI (comfy/supported_models.py class Anima): flow shift 3.0, and the
# template's KSampler: euler, simple, denoise 1. anima/sampling.py computes what they mean.
SHIFT = 3.0
SAMPLER = "euler"
SCHEDULER = "simple"
DENOISE = 1.0
# The template's values (its subgraph "Text to Image (Anima Base v1.0)").
UNET_NAME = "anima-base-v1.0.safetensors"
CLIP_NAME = "qwen_3_06b_base.safetensors"
CLIP_TYPE = "stable_diffusion"  # ComfyUI tells the Qwen3 0.6B file apart by its keys under this type
VAE_NAME = "qwen_image_vae.safetensors"
NEGATIVE_PROMPT = "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia"
STEPS = 30
CFG = 4.0
WIDTH = HEIGHT = 1024
FILENAME_PREFIX = "Anima"
# The template's download links: ComfyUI offers them when a base file is missing.
MODEL_URLS = {
    UNET_NAME: ("diffusion_models", "https://huggingface.co/circlestone-labs/Anima/resolve/main/split_files/"
                                    "diffusion_models/anima-base-v1.0.safetensors"),
    CLIP_NAME: ("text_encoders", "https://huggingface.co/circlestone-labs/Anima/resolve/main/split_files/"
                                 "text_encoders/qwen_3_06b_base.safetensors"),
    VAE_NAME: ("vae", "https://huggingface.co/circlestone-labs/Anima/resolve/main/split_files/vae/"
                      "qwen_image_vae.safetensors"),
}

# ComfyUI's model folders (folder_paths.py: "diffusion_models" also answers to its old name "unet",
# "text_encoders" to "clip"). A loader names a file by its path under one of them.
FOLDERS = {"unet_name": ("diffusion_models", "unet"), "clip_name": ("text_encoders", "clip"),
           "vae_name": ("vae",), "lora_name": ("loras",)}


def file_name(path, widget: str) -> str:
    """The name ComfyUI's loader shows for this file: its path under the model folder, else its base name.

    models/diffusion_models/anima/x.safetensors is "anima/x.safetensors" in ComfyUI's list; a file kept
    outside a ComfyUI tree is named by its base name, the name it gets once copied into that folder.
    """
    parts = Path(path).parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in FOLDERS[widget]:
            return "/".join(parts[index + 1:])
    return Path(path).name


def loader_names(files) -> dict[str, str]:
    """A model set's three files (dit, text_encoder, vae) as the UNET, CLIP and VAE loaders name them."""
    return {"unet_name": file_name(files.dit, "unet_name"), "clip_name": file_name(files.text_encoder, "clip_name"),
            "vae_name": file_name(files.vae, "vae_name")}


# The template's node ids, kept so a graph of ours reads side by side with the template.
SAVE, CLIP_LOADER, VAE_LOADER, VAE_DECODE, LATENT, NEGATIVE, KSAMPLER, POSITIVE, UNET, LORA = (
    "46", "71", "72", "73", "74", "75", "76", "77", "78", "83")
MODEL_SAMPLING = "92"  # ours: only when the flow shift is not Anima's 3.0 (the template has no such node)

# ComfyUI's node definitions, as far as a graph of ours uses them: link inputs (name, type), outputs
# (name, type) and widget names in the editor's widgets_values order.
NODES = {
    "UNETLoader": ((), (("MODEL", "MODEL"),), ("unet_name", "weight_dtype")),
    "CLIPLoader": ((), (("CLIP", "CLIP"),), ("clip_name", "type", "device")),
    "VAELoader": ((), (("VAE", "VAE"),), ("vae_name",)),
    "LoraLoaderModelOnly": ((("model", "MODEL"),), (("MODEL", "MODEL"),), ("lora_name", "strength_model")),
    "LoraLoader": ((("model", "MODEL"), ("clip", "CLIP")), (("MODEL", "MODEL"), ("CLIP", "CLIP")),
                   ("lora_name", "strength_model", "strength_clip")),
    "ModelSamplingAuraFlow": ((("model", "MODEL"),), (("MODEL", "MODEL"),), ("shift",)),
    "CLIPTextEncode": ((("clip", "CLIP"),), (("CONDITIONING", "CONDITIONING"),), ("text",)),
    "EmptyLatentImage": ((), (("LATENT", "LATENT"),), ("width", "height", "batch_size")),
    "KSampler": ((("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")), (("LATENT", "LATENT"),),
                 ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise")),
    "VAEDecode": ((("samples", "LATENT"), ("vae", "VAE")), (("IMAGE", "IMAGE"),), ()),
    "SaveImage": ((("images", "IMAGE"),), (), ("filename_prefix",)),
}
# Where the editor draws each node: the template's positions, the LoRA and shift nodes between loader
# and sampler.
LAYOUT = {
    UNET: ((330, 150), (310, 130)), CLIP_LOADER: ((320, 360), (310, 150)), VAE_LOADER: ((330, 590), (310, 100)),
    LATENT: ((330, 800), (310, 150)), POSITIVE: ((710, 150), (490, 610)), NEGATIVE: ((720, 810), (490, 140)),
    LORA: ((1260, 740), (270, 130)), MODEL_SAMPLING: ((1630, 740), (270, 60)), KSAMPLER: ((2040, 180), (300, 620)),
    VAE_DECODE: ((2370, 210), (230, 50)), SAVE: ((2650, 130), (690, 760)),
}
TITLES = {POSITIVE: "CLIP Text Encode (Positive Prompt)", NEGATIVE: "CLIP Text Encode (Negative Prompt)"}
NOTE = ("Made by animad from ComfyUI's Anima template (image_anima_base_v1): the same seed, steps, CFG, "
        "sampler and size give the same image.\n\nPut the LoRA file in models/loras/ and the base files in "
        "models/diffusion_models/, models/text_encoders/ and models/vae/.\n\nComfyUI reads (tag) and (tag:1.2) "
        "as prompt weighting; a caption's literal parentheses are written \\( and \\) here.")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides a preview's pixels, in ComfyUI's terms (prompts as literal text)."""
    prompt: str
    seed: int
    negative_prompt: str = NEGATIVE_PROMPT
    steps: int = STEPS
    cfg: float = CFG
    width: int = WIDTH
    height: int = HEIGHT
    sampler: str = SAMPLER
    scheduler: str = SCHEDULER
    denoise: float = DENOISE
    shift: float = SHIFT
    unet_name: str = UNET_NAME
    clip_name: str = CLIP_NAME
    vae_name: str = VAE_NAME
    lora_name: str | None = None  # None: the baseline, no LoRA node
    lora_strength: float = 1.0
    lora_text_encoder: bool = False  # a LoRA with lora_te_* modules needs LoraLoader, which patches the CLIP too


# -- prompt text -------------------------------------------------------------------------------

def escape_prompt(text: str) -> str:
    """ComfyUI (and A1111) read (tag) as weighting; our previews encode the text as it is, so escape them."""
    return text.replace("(", "\\(").replace(")", "\\)")


def unescape_prompt(text: str) -> str:
    return text.replace("\\(", "(").replace("\\)", ")")


# -- the API graph -----------------------------------------------------------------------------

def node(class_type: str, inputs: dict, title: str | None = None) -> dict:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title or class_type}}


def api_graph(recipe: Recipe) -> dict:
    """The API-format graph (the `prompt` chunk) that renders this preview in ComfyUI."""
    graph = {
        UNET: node("UNETLoader", {"unet_name": recipe.unet_name, "weight_dtype": "default"}),
        CLIP_LOADER: node("CLIPLoader", {"clip_name": recipe.clip_name, "type": CLIP_TYPE, "device": "default"}),
        VAE_LOADER: node("VAELoader", {"vae_name": recipe.vae_name}),
    }
    model, clip = [UNET, 0], [CLIP_LOADER, 0]
    if recipe.lora_name is not None:
        if recipe.lora_text_encoder:
            graph[LORA] = node("LoraLoader", {"lora_name": recipe.lora_name, "strength_model": recipe.lora_strength,
                                              "strength_clip": recipe.lora_strength, "model": model, "clip": clip})
            clip = [LORA, 1]
        else:
            graph[LORA] = node("LoraLoaderModelOnly", {"lora_name": recipe.lora_name,
                                                       "strength_model": recipe.lora_strength, "model": model})
        model = [LORA, 0]
    if recipe.shift != SHIFT:
        # AuraFlow's node sets a flow shift with multiplier 1.0, Anima's timestep convention (SD3's uses 1000).
        graph[MODEL_SAMPLING] = node("ModelSamplingAuraFlow", {"shift": recipe.shift, "model": model})
        model = [MODEL_SAMPLING, 0]
    graph[POSITIVE] = node("CLIPTextEncode", {"text": escape_prompt(recipe.prompt), "clip": clip}, TITLES[POSITIVE])
    graph[NEGATIVE] = node("CLIPTextEncode", {"text": escape_prompt(recipe.negative_prompt), "clip": clip},
                           TITLES[NEGATIVE])
    graph[LATENT] = node("EmptyLatentImage", {"width": recipe.width, "height": recipe.height, "batch_size": 1})
    graph[KSAMPLER] = node("KSampler", {
        "seed": recipe.seed, "steps": recipe.steps, "cfg": recipe.cfg, "sampler_name": recipe.sampler,
        "scheduler": recipe.scheduler, "denoise": recipe.denoise, "model": model, "positive": [POSITIVE, 0],
        "negative": [NEGATIVE, 0], "latent_image": [LATENT, 0]})
    graph[VAE_DECODE] = node("VAEDecode", {"samples": [KSAMPLER, 0], "vae": [VAE_LOADER, 0]})
    graph[SAVE] = node("SaveImage", {"filename_prefix": FILENAME_PREFIX, "images": [VAE_DECODE, 0]})
    return graph


def read_recipe(graph: dict) -> Recipe:
    """The recipe an API-format graph renders: follow the KSampler's links back to the loaders.

    Accepts a graph of ours and one ComfyUI exported from it; raises ValueError naming what is missing.
    """
    def find(link, *types):
        if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in graph):
            raise ValueError(f"the graph has a broken link {link!r}")
        found = graph[str(link[0])]
        if types and found.get("class_type") not in types:
            raise ValueError(f"expected {' or '.join(types)} at node {link[0]}, found {found.get('class_type')}")
        return found["inputs"]

    samplers = [key for key, n in graph.items() if n.get("class_type") == "KSampler"]
    if len(samplers) != 1:
        raise ValueError(f"the graph has {len(samplers)} KSampler nodes; a preview graph has one")
    ks = graph[samplers[0]]["inputs"]
    latent = find(ks["latent_image"], "EmptyLatentImage")
    values = {"prompt": unescape_prompt(find(ks["positive"], "CLIPTextEncode")["text"]),
              "negative_prompt": unescape_prompt(find(ks["negative"], "CLIPTextEncode")["text"]),
              "seed": int(ks["seed"]), "steps": int(ks["steps"]), "cfg": float(ks["cfg"]),
              "sampler": ks["sampler_name"], "scheduler": ks["scheduler"], "denoise": float(ks["denoise"]),
              "width": int(latent["width"]), "height": int(latent["height"])}
    link = ks["model"]
    while True:  # the model chain: [shift node] <- [LoRA node] <- UNETLoader
        inputs = find(link, "ModelSamplingAuraFlow", "LoraLoader", "LoraLoaderModelOnly", "UNETLoader")
        kind = graph[str(link[0])]["class_type"]
        if kind == "UNETLoader":
            values["unet_name"] = inputs["unet_name"]
            break
        if kind == "ModelSamplingAuraFlow":
            values["shift"] = float(inputs["shift"])
        else:
            values.update(lora_name=inputs["lora_name"], lora_strength=float(inputs["strength_model"]),
                          lora_text_encoder=kind == "LoraLoader")
        link = inputs["model"]
    clip = find(find(ks["positive"])["clip"], "CLIPLoader", "LoraLoader")
    while "clip_name" not in clip:
        clip = find(clip["clip"], "CLIPLoader", "LoraLoader")
    values["clip_name"] = clip["clip_name"]
    decoders = [n["inputs"] for n in graph.values() if n.get("class_type") == "VAEDecode"
                and str(n["inputs"].get("samples", [None])[0]) == samplers[0]]
    if not decoders:
        raise ValueError("the graph has no VAEDecode of the KSampler's latent")
    values["vae_name"] = find(decoders[0]["vae"], "VAELoader")["vae_name"]
    return Recipe(**values)


# -- the editor's graph ------------------------------------------------------------------------

def ui_workflow(recipe: Recipe) -> dict:
    """The editor's graph (the `workflow` chunk and comfyui-workflow.json): the API graph laid out, flat."""
    graph = api_graph(recipe)
    ids = {key: int(key) for key in graph}
    links, nodes = [], []
    outgoing: dict[tuple[str, int], list[int]] = {}
    for key, entry in graph.items():
        link_inputs, _, _ = NODES[entry["class_type"]]
        for slot, (name, kind) in enumerate(link_inputs):
            source, source_slot = entry["inputs"][name]
            links.append([len(links) + 1, ids[source], source_slot, ids[key], slot, kind])
            outgoing.setdefault((source, source_slot), []).append(len(links))
    link_of = {(link[3], link[4]): link[0] for link in links}
    for order, (key, entry) in enumerate(graph.items()):
        kind = entry["class_type"]
        link_inputs, outputs, widgets = NODES[kind]
        values = {**entry["inputs"], "control_after_generate": "fixed"}  # "randomize" would lose the seed
        properties = {"Node name for S&R": kind}
        models = [name for name in (entry["inputs"].get(w) for w in ("unet_name", "clip_name", "vae_name"))
                  if name in MODEL_URLS]
        if models:
            properties["models"] = [{"name": m, "url": MODEL_URLS[m][1], "directory": MODEL_URLS[m][0]} for m in models]
        pos, size = LAYOUT[key]
        item = {
            "id": ids[key], "type": kind, "pos": list(pos), "size": list(size), "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": t, "link": link_of[(ids[key], slot)]}
                       for slot, (name, t) in enumerate(link_inputs)],
            "outputs": [{"name": name, "type": t, "slot_index": slot, "links": outgoing.get((key, slot), [])}
                        for slot, (name, t) in enumerate(outputs)],
            "properties": properties,
            "widgets_values": [values[w] for w in widgets],
        }
        if key in TITLES:
            item["title"] = TITLES[key]
        nodes.append(item)
    note_id = max(ids.values()) + 1
    nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [-420, 130], "size": [700, 300], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                  "widgets_values": [NOTE], "title": "How this preview was made"})
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


# -- A1111 parameters --------------------------------------------------------------------------

def a1111_quote(text: str) -> str:
    """A1111's rule for an infotext value: plain unless it holds a comma, colon or newline."""
    return text if not any(c in text for c in ",:\n") else json.dumps(text, ensure_ascii=False)


def a1111_parameters(recipe: Recipe, lora_hash: str | None = None) -> str:
    """The `parameters` text A1111, Civitai and image viewers read: prompt, negative, then key: value pairs."""
    prompt = escape_prompt(recipe.prompt)
    fields = [("Steps", recipe.steps), ("Sampler", recipe.sampler.capitalize()),
              ("Schedule type", recipe.scheduler.capitalize()), ("CFG scale", f"{recipe.cfg:g}"),
              ("Seed", recipe.seed), ("Size", f"{recipe.width}x{recipe.height}"),
              ("Model", Path(recipe.unet_name).stem)]
    if recipe.shift != SHIFT:
        fields.append(("Shift", f"{recipe.shift:g}"))
    if recipe.lora_name is not None:
        stem = Path(recipe.lora_name).stem
        prompt += f" <lora:{stem}:{recipe.lora_strength:g}>"
        if lora_hash:
            fields.append(("Lora hashes", f'"{stem}: {lora_hash[:12]}"'))
    fields.append(("Version", "animad"))
    settings = ", ".join(f"{k}: {v if k == 'Lora hashes' else a1111_quote(str(v))}" for k, v in fields)
    return f"{prompt}\nNegative prompt: {escape_prompt(recipe.negative_prompt)}\n{settings}"


def png_chunks(recipe: Recipe, lora_hash: str | None = None) -> dict[str, str]:
    """The three PNG text chunks, as ComfyUI's SaveImage writes its two (ASCII JSON, so plain tEXt)."""
    return {"prompt": json.dumps(api_graph(recipe)), "workflow": json.dumps(ui_workflow(recipe)),
            "parameters": a1111_parameters(recipe, lora_hash)}


def renamed_lora(texts: dict[str, str], new_name: str) -> dict[str, str]:
    """The same chunks with the LoRA file called new_name (the package renames the epoch files)."""
    recipe = read_recipe(json.loads(texts["prompt"]))
    if recipe.lora_name is None:
        return dict(texts)
    old_stem = Path(recipe.lora_name).stem
    parameters = texts.get("parameters", "")
    lora_hash = None
    marker = f'Lora hashes: "{old_stem}: '
    if marker in parameters:
        lora_hash = parameters.split(marker, 1)[1].split('"', 1)[0]
    return png_chunks(dataclasses.replace(recipe, lora_name=new_name), lora_hash)


def read_png_chunks(path: Path) -> dict[str, str]:
    """A PNG's text chunks ({} for a missing or unreadable file)."""
    from PIL import Image  # here, not at the top: config/ imports this module and stays light

    try:
        with Image.open(path) as image:
            return dict(getattr(image, "text", None) or {})
    except (OSError, ValueError):
        return {}


# -- LoRA files --------------------------------------------------------------------------------

def lora_file_hash(path: Path) -> str:
    """sha256 over a safetensors file's tensor bytes (after the header): A1111's and Civitai's LoRA hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_text_encoder_part(keys) -> bool:
    """Whether a LoRA's (sd-scripts) keys patch the text encoder, so ComfyUI needs LoraLoader for it."""
    from animad.anima.lora_names import PREFIXES, TEXT_ENCODER  # torch: only when asked

    prefix = PREFIXES[TEXT_ENCODER] + "_"
    return any(key.startswith(prefix) for key in keys)
