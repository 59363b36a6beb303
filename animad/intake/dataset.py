"""Scan a dataset folder: images, captions and subsets, with every problem recorded (not raised).

A dataset folder holds images (png, jpg/jpeg, webp) with `<stem>.txt` captions, and job.yaml.
Every folder that holds images is a subset; a kohya-style `10_name` folder means 10 repeats. Per-subset
settings come from `data.subsets.<folder>` in job.yaml, falling back to the `data` defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import stat
import warnings
from pathlib import Path

from PIL import Image

from animad.config.job import JobConfig, SubsetConfig, auto_batch_size
from animad.config.problems import Problems
from animad.intake.imagehash import fingerprint

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
FORMAT_EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAX_PIXELS = 64_000_000  # 8K x 8K; larger files are almost always a mistake or a decompression bomb
# animad import's report and the job.yaml it drafts when the folder cannot train yet (the daemon takes
# a folder only once it holds job.yaml): ours, never read as a caption or an image.
IMPORT_REPORT, JOB_DRAFT = "IMPORT.txt", "job.draft.yaml"
OWN_FILES = {"job.yaml", "ERRORS.txt", "README.md", "README.txt", "WARNINGS.txt", IMPORT_REPORT, JOB_DRAFT}
REPEATS_PREFIX = re.compile(r"^(\d+)_(.+)$")
ROOT_KEY = "."  # how data.subsets names the images directly in the dataset folder (ss_tag_frequency's name too)

# Natural-language captions. A caption reads as a sentence when it has at least 6 words, at least 4
# words per comma-separated piece (booru tags average under 2: "long hair, looking at viewer") and at
# least 20% of its words are English function words (a, the, with, on ...). A subset reads as
# natural language when at least half of its caption files do. Tags followed by one sentence stay
# tags (the many short pieces win). Non-English sentences are not recognised (no ASCII words).
SENTENCE_WORDS = 6
SENTENCE_WORDS_PER_PIECE = 4
SENTENCE_STOP_SHARE = 0.2
NATURAL_SUBSET_SHARE = 0.5
STOP_WORDS = frozenset(
    "a an the and or but of in on at to with without from by for as into onto over under behind near "
    "is are was were be has have her his their its she he they it this that there while who which".split())
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclasses.dataclass(frozen=True)
class Subset:
    name: str  # folder relative to the dataset root, posix style; "" is the root
    repeats: int
    keep_tokens: int
    class_tokens: str | None
    shuffle_captions: bool
    tag_dropout: float
    caption_dropout: float
    flip: bool
    alpha_mask: bool
    natural_language: bool = False  # its captions read as sentences (shuffle and tag dropout then default off)


@dataclasses.dataclass(frozen=True)
class Item:
    rel: str  # image path relative to the dataset root, posix style
    caption: str
    has_caption_file: bool
    subset: int  # index into Dataset.subsets
    width: int
    height: int
    has_alpha: bool
    sha256: str
    transparent: bool = False  # some pixel is not fully opaque (has_alpha only says there is a channel)
    phash: int | None = None  # perceptual hash, for near-duplicates (see intake/imagehash.py)
    colours: bytes | None = None  # colour thumbnail, for the same


@dataclasses.dataclass
class Dataset:
    root: Path
    subsets: list[Subset]
    items: list[Item]

    def path(self, item: Item) -> Path:
        return self.root / item.rel

    def samples_per_epoch(self) -> int:
        return sum(self.subsets[i.subset].repeats for i in self.items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """Per-subset tag counts, as sd-scripts writes into ss_tag_frequency."""
        out: dict[str, dict[str, int]] = {}
        for item in self.items:
            counts = out.setdefault(self.subsets[item.subset].name or ".", {})
            for tag in split_tags(item.caption):
                counts[tag] = counts.get(tag, 0) + 1
        return out


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def is_sentence(caption: str) -> bool:
    """Whether a caption reads as natural language rather than tags (the rule is above STOP_WORDS)."""
    words = WORD.findall(caption.lower())
    if len(words) < SENTENCE_WORDS:
        return False
    pieces = max(1, len(split_tags(caption)))
    stop_share = sum(word in STOP_WORDS for word in words) / len(words)
    return len(words) / pieces >= SENTENCE_WORDS_PER_PIECE and stop_share >= SENTENCE_STOP_SHARE


def subset_override(config: JobConfig, folder: str) -> SubsetConfig:
    """The data.subsets entry for a folder: by its path, its last part, or '.' for the root."""
    subsets = config.data.subsets
    leaf = folder.rsplit("/", 1)[-1]
    found = subsets.get(folder) or subsets.get(leaf) or (subsets.get(ROOT_KEY) if folder == "" else None)
    return found or SubsetConfig()


def subset_key(subset: Subset) -> str:
    return subset.name or ROOT_KEY


def subset_label(subset: Subset) -> str:
    """The subset as a person reads it: its folder, or "(top folder)" for images directly in the dataset
    folder ("." is only the key data.subsets needs)."""
    return subset.name or "(top folder)"


def subset_settings(config: JobConfig, folder: str) -> Subset:
    """Merge data defaults, a 'N_name' repeats prefix and data.subsets overrides for one folder."""
    data = config.data
    leaf = folder.rsplit("/", 1)[-1]
    override = subset_override(config, folder)
    repeats = data.repeats
    match = REPEATS_PREFIX.match(leaf)
    if match:
        repeats = int(match.group(1))

    def pick(key, default):
        value = getattr(override, key)
        return default if value is None else value

    return Subset(
        name=folder,
        repeats=pick("repeats", repeats),
        keep_tokens=pick("keep_tokens", data.keep_tokens),
        class_tokens=pick("class_tokens", None),
        shuffle_captions=pick("shuffle_captions", data.shuffle_captions),
        tag_dropout=pick("tag_dropout", data.tag_dropout),
        caption_dropout=pick("caption_dropout", data.caption_dropout),
        flip=pick("flip", data.flip),
        alpha_mask=pick("alpha_mask", data.alpha_mask),
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def links_outside(path: Path, root: Path) -> bool:
    """True for a symlink that leaves the dataset folder. Checked BEFORE a file is opened: a job.yaml
    or caption linked to ~/.aws/credentials must not be read, or its values would reach the report."""
    return path.is_symlink() and not _inside(path, root)


def _regular_file(path: Path, rel: str, problems: Problems) -> bool:
    """False (with an error) for pipes, sockets, devices and broken links: reading a pipe would hang
    validation, and with it the daemon, forever."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        problems.error(rel, "", f"cannot read this file ({error.strerror}; a broken link?)",
                       "replace it with the real file, or remove it")
        return False
    if not stat.S_ISREG(mode):
        problems.error(rel, "", "not a regular file (a pipe, socket or device)", "remove it from the folder")
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    has_alpha: bool
    transparent: bool
    sha256: str
    phash: int
    colours: bytes


def inspect_image(path: Path, rel: str, problems: Problems) -> ImageInfo | None:
    """Decode an image fully; return what the scan keeps of it, or None after recording why not."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        problems.error(rel, "", f"cannot read image: {error.strerror}", "check the file's permissions")
        return None
    expected = IMAGE_FORMATS[path.suffix.lower()]
    previous_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                actual = image.format
                width, height = image.size
                image.load()  # decodes every pixel, so a truncated file fails here and not at 3 a.m.
                has_alpha = image.mode in ("RGBA", "LA", "PA") or (
                    image.mode == "P" and "transparency" in image.info)
                # While the pixels are decoded anyway (one pass more each, not a second decode): whether
                # anything is see-through (an alpha channel, a palette entry or an RGB colour key, all
                # of which train/buckets.py composites), and the near-duplicate fingerprint.
                alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else \
                    image.convert("RGBA").getchannel("A") if has_alpha or "transparency" in image.info else None
                transparent = alpha is not None and alpha.getextrema()[0] < 255
                perceptual, colours = fingerprint(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        problems.error(rel, "", f"image is larger than {MAX_PIXELS // 1_000_000} megapixels "
                       "(or claims to be: a decompression bomb)", "downscale it to at most 4096 px per side")
        return None
    except Image.UnidentifiedImageError:
        problems.error(rel, "", "not an image that can be decoded (corrupt, or not an image at all)",
                       "re-export the image, or remove it from the folder")
        return None
    except (OSError, SyntaxError, ValueError) as error:
        problems.error(rel, "", f"image is truncated or corrupt ({error})",
                       "re-copy or re-export the image, or remove it")
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    if actual != expected:
        right = FORMAT_EXTENSION.get(actual, f".{str(actual).lower()}")
        problems.error(rel, "", f"the file is {actual} data but is named {path.suffix}",
                       f"rename it to {Path(rel).stem}{right} (or re-save it as {expected})")
        return None
    return ImageInfo(width, height, has_alpha, transparent, hashlib.sha256(raw).hexdigest(), perceptual, colours)


def read_caption(path: Path, rel: str, problems: Problems) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError as error:
        problems.error(rel, "", f"cannot read caption: {error.strerror}", "check the file's permissions")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        problems.error(rel, f"byte {error.start}", "caption is not UTF-8 text",
                       "re-save the caption as UTF-8 (most editors offer 'Save with encoding')")
        return None
    # Multi-line captions become one comma-separated line, which is what taggers mean by them.
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return ", ".join(lines)


def scan_dataset(root: Path, config: JobConfig, problems: Problems, *, caption_defaults: bool = True) -> Dataset:
    """Walk the dataset folder and return every usable image; problems record everything else.

    caption_defaults=False reads a frozen job's resolved config as it is: intake already wrote its
    caption-style decision into it (and a job frozen before that rule existed trains as it began).
    """
    root = Path(root)
    ext = config.data.caption_extension
    subsets: dict[str, int] = {}
    subset_list: list[Subset] = []
    items: list[Item] = []
    images_seen: set[str] = set()
    caption_files: set[str] = set()
    all_files = sorted(p for p in root.rglob("*") if p.name not in (".", ".."))
    for path in all_files:
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue  # hidden files and our own temp files
        if links_outside(path, root):
            problems.error(rel, "", "symlink points outside the dataset folder",
                           "copy the file into the folder instead of linking to it")
            continue
        if path.is_dir():
            continue
        if not _regular_file(path, rel, problems):
            continue
        if rel in OWN_FILES or path.name in OWN_FILES and path.parent == root:
            continue
        suffix = path.suffix.lower()
        if suffix == ext.lower():
            caption_files.add(rel)
            continue
        if suffix not in IMAGE_FORMATS:
            problems.warning(rel, "", "not an image or caption; ignored", "remove it if it was not meant to be here")
            continue
        images_seen.add(Path(rel).with_suffix("").as_posix())
        folder = Path(rel).parent.as_posix()
        folder = "" if folder == "." else folder
        info = inspect_image(path, rel, problems)
        if info is None:
            continue
        width, height, has_alpha = info.width, info.height, info.has_alpha
        if folder not in subsets:
            subsets[folder] = len(subset_list)
            subset_list.append(subset_settings(config, folder))
        subset = subset_list[subsets[folder]]
        caption_path = path.with_suffix(ext)
        caption_rel = caption_path.relative_to(root).as_posix()
        if links_outside(caption_path, root):
            continue  # refused unread; the walk reports it under the caption's own name
        if caption_path.is_file():
            caption = read_caption(caption_path, caption_rel, problems)
            if caption is None:
                continue
            has_caption = True
        else:
            caption, has_caption = subset.class_tokens or "", False
            fix = (f"write {caption_rel}" if not subset.class_tokens else "")
            if not subset.class_tokens:
                problems.warning(rel, "", f"no caption file ({Path(caption_rel).name}); trained with an empty caption",
                                 fix or "this is fine if intended")
        if has_alpha is False and subset.alpha_mask:
            problems.warning(rel, "", "alpha_mask is on but the image has no alpha channel; the whole image counts",
                             "save it as a PNG with transparency, or ignore this")
        items.append(Item(rel, caption, has_caption, subsets[folder], width, height, has_alpha, info.sha256,
                          info.transparent, info.phash, info.colours))
    for caption_rel in sorted(caption_files):
        if Path(caption_rel).with_suffix("").as_posix() not in images_seen:
            problems.warning(caption_rel, "", "caption without an image; ignored",
                             "check the image's file name matches the caption's")
    if caption_defaults:
        subset_list = [caption_style(config, subset, index, items) for index, subset in enumerate(subset_list)]
    dataset = Dataset(root, subset_list, items)
    check_dataset(dataset, config, problems)
    return dataset


def caption_style(config: JobConfig, subset: Subset, index: int, items: list[Item]) -> Subset:
    """The subset with natural_language set from its captions; for such a subset, shuffling and tag
    dropout default to off (the guide: shuffling cuts sentences apart at their commas). What the
    user wrote under data.subsets.<name> still wins; job.resolved.yaml then records the outcome."""
    captions = [item.caption for item in items if item.subset == index and item.has_caption_file]
    if not captions or sum(map(is_sentence, captions)) < NATURAL_SUBSET_SHARE * len(captions):
        return subset
    override = subset_override(config, subset.name)
    return dataclasses.replace(
        subset, natural_language=True,
        shuffle_captions=False if override.shuffle_captions is None else override.shuffle_captions,
        tag_dropout=0.0 if override.tag_dropout is None else override.tag_dropout)


def check_dataset(dataset: Dataset, config: JobConfig, problems: Problems) -> None:
    """Checks over the whole dataset: emptiness, trigger word, batch size."""
    if not dataset.items:
        problems.error(str(dataset.root), "", "no usable images found",
                       "put .png/.jpg/.webp images (with .txt captions) into the folder or its subfolders")
        return
    trigger = config.trigger
    if trigger:
        missing = [i.rel for i in dataset.items
                   if (split_tags(i.caption) or [""])[0] != trigger]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            problems.warning("job.yaml", "trigger", f"'{trigger}' is not the first tag in {len(missing)} of "
                             f"{len(dataset.items)} captions: {shown}",
                             f"start those captions with '{trigger}, ' (keep_tokens keeps it first)")
    # The guides' rule is batch <= 10% of the images; `auto` follows it by construction, so only a
    # number the user wrote can break it.
    count, batch = len(dataset.items), config.data.batch_size
    if batch != "auto" and batch > max(1, count // 10) and batch > 1:
        problems.warning("job.yaml", "data.batch_size", f"batch size {batch} is over 10% of the {count} images",
                         f"use 'auto' (here {auto_batch_size(count)}): a smaller batch trains a small dataset better")
