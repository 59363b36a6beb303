"""Every preview is a ComfyUI recipe: the sampler is KSampler's, the PNG carries the graph, the graph is the template's.

The template is ComfyUI's own (PyPI comfyui-workflow-templates-json, a test dependency); the previews
are real renders on the tiny model set with real LoRA files.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from animad.anima import comfyui, sampling
from animad.anima.files import ModelFiles
from animad.anima.pipeline import Anima
from animad.config.job import JobConfig, NetworkConfig
from animad.select.previews import Row, render_previews
from animad.train.networks.network import build_network

SETTINGS = {"steps": 4, "cfg": 4.0, "flow_shift": 3.0, "sampler": "euler", "width": 32, "height": 48,
            "negative_prompt": comfyui.NEGATIVE_PROMPT, "strengths": [1.0]}
PROMPTS = ["@demo, red, circle", "hatsune miku (vocaloid), blue, square"]
SEEDS = [7, 8]


def model_files(models) -> ModelFiles:
    return ModelFiles(models["dit"], models["text_encoder"], models["vae"], models["tokenizers"] / "qwen3",
                      models["tokenizers"] / "t5")


def write_lora(models, path, seed: int, text_encoder: bool = False):
    """A real LoRA file in sd-scripts' format, with random (non-zero) up weights so it changes the image."""
    anima = Anima(model_files(models), "cpu")
    anima.load_dit()
    if text_encoder:
        anima.load_text_encoder()
    network = build_network(anima, NetworkConfig(dim=4, train_text_encoder=text_encoder))
    generator = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.3 if "lora_up" in k else v.float())
             for k, v in network.state_dict().items()}
    network.detach_all()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {1: write_lora(tiny_models, folder / "ds-e0001.safetensors", 1),
            2: write_lora(tiny_models, folder / "ds-e0002.safetensors", 2)}


def render(models, out, epoch_files, rows, prompts=PROMPTS, seeds=SEEDS, settings=SETTINGS):
    return render_previews(JobConfig(device="cpu"), model_files(models), epoch_files, out, prompts, seeds, settings,
                           rows)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# -- the sampler is KSampler's ---------------------------------------------------------------

def test_sigmas_are_comfyuis_discrete_flow_table_and_simple_schedule():
    table = sampling.flow_sigma_table()
    assert table.dtype == torch.float32 and len(table) == 1000 and float(table[-1]) == 1.0
    t = torch.arange(1, 1001) / 1000
    assert torch.equal(table, 3.0 * t / (1 + 2.0 * t))  # time_snr_shift(3.0, t), multiplier 1.0
    for steps in (1, 4, 7, 30, 50):
        sigmas = sampling.simple_sigmas(steps)
        expected = [float(table[-(1 + int(i * 1000 / steps))]) for i in range(steps)] + [0.0]
        assert sigmas.tolist() == expected and len(sigmas) == steps + 1
    # 30 steps: indices are truncated (1000/30 is not whole), so the table is not linspace(1, 0) shifted.
    assert float(sampling.simple_sigmas(30)[-2]) == pytest.approx(float(table[-(1 + int(29 * 1000 / 30))]))
    assert abs(float(sampling.simple_sigmas(30)[-2]) - 3 * (1 / 30) / (1 + 2 * (1 / 30))) > 1e-3


def test_noise_is_what_torch_manual_seed_then_randn_draws():
    state = torch.get_rng_state()
    noise = sampling.initial_noise(1234, 64, 48)
    assert torch.equal(torch.get_rng_state(), state)  # the process's random state is left alone
    torch.manual_seed(1234)
    expected = torch.randn([1, 16, 1, 6, 8], dtype=torch.float32, device="cpu")
    assert noise.shape == (1, 16, 1, 6, 8) and noise.dtype == torch.float32 and torch.equal(noise, expected)


def test_euler_steps_on_the_cfg_denoised_prediction():
    # A toy model with a known output; the reference is k-diffusion's sample_euler over ComfyUI's CFG'd
    # denoised, written out step by step.
    def model(x, sigma, cond):
        return torch.sin(x * (3.0 if cond else 2.0) + sigma.view(-1, 1, 1, 1, 1))

    def velocity(x, sigma, both):
        if not both:
            return model(x, sigma, True)
        return model(x, sigma, True), model(x, sigma, False)

    noise = sampling.initial_noise(3, 32, 32)
    got = sampling.sample_euler(velocity, noise, 5, 4.0)
    x, sigmas = noise.clone(), sampling.simple_sigmas(5)
    for i in range(5):
        s = sigmas[i]
        cond = x - model(x, s.expand(1), True) * s
        uncond = x - model(x, s.expand(1), False) * s
        denoised = uncond + (cond - uncond) * 4.0
        x = x + (x - denoised) / s * (sigmas[i + 1] - s)
    assert torch.equal(got, x)
    at_one = sampling.sample_euler(velocity, noise, 5, 1.0)  # cfg 1: the uncond pass is skipped
    assert torch.isfinite(at_one).all() and not torch.equal(at_one, got)


# -- the graph is the official template ------------------------------------------------------

WIDGETS_IN_TEMPLATE = {"KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler",
                                    "denoise")}


def template():
    """ComfyUI's official Anima template, from the pinned test dependency (pyproject's [dev] extra)."""
    from importlib import resources

    import comfyui_workflow_templates_json as templates

    text = resources.files(templates).joinpath("templates/image_anima_base_v1.json").read_text()
    workflow = json.loads(text)
    (subgraph,) = workflow["definitions"]["subgraphs"]
    nodes = {str(n["id"]): n for n in subgraph["nodes"] + workflow["nodes"]}
    return workflow, subgraph, nodes


def template_values(entry) -> dict:
    """A template node's widget values by name (ComfyUI's widget order for each node type)."""
    names = comfyui.NODES[entry["type"]][2]
    assert len(names) == len(entry["widgets_values"]), entry["type"]
    return dict(zip(names, entry["widgets_values"]))


def template_edges(workflow, subgraph, nodes) -> set[tuple[str, str, str]]:
    """(source type, target type, target input) of the template, with its switches, primitives and the
    subgraph boundary looked through (the turbo switch off: the model comes from the LoRA loader or the UNET)."""
    links = {link["id"]: link for link in subgraph["links"]}
    edges = set()
    for link in links.values():
        source, target = nodes.get(str(link["origin_id"])), nodes.get(str(link["target_id"]))
        if source is None or target is None or source["type"] == "ComfySwitchNode":
            continue  # the subgraph's boundary; a switch's own output is followed from its inputs
        targets = [target]
        if target["type"] == "ComfySwitchNode":  # a switch forwards to where its output goes
            out = target["outputs"][0]["links"]
            targets = [nodes[str(links[i]["target_id"])] for i in out]
            slots = [links[i]["target_slot"] for i in out]
        else:
            slots = [link["target_slot"]]
        for final, slot in zip(targets, slots):
            name = final["inputs"][slot]["name"]
            if source["type"].startswith("Primitive") or final["type"].startswith("Primitive"):
                continue
            edges.add((source["type"], final["type"], name))
    # SaveImage (outside) takes the subgraph's image, which is its VAEDecode's output.
    assert any(link[3] == 46 and nodes[str(link[1])]["type"] == subgraph["id"] for link in workflow["links"])
    assert any(link["origin_id"] == 73 and link["target_id"] == subgraph["outputNode"]["id"]
               for link in subgraph["links"])
    edges.add(("VAEDecode", "SaveImage", "images"))
    return edges


def graph_edges(graph) -> set[tuple[str, str, str]]:
    return {(graph[value[0]]["class_type"], entry["class_type"], name)
            for entry in graph.values() for name, value in entry["inputs"].items() if isinstance(value, list)}


def test_the_graph_is_the_official_template_with_our_values():
    workflow, subgraph, nodes = template()
    recipe = comfyui.Recipe(prompt="@demo, 1girl", seed=1000, lora_name="ds-e0012-lowest.safetensors",
                            lora_strength=0.8)
    graph = comfyui.api_graph(recipe)
    ours = {"seed": 1000, "text": None, "lora_name": "ds-e0012-lowest.safetensors", "strength_model": 0.8}
    types = sorted(entry["class_type"] for entry in graph.values())
    assert types == sorted(["UNETLoader", "CLIPLoader", "VAELoader", "LoraLoaderModelOnly", "CLIPTextEncode",
                            "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"])
    for key, entry in graph.items():
        twin = nodes[key]  # the same id as in the template, and the same node type
        assert twin["type"] == entry["class_type"], key
        for name, value in template_values(twin).items():
            if name == "control_after_generate":
                continue
            if name in ours and ours[name] is not None:
                assert entry["inputs"][name] == ours[name], (key, name)
            elif name == "text":
                continue  # checked below: the positive is ours, the negative the template's
            else:
                assert entry["inputs"][name] == value, (key, name, entry["inputs"][name], value)
    assert graph[comfyui.NEGATIVE]["inputs"]["text"] == template_values(nodes["75"])["text"]
    assert graph[comfyui.POSITIVE]["inputs"]["text"] == "@demo, 1girl"
    sampler = template_values(nodes["76"])
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"], sampler["denoise"]) == \
        (30, 4, "euler", "simple", 1)  # the issue's facts about the template, and our defaults
    assert template_values(nodes["74"])["width"] == template_values(nodes["74"])["height"] == 1024
    edges = template_edges(workflow, subgraph, nodes)
    baseline = comfyui.api_graph(comfyui.Recipe(prompt="@demo, 1girl", seed=1000))
    assert graph_edges(graph) <= edges and graph_edges(baseline) <= edges
    assert graph_edges(graph) | graph_edges(baseline) == edges  # the template's two paths, nothing left out


def test_baseline_has_no_lora_node_and_a_text_encoder_lora_gets_lora_loader():
    baseline = comfyui.api_graph(comfyui.Recipe(prompt="x", seed=1))
    assert {e["class_type"] for e in baseline.values()}.isdisjoint({"LoraLoader", "LoraLoaderModelOnly"})
    assert baseline[comfyui.KSAMPLER]["inputs"]["model"] == [comfyui.UNET, 0]
    both = comfyui.api_graph(comfyui.Recipe(prompt="x", seed=1, lora_name="a.safetensors", lora_strength=0.8,
                                            lora_text_encoder=True))
    lora = both[comfyui.LORA]
    assert lora["class_type"] == "LoraLoader" and lora["inputs"]["strength_clip"] == 0.8
    assert lora["inputs"]["clip"] == [comfyui.CLIP_LOADER, 0]
    assert both[comfyui.POSITIVE]["inputs"]["clip"] == both[comfyui.NEGATIVE]["inputs"]["clip"] == [comfyui.LORA, 1]
    assert comfyui.read_recipe(both).lora_text_encoder
    shifted = comfyui.api_graph(comfyui.Recipe(prompt="x", seed=1, shift=5.0))
    assert shifted[comfyui.MODEL_SAMPLING]["class_type"] == "ModelSamplingAuraFlow"
    assert comfyui.read_recipe(shifted).shift == 5.0


def test_the_ui_workflow_is_a_consistent_litegraph():
    recipe = comfyui.Recipe(prompt="a (b)", seed=5, lora_name="x.safetensors", lora_text_encoder=True)
    workflow = comfyui.ui_workflow(recipe)
    by_id = {n["id"]: n for n in workflow["nodes"]}
    assert workflow["last_link_id"] == len(workflow["links"]) and workflow["last_node_id"] == max(by_id)
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        assert link_id in by_id[source]["outputs"][source_slot]["links"]
        assert by_id[target]["inputs"][target_slot]["link"] == link_id
        assert by_id[source]["outputs"][source_slot]["type"] == kind == by_id[target]["inputs"][target_slot]["type"]
    sampler = by_id[int(comfyui.KSAMPLER)]
    assert sampler["widgets_values"] == [5, "fixed", 30, 4.0, "euler", "simple", 1.0]
    assert by_id[int(comfyui.POSITIVE)]["widgets_values"] == ["a \\(b\\)"]
    assert by_id[int(comfyui.UNET)]["properties"]["models"][0]["directory"] == "diffusion_models"


def test_a1111_parameters_and_prompt_escaping():
    recipe = comfyui.Recipe(prompt="hatsune miku (vocaloid), smile", seed=42, width=896, height=1152,
                            lora_name="ds-e0003.safetensors", lora_strength=0.8)
    text = comfyui.a1111_parameters(recipe, "ab" * 32)
    prompt, negative, settings = text.split("\n")
    assert prompt == "hatsune miku \\(vocaloid\\), smile <lora:ds-e0003:0.8>"
    assert negative == f"Negative prompt: {comfyui.NEGATIVE_PROMPT}"
    fields = dict(part.split(": ", 1) for part in settings.replace('"ds-e0003: abababababab"', "H").split(", "))
    assert fields == {"Steps": "30", "Sampler": "Euler", "Schedule type": "Simple", "CFG scale": "4", "Seed": "42",
                      "Size": "896x1152", "Model": "anima-base-v1.0", "Lora hashes": "H", "Version": "animad"}
    graph = comfyui.api_graph(recipe)
    assert graph[comfyui.POSITIVE]["inputs"]["text"] == "hatsune miku \\(vocaloid\\), smile"
    assert comfyui.read_recipe(graph) == recipe  # read back literal, as our text encoder sees it


# -- a rendered preview carries its recipe and re-renders from it ----------------------------

def test_preview_png_carries_its_recipe_and_rerenders_from_it(tiny_models, loras, tmp_path):
    rows = [Row("baseline", None, 0.0), Row("e0002", 2, 1.0), Row("e0002@0.8", 2, 0.8)]
    started = time.perf_counter()
    images = render(tiny_models, tmp_path / "first", loras, rows)
    per_image = (time.perf_counter() - started) / len(images)
    print(f"tiny CPU model: {len(images)} images x {SETTINGS['steps']} steps, {per_image:.3f} s per image")
    assert sorted(images) == [(r.key, i) for r in rows for i in (0, 1)]
    for (key, index), path in images.items():
        texts = comfyui.read_png_chunks(path)
        data = path.read_bytes()
        assert all(b"tEXt" + name + b"\0" in data for name in (b"prompt", b"workflow", b"parameters"))
        graph, workflow = json.loads(texts["prompt"]), json.loads(texts["workflow"])
        assert {n["type"] for n in workflow["nodes"]} >= {e["class_type"] for e in graph.values()}
        recipe = comfyui.read_recipe(graph)
        assert texts["parameters"] == comfyui.a1111_parameters(recipe, comfyui.lora_file_hash(loras[2])
                                                               if recipe.lora_name else None)
        assert recipe.prompt == PROMPTS[index] and recipe.seed == SEEDS[index]
        assert recipe.unet_name == tiny_models["dit"].name and recipe.scheduler == "simple"
        assert (recipe.lora_name is None) == (key == "baseline")
        if recipe.lora_name:
            assert recipe.lora_name == "ds-e0002.safetensors" and recipe.lora_strength == (0.8 if "@" in key else 1.0)
            assert "LoraLoaderModelOnly" in {e["class_type"] for e in graph.values()}
        # Re-render from the graph's own values alone: seed, steps, cfg, sampler, scheduler, size, prompt,
        # negative and LoRA (file by name, strength).
        again = {"steps": recipe.steps, "cfg": recipe.cfg, "flow_shift": recipe.shift, "sampler": recipe.sampler,
                 "width": recipe.width, "height": recipe.height, "negative_prompt": recipe.negative_prompt,
                 "strengths": [recipe.lora_strength]}
        files = {1: loras[2].parent / recipe.lora_name} if recipe.lora_name else {}
        row = Row("again", 1 if recipe.lora_name else None, recipe.lora_strength if recipe.lora_name else 0.0)
        redo = render(tiny_models, tmp_path / "again" / f"{key}-{index}", files, [row], [recipe.prompt],
                      [recipe.seed], again)
        assert np.array_equal(pixels(redo[("again", 0)]), pixels(path)), (key, index)
    assert not np.array_equal(pixels(images[("e0002", 0)]), pixels(images[("e0002@0.8", 0)]))
    assert not np.array_equal(pixels(images[("baseline", 0)]), pixels(images[("e0002", 0)]))


def test_an_existing_preview_of_the_same_recipe_is_kept(tiny_models, loras, tmp_path):
    rows = [Row("e0001", 1, 1.0)]
    first = render(tiny_models, tmp_path, loras, rows)
    stamps = {key: path.stat().st_mtime_ns for key, path in first.items()}
    again = render(tiny_models, tmp_path, loras, rows + [Row("e0001@0.8", 1, 0.8)])  # a row added by hand
    assert {key: again[key].stat().st_mtime_ns for key in stamps} == stamps
    changed = render(tiny_models, tmp_path, loras, rows, prompts=[PROMPTS[0], "@demo, green"])
    assert changed[("e0001", 0)].stat().st_mtime_ns == stamps[("e0001", 0)]
    assert changed[("e0001", 1)].stat().st_mtime_ns != stamps[("e0001", 1)]  # same file name, new prompt
    graph = json.loads(comfyui.read_png_chunks(changed[("e0001", 1)])["prompt"])
    assert comfyui.read_recipe(graph).prompt == "@demo, green"


def test_a_text_encoder_lora_preview_names_lora_loader(tiny_models, tmp_path):
    lora = write_lora(tiny_models, tmp_path / "te-e0001.safetensors", 3, text_encoder=True)
    images = render(tiny_models, tmp_path / "out", {1: lora}, [Row("e0001", 1, 1.0)], PROMPTS[:1], SEEDS[:1])
    graph = json.loads(comfyui.read_png_chunks(images[("e0001", 0)])["prompt"])
    assert graph[comfyui.LORA]["class_type"] == "LoraLoader"
    assert comfyui.read_recipe(graph).lora_text_encoder


def test_lora_file_hash_is_over_the_tensor_bytes(tmp_path):
    import hashlib

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32)}, str(path), metadata={"ss_note": "one"})
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert comfyui.lora_file_hash(path) == hashlib.sha256(data[8 + header:]).hexdigest()
    other = tmp_path / "y.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32)}, str(other), metadata={"ss_note": "a longer note"})
    assert comfyui.lora_file_hash(other) == comfyui.lora_file_hash(path)  # metadata edits keep the hash


def test_package_previews_load_the_packages_lora_file_and_it_has_one_workflow(tiny_models, loras, tmp_path):
    from animad.select.package import PreviewCell, Review, write_review_package

    rows = [Row("baseline", None, 0.0), Row("e0002", 2, 1.0), Row("e0002@0.8", 2, 0.8)]
    images = render(tiny_models, tmp_path / "render", loras, rows, PROMPTS[:1], SEEDS[:1])
    analysis = {"picks": [{"epoch": 2, "kind": "lowest", "reason": "lowest loss"}], "epochs": [1, 2],
                "losses": [0.5, 0.4], "shortlist": [2]}
    review = Review(job_name="ds", trigger="@demo", analysis=analysis, curve_source="eval", train_losses={},
                    lora_files={2: loras[2]}, prompts=PROMPTS[:1], seeds=SEEDS[:1], rows=[r.key for r in rows],
                    row_labels={}, cells=[PreviewCell(key, index, path) for (key, index), path in images.items()],
                    warnings=[], settings=SETTINGS, stopped_reason="finished")
    package = write_review_package(tmp_path / "outbox" / "ds", review)
    summary = json.loads((package / "summary.json").read_text())
    (pick,) = summary["shortlist"]
    assert pick["file"] == "ds-e0002-lowest.safetensors" and (package / pick["file"]).is_file()
    for entry in summary["previews"]:
        copied = package / entry["file"]
        recipe = comfyui.read_recipe(json.loads(comfyui.read_png_chunks(copied)["prompt"]))
        assert recipe.lora_name == (None if entry["row"] == "baseline" else pick["file"])
        assert np.array_equal(pixels(copied), pixels(images[(entry["row"], entry["prompt"] - 1)]))
        workflow = json.loads(comfyui.read_png_chunks(copied)["workflow"])
        names = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "LoraLoaderModelOnly"]
        assert names == ([] if entry["row"] == "baseline" else [pick["file"]])
        if recipe.lora_name:  # the A1111 text names the package's file too, with the file's hash
            assert f"<lora:ds-e0002-lowest:{recipe.lora_strength:g}>" in comfyui.read_png_chunks(copied)["parameters"]
            assert comfyui.lora_file_hash(package / pick["file"])[:12] in comfyui.read_png_chunks(copied)["parameters"]
    assert summary["comfyui_workflow"] == "comfyui-workflow.json" and "comfyui-workflow.json" in summary["files"]
    workflow = json.loads((package / "comfyui-workflow.json").read_text())
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    lora = next(n for n in workflow["nodes"] if n["type"] == "LoraLoaderModelOnly")
    assert lora["widgets_values"] == [pick["file"], 1.0] and sampler["widgets_values"][0] == SEEDS[0]
