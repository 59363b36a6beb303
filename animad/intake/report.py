"""The dataset report: what a careful trainer looks at before a run, from the scanned dataset.

Duplicates (exact and perceptual), images below the training resolution, the tag table, caption
style, the step counts, a VRAM estimate and the learning rate. Warnings go into the check's
problems (so into ERRORS.txt and report.json too) and never block a job; notes and the summary
figures are for reading. The same report is written as dataset-report.json into the job folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

from animad.config.job import JobConfig, resolve_batch_size
from animad.config.problems import Problems
from animad.intake.buckets import TRANSPARENT_BACKGROUND_NAME, bucket_for, target_area
from animad.intake.dataset import Dataset, split_tags, subset_key, subset_label, subset_settings
from animad.intake.imagehash import NEAR_BITS, near_groups
from animad.safe_text import safe

SMALL_SHARE = 0.9  # an image is "below the training resolution" with under 90% of the training area's pixels
COMMON_SHARE = 0.9  # tags on at least 90% of the images are learned into the trigger
TAG_TABLE_MIN_IMAGES = 10  # shares of fewer captions say nothing (on 3 images every tag is on 33%+)
TOP_TAGS = 10
SHOWN = 8  # file names listed in one line before "and N more"
# Learning rates that are almost certainly typos. Prodigy's lr multiplies the step size it adapts
# itself (1.0 is its authors' value for every network): 1e-4 there, copied from an AdamW guide,
# barely trains. For AdamW-style optimizers the guides use 1e-4 to 1e-3; above 1e-2 a LoRA blows up
# within a few hundred steps, and under 1e-6 it does not move in a night.
PRODIGY_LR = (0.1, 10.0)
ADAM_LR = (1e-6, 1e-2)
COMMON_CARDS_GB = (8, 12, 16, 24)
ACTIVATION_ERROR = 0.25  # animad.anima.memory's error bar on the activations (the fixed parts are within 2%)


@dataclasses.dataclass
class Finding:
    kind: str
    severity: str  # "warning" (also a problem of the check) or "note"
    message: str
    files: list[str] = dataclasses.field(default_factory=list)
    fix: str = ""
    file: str = "job.yaml"  # where the problem line points: job.yaml or an image
    where: str = ""  # the job.yaml key it is about, if any


@dataclasses.dataclass
class DatasetReport:
    findings: list[Finding]
    summary: dict[str, str]

    def to_json(self) -> dict:
        return {"findings": [{"kind": f.kind, "severity": f.severity, "message": f.message, "files": f.files,
                              "fix": f.fix} for f in self.findings],
                "summary": dict(self.summary)}

    def add_warnings_to(self, problems: Problems) -> None:
        for finding in self.findings:
            if finding.severity == "warning":
                problems.warning(finding.file, finding.where, finding.message, finding.fix)

    def render(self) -> str:
        """The summary table and the notes; the warnings are printed with the check's other problems."""
        # Tags, subset and file names come from the user: printed through safe(), as Problem.line does.
        summary = {safe(label): safe(value) for label, value in self.summary.items()}
        width = max(map(len, summary), default=0)
        lines = ["Dataset report", "--------------"]
        lines += [f"  {label.ljust(width)}  {value}" for label, value in summary.items()]
        for finding in self.findings:
            if finding.severity == "note":
                lines.append(f"NOTE {safe(finding.message)}")
                if finding.fix:
                    lines.append(f"    -> {safe(finding.fix)}")
        return "\n".join(lines) + "\n"


def shown(names: list[str], limit: int = SHOWN) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def build_report(config: JobConfig, dataset: Dataset, *, gpus: int = 1, gpu_bytes: int | None = None) -> DatasetReport:
    """Everything below, for a scanned dataset with at least one image. gpu_bytes: the memory of the
    GPU training will use, when this machine has it (else the estimate is set against common cards)."""
    findings: list[Finding] = []
    summary: dict[str, str] = {}
    findings += duplicates(dataset)
    findings += small_images(config, dataset)
    findings += transparency(dataset)
    findings += caption_styles(config, dataset)
    step_counts(config, dataset, gpus, summary)
    tag_table(config, dataset, findings, summary)
    memory_estimate(config, dataset, gpu_bytes, findings, summary)
    findings += learning_rates(config)
    return DatasetReport(findings, summary)


def duplicates(dataset: Dataset) -> list[Finding]:
    """Byte-identical files (sha256), then pictures whose perceptual hashes are within NEAR_BITS."""
    findings = []
    by_digest: dict[str, list[str]] = {}
    for item in dataset.items:
        by_digest.setdefault(item.sha256, []).append(item.rel)
    for files in by_digest.values():
        if len(files) > 1:
            findings.append(Finding("exact_duplicate", "warning", f"the same file as {shown(files[1:])}: the "
                                    f"picture trains {len(files)} times as often as the others", files,
                                    "delete the extra copies, unless the weighting is meant (repeats do it openly)",
                                    file=files[0]))
    for group in near_groups([item.phash for item in dataset.items], [item.colours for item in dataset.items]):
        items = [dataset.items[i] for i in group]
        if len({item.sha256 for item in items}) == 1:
            continue  # byte-identical, reported above
        files = [item.rel for item in items]
        findings.append(Finding("near_duplicate", "warning", f"looks like {shown(files[1:])} (perceptual hash "
                                f"within {NEAR_BITS} of 64 bits: the same picture resized, re-encoded or lightly "
                                "edited)", files, "keep the best copy, unless they are meant as variations",
                                file=files[0]))
    return findings


def small_images(config: JobConfig, dataset: Dataset) -> list[Finding]:
    data = config.data
    area = target_area(data.resolution)
    side = f"{data.resolution[0]}x{data.resolution[1]}" if isinstance(data.resolution, list) else \
        f"{data.resolution}x{data.resolution}"
    # Smallest first: the one 512x512 image among 768x1024 ones is the one to replace, so it must not
    # hide in "and 9 more"; those under half the training pixels are named first, on their own.
    small = sorted((item for item in dataset.items if item.width * item.height < SMALL_SHARE * area),
                   key=lambda item: (item.width * item.height, item.rel))
    if not small:
        return []

    def names(items) -> str:
        buckets = [bucket_for(item.width, item.height, data) for item in items]
        return shown([f"{item.rel} ({item.width}x{item.height} -> {width}x{height})"
                      for item, (width, height) in zip(items, buckets)])

    far = [item for item in small if item.width * item.height < area / 2]
    near = small[len(far):]
    if far and near:
        listed = f"{len(far)} under half of them: {names(far)}; the other {len(near)}: {names(near)}"
    elif far:
        listed = f"all under half of them, smallest first: {names(far)}"
    else:
        listed = f"smallest first: {names(near)}"
    if not data.buckets:
        fate = f"With buckets off they are upscaled to {side} (an upscaled image teaches blur)"
    elif data.upscale:
        fate = "With data.upscale on they are upscaled to the training area (an upscaled image teaches blur)"
    else:
        under = [item for item in small if min(item.width, item.height) < data.min_bucket]
        fate = "With data.upscale off they train in smaller buckets at about their own size"
        if under:
            fate += f"; {len(under)} with a side under min_bucket {data.min_bucket} are upscaled to that bucket"
    return [Finding("small_image", "warning", f"{len(small)} of {len(dataset.items)} images have fewer pixels than "
                    f"the training resolution {side} (image -> bucket); {listed}. {fate}",
                    [item.rel for item in small], "use larger sources if you have them; otherwise this is fine",
                    where="data.resolution")]


def transparency(dataset: Dataset) -> list[Finding]:
    """Once per dataset: images with transparent pixels in subsets that do not use them as a mask."""
    files = [item.rel for item in dataset.items
             if item.transparent and not dataset.subsets[item.subset].alpha_mask]
    if not files:
        return []
    return [Finding("transparency", "warning", f"{len(files)} image(s) have transparent pixels and alpha_mask is "
                    f"off: they train composited on {TRANSPARENT_BACKGROUND_NAME} (as taggers see them): "
                    f"{shown(files)}", files, "set data.alpha_mask: true to leave the transparent parts out of "
                    "the loss instead, or flatten them yourself onto the background you want",
                    where="data.alpha_mask")]


def caption_styles(config: JobConfig, dataset: Dataset) -> list[Finding]:
    """One line per natural-language subset: what it changed, or that the user's own setting wins."""
    findings = []
    for index, subset in enumerate(dataset.subsets):
        if not subset.natural_language:
            continue
        key, label = subset_key(subset), subset_label(subset)
        files = [item.rel for item in dataset.items if item.subset == index]
        default = subset_settings(config, subset.name)  # what tags would have got
        if subset.shuffle_captions or subset.tag_dropout:
            what = "shuffle_captions is on" if subset.shuffle_captions else f"tag_dropout is {subset.tag_dropout}"
            findings.append(Finding("natural_language", "warning", f"subset '{label}' has natural-language captions, "
                                    f"but data.subsets.{key} sets {what}: commas will cut sentences apart",
                                    files, f"remove it from data.subsets.{key} unless this is meant",
                                    where=f"data.subsets.{key}"))
        elif default.shuffle_captions or default.tag_dropout:
            findings.append(Finding("natural_language", "note", f"subset '{label}' has natural-language captions: "
                                    "tag shuffling and tag dropout are off for it, as the guide advises "
                                    "(shuffling at commas cuts sentences apart)", files,
                                    f"to shuffle anyway, set data.subsets.{key}.shuffle_captions: true",
                                    where=f"data.subsets.{key}"))
        else:
            findings.append(Finding("natural_language", "note", f"subset '{label}' has natural-language captions "
                                    "(they train as written)", files, where=f"data.subsets.{key}"))
    return findings


def tag_table(config: JobConfig, dataset: Dataset, findings: list[Finding], summary: dict[str, str]) -> None:
    """Tag frequencies over the tag-style captions: the top tags, near-universal ones, one-image ones."""
    tagged = [item for item in dataset.items
              if item.has_caption_file and not dataset.subsets[item.subset].natural_language]
    trigger = config.trigger
    counts: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    for item in tagged:
        for tag in dict.fromkeys(split_tags(item.caption)):  # a tag counts once per image
            counts[tag] += 1
            first_seen.setdefault(tag, item.rel)
    positions = trigger_positions(trigger, tagged)
    if positions:
        summary["trigger position"] = positions
    if not counts:
        return
    top = [(tag, n) for tag, n in counts.most_common() if tag != trigger][:TOP_TAGS]
    summary["top tags"] = ", ".join(f"{tag} {n}" for tag, n in top)
    summary["distinct tags"] = str(len(counts))
    if len(tagged) < TAG_TABLE_MIN_IMAGES:
        return
    common = [(tag, n) for tag, n in counts.most_common() if tag != trigger and n >= COMMON_SHARE * len(tagged)]
    if common:
        listed = ", ".join(f"{tag} ({100 * n // len(tagged)}%)" for tag, n in common)
        findings.append(Finding("common_tags", "note", f"on at least {COMMON_SHARE:.0%} of the images: {listed}. "
                                "The trigger will absorb them: the LoRA then draws them without being asked",
                                [], "remove them from the captions if they are the subject; keep them tagged on "
                                "only some images if they should stay promptable"))
    once = sorted(tag for tag, n in counts.items() if n == 1)
    if once:
        listed = [f"{tag} ({first_seen[tag]})" for tag in once]
        findings.append(Finding("rare_tags", "note", f"{len(once)} tag(s) on exactly one image: {shown(listed, 12)}. "
                                "One example is too few to learn a tag from", sorted({first_seen[t] for t in once}),
                                "fix typos and merge synonyms; drop tags that do not matter"))


def trigger_positions(trigger: str | None, tagged) -> str:
    if not tagged:
        return ""
    if not trigger:
        firsts = Counter((split_tags(item.caption) or [""])[0] for item in tagged)
        tag, n = firsts.most_common(1)[0]
        return f"no trigger set in job.yaml; the most common first tag is '{tag}' ({n} of {len(tagged)})"
    where = Counter()
    for item in tagged:
        tags = split_tags(item.caption)
        where[tags.index(trigger) + 1 if trigger in tags else 0] += 1
    parts = [f"first in {where.pop(1, 0)} of {len(tagged)}"]
    missing = where.pop(0, 0)
    parts += [f"at position {position} in {n}" for position, n in sorted(where.items())]
    if missing:
        parts.append(f"missing in {missing}")
    return f"'{trigger}': " + "; ".join(parts)


def step_counts(config: JobConfig, dataset: Dataset, gpus: int, summary: dict[str, str]) -> None:
    """The figures guides reason in, computed as train/loop.py's plan_sizes does (batches never mix
    buckets, so each bucket's samples round up to whole batches on their own)."""
    data = config.data
    batch = resolve_batch_size(data.batch_size, len(dataset.items))
    per_subset = Counter(item.subset for item in dataset.items)
    summary["images"] = f"{len(dataset.items)} in {len(dataset.subsets)} subset(s)"
    for index, subset in enumerate(dataset.subsets):
        count = per_subset[index]
        summary[f"subset {subset_label(subset)}"] = (f"{count} image(s) x {subset.repeats} repeat(s) = "
                                                   f"{count * subset.repeats} samples")
    samples: Counter[tuple[int, int]] = Counter()
    for item in dataset.items:
        samples[bucket_for(item.width, item.height, data)] += dataset.subsets[item.subset].repeats
    batches = sum(math.ceil(n / batch) for n in samples.values())
    per_step = data.grad_accum * gpus
    steps = math.ceil(batches / per_step)
    summary["samples per epoch"] = str(dataset.samples_per_epoch())
    auto = " (auto)" if data.batch_size == "auto" else ""
    summary["effective batch"] = (f"{batch * per_step} images per optimizer step (batch {batch}{auto} x "
                                  f"grad_accum {data.grad_accum} x {gpus} GPU(s))")
    summary["buckets"] = f"{len(samples)} size(s); {batches} batches per epoch"
    summary["steps per epoch"] = str(steps)
    schedule = config.schedule
    total = schedule.max_steps or steps * schedule.max_epochs
    limit = f"max_steps {schedule.max_steps}" if schedule.max_steps else f"max_epochs {schedule.max_epochs}"
    floor = "; stop_at_floor usually ends far earlier" if config.selection.stop_at_floor else ""
    summary["total steps"] = f"{total} (to {limit}{floor})"


def memory_estimate(config: JobConfig, dataset: Dataset, gpu_bytes: int | None, findings: list[Finding],
                    summary: dict[str, str]) -> None:
    """Peak training memory at the largest bucket, from animad.anima.memory's model of the DiT: what
    precision.vram: auto would pick on this GPU (or on the common cards when there is none), or the
    configured settings with vram: off."""
    from animad.anima.memory import default_config, training_memory
    from animad.config.vram import pick

    depth = default_config().depth
    data = config.data
    width, height = max((bucket_for(i.width, i.height, data) for i in dataset.items), key=lambda s: s[0] * s[1])
    batch = resolve_batch_size(data.batch_size, len(dataset.items))
    live_text = (any(s.shuffle_captions or s.tag_dropout > 0 for s in dataset.subsets)
                 or config.network.train_text_encoder or not config.precision.cache_text)
    # The model is the released Anima's (a tiny test model set needs far less).
    where = f"for Anima at the largest bucket {width}x{height}, batch {batch}"
    net = config.network
    shape = dict(width=width, height=height, batch=batch, rank=net.dim, optimizer=config.optimizer.type,
                 kind=net.type, factor=net.factor)

    def fitted(budget: int):
        return pick(budget, **shape, text_encoder_live=live_text,
                    text_encoder_trains=config.network.train_text_encoder)

    if config.precision.vram == "auto":
        if gpu_bytes:
            plan = fitted(gpu_bytes)
            summary["VRAM estimate"] = f"{need_text(plan.estimate)} {where} on this GPU's {gpu_bytes / 1e9:.1f} GB " \
                                       f"with vram: auto: {plan.describe(depth)}"
            summary["VRAM by part"] = "; ".join(plan.estimate.lines())
            if not plan.fits:
                findings.append(Finding("vram", "warning", f"even with every memory saving, training needs about "
                                        f"{need_text(plan.estimate)} of GPU memory {where}; this GPU has "
                                        f"{gpu_bytes / 1e9:.1f} GB", [], "lower data.batch_size or data.resolution",
                                        where="data.batch_size"))
            return
        # No GPU here: what auto picks on each common card (a card sold as "8 GB" holds 8 GiB).
        plans = [(gb, fitted(gb * 2 ** 30)) for gb in COMMON_CARDS_GB]
        summary["VRAM estimate"] = f"{where}, vram: auto (no GPU here): " + "; ".join(
            f"{gb} GB: {plan.describe(depth)} ({plan.estimate.total / 1e9:.1f} GB)" if plan.fits
            else f"{gb} GB: does not fit" for gb, plan in plans)
        summary["VRAM by part"] = "; ".join(plans[0][1].estimate.lines())
        return
    every = int(config.precision.gradient_checkpointing)  # false 0, true 1 (every block), k every k-th
    estimate = training_memory(width, height, batch, checkpoint_every=every, rank=net.dim,
                               optimizer=config.optimizer.type, text_encoder_on_gpu=live_text, kind=net.type,
                               factor=net.factor)
    need = need_text(estimate)
    if gpu_bytes:
        fits = "fits" if estimate.total <= gpu_bytes else "does NOT fit"
        summary["VRAM estimate"] = f"{need} {where}: {fits} this GPU's {gpu_bytes / 1e9:.1f} GB"
        if estimate.total > gpu_bytes:
            findings.append(Finding("vram", "warning", f"training needs about {need} of GPU memory {where}; this "
                                    f"GPU has {gpu_bytes / 1e9:.1f} GB", [], "set precision.vram: auto (it picks "
                                    "the memory savings), or lower data.batch_size or data.resolution",
                                    where="precision.vram"))
    else:
        cards = [f"{gb} GB" for gb in COMMON_CARDS_GB if estimate.total <= gb * 2 ** 30]
        fits = f"fits {', '.join(cards)} cards" if cards else "fits none of the common 8-24 GB cards"
        summary["VRAM estimate"] = f"{need} {where}: {fits} (no GPU here to compare with)"
    summary["VRAM by part"] = "; ".join(estimate.lines())


def need_text(estimate) -> str:
    """E.g. "12.1 GB (10.2-14.0)": GB as animad.anima.memory counts them (1e9 bytes), with its error bar."""
    need = f"{estimate.total / 1e9:.1f} GB"
    spread = estimate.activations * ACTIVATION_ERROR
    if spread >= 0.05e9:
        need += f" ({(estimate.total - spread) / 1e9:.1f}-{(estimate.total + spread) / 1e9:.1f})"
    return need


def learning_rates(config: JobConfig) -> list[Finding]:
    optimizer = config.optimizer
    low, high = PRODIGY_LR if optimizer.type == "prodigy" else ADAM_LR
    findings = []
    for key, value in (("optimizer.lr", optimizer.lr), ("optimizer.text_encoder_lr", optimizer.text_encoder_lr)):
        if value is None or low <= value <= high:
            continue
        if optimizer.type == "prodigy":
            why = (f"Prodigy's lr multiplies the step size it finds itself; 1.0 is the intended value, so {value:g} "
                   f"makes every step {value:g} times that" if value else "0 never moves the weights")
            fix = "leave lr out (1.0), and steer Prodigy with optimizer.d_coef (0.5 or 0.1 for smaller steps)"
        elif value > high:
            why = (f"{value:g} is far above the 1e-4 to 1e-3 the guides use for {optimizer.type} "
                   "(typed 1 instead of 0.1?)")
            fix = "use 1e-4 (the guide's AdamW8bit runs), or leave lr out"
        else:
            why = f"{value:g} is so low the LoRA will barely move in a night"
            fix = "use 1e-4 (the guide's AdamW8bit runs), or leave lr out"
        findings.append(Finding("learning_rate", "warning", why, [], fix, where=key))
    return findings
