"""The preview prompts: by default six, in the guide's three kinds, built from the dataset's own captions.

The kinds test different things (the guide's "does it reproduce, does it need the trigger, does it
generalise"):
- `caption`: two different, typical dataset captions, as trained: does the LoRA reproduce its data?
- `no_trigger`: the first of them without the trigger word: how much does the trigger carry?
- `novel`: three scenes the dataset does not show, each changing one thing (the setting, the
  clothing, the action) while keeping the subject: does it generalise?
User prompts (`user`) are added to these or replace them (previews.prompts_mode).

Captions come in two styles and each gets its own novel prompts. Tag captions (`@trig, 1girl, long
hair, ...`): the subject is the trigger plus the identity tags on most images (not their setting,
framing, pose, expression or clothing, which a scene replaces), and a scene adds a hand-written,
consistent set of tags. Natural-language captions (`A photo of @trig, a brown dog, lying on a
porch.`): the subject is the caption's opening noun phrase, and a scene continues it in words.
Everything here is deterministic: the same captions always give the same prompts.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from animad.errors import UserError
from animad.intake.dataset import split_tags

CAPTION, NO_TRIGGER, NOVEL, USER = "caption", "no_trigger", "novel", "user"
KIND_LABELS = {CAPTION: "dataset caption", NO_TRIGGER: "caption without the trigger", NOVEL: "novel scene",
               USER: "your prompt"}
SHORT_LABELS = {CAPTION: "caption", NO_TRIGGER: "no trigger", NOVEL: "novel", USER: "yours"}  # sheet headings
DEFAULT_COUNT = 6  # the guide asks for 5-10 prompts; 6 = 2 captions + 1 without the trigger + 3 novel scenes


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    kind: str  # CAPTION, NO_TRIGGER, NOVEL or USER
    note: str = ""  # what a novel scene changes ("new setting"), or where a caption came from

    @property
    def label(self) -> str:
        words = KIND_LABELS.get(self.kind, self.kind)
        return f"{words}: {self.note}" if self.note else words

    def to_dict(self) -> dict:
        return {"text": self.text, "kind": self.kind, "label": self.label, "note": self.note,
                "short": SHORT_LABELS.get(self.kind, self.kind)}


@dataclasses.dataclass(frozen=True)
class Scene:
    change: str  # "setting", "clothing" or "action": the one thing it changes about the subject's pictures
    tags: tuple[str, ...]  # for tag captions: consistent with each other (one place, one time, one pose)
    words: str  # for natural-language captions: continues "<subject>, ..."


# Two scenes per change, so one can stand in when the dataset already shows the other. Each is
# written to hold together: no indoors with outdoors, no night with a sunny sky, one pose.
SCENES = (
    Scene("setting", ("outdoors", "city street", "night", "rain", "neon lights"),
          "standing on a city street at night in the rain, lit by neon signs"),
    Scene("clothing", ("winter coat", "scarf", "outdoors", "snow", "upper body"),
          "wearing a winter coat and a scarf, outdoors in falling snow"),
    Scene("action", ("sitting", "indoors", "cafe", "table", "holding cup"),
          "sitting at a table in a cozy cafe, holding a cup of coffee"),
    Scene("setting", ("outdoors", "beach", "ocean", "blue sky", "day"),
          "standing on a sunny beach by the ocean under a blue sky"),
    Scene("clothing", ("kimono", "outdoors", "summer festival", "night", "paper lantern"),
          "wearing a kimono at a summer festival at night, among paper lanterns"),
    Scene("action", ("walking", "outdoors", "park", "cherry blossoms", "from side"),
          "walking through a park under cherry blossoms, seen from the side"),
)
CHANGES = ("setting", "clothing", "action")
CHANGE_NOTES = {"setting": "new setting", "clothing": "new clothing", "action": "new action"}

# What a tag says about a picture rather than about who is in it. A word of the tag decides, so
# "night sky" is a setting and "long sleeves" clothing; a tag about hair, eyes or body is identity
# whatever else it says ("sky blue eyes", "snow-white hair").
IDENTITY_WORDS = {"hair", "eyes", "eye", "skin", "ears", "ear", "tail", "horns", "horn", "wings", "fang", "fangs",
                  "freckles", "mole", "ahoge", "bangs", "twintails", "ponytail", "braid", "pupils", "sidelocks"}
SETTING_WORDS = {"background", "outdoors", "indoors", "sky", "clouds", "cloud", "night", "day", "sunset",
                 "sunrise", "evening", "morning", "street", "city", "cityscape", "room", "bedroom", "classroom",
                 "beach", "ocean", "sea", "forest", "field", "mountain", "snow", "snowing", "rain", "raining",
                 "window", "scenery", "park", "garden", "cafe", "road", "library", "festival", "building", "grass",
                 "table", "bed", "couch", "chair", "lantern", "blossoms"}
CLOTHING_WORDS = {"shirt", "t-shirt", "dress", "skirt", "jacket", "coat", "uniform", "hoodie", "sweater", "pants",
                  "shorts", "jeans", "swimsuit", "bikini", "kimono", "yukata", "thighhighs", "pantyhose", "socks",
                  "shoes", "boots", "gloves", "hat", "cap", "scarf", "necktie", "bowtie", "vest", "apron", "armor",
                  "cape", "cloak", "leotard", "bodysuit", "serafuku", "blazer", "sleeves", "sleeveless", "collar",
                  "clothes", "outfit", "costume", "nude", "naked", "hood", "sandals", "sneakers", "belt"}
POSE_WORDS = {"sitting", "standing", "lying", "walking", "running", "kneeling", "squatting", "jumping", "dancing",
              "holding", "looking", "leaning", "waving", "pointing", "reaching", "smile", "smiling", "grin", "blush",
              "crying", "tears", "laughing", "expressionless", "pout", "angry", "surprised", "wink", "body",
              "shot", "portrait", "close-up", "profile", "from", "arms", "arm", "hand", "hands", "pose", "posing",
              "mouth", "cup"}
# Where a natural-language caption's subject phrase ends and its scene begins (a verb, a place).
SCENE_MARKERS = re.compile(r"\b(is|are|was|sits|sitting|stands|standing|lies|lying|walks|walking|runs|running|"
                           r"holds|holding|wears|wearing|dressed|looks|looking|poses|posing|smiles|smiling|in|on|at|"
                           r"inside|outside|under|near|beside|against|behind|during|while|among)\b", re.IGNORECASE)


def caption_is_tags(caption: str) -> bool:
    """Tags: comma-separated pieces of a few words each, not sentences."""
    pieces = split_tags(caption)
    if not pieces:
        return False
    short = sum(len(piece.split()) <= 4 and not piece.endswith((".", "!", "?")) for piece in pieces)
    return short >= 0.75 * len(pieces)


def captions_are_tags(captions: list[str]) -> bool:
    """The dataset's style: tags when at least half the (non-empty) captions are tags."""
    return sum(caption_is_tags(c) for c in captions) * 2 >= len(captions)


def words_of(caption: str) -> set[str]:
    return {word for word in re.findall(r"[\w@'-]+", caption.lower()) if len(word) > 2}


def pieces_of(caption: str, tags: bool) -> set[str]:
    return set(split_tags(caption)) if tags else words_of(caption)


def typical_captions(captions: list[str], tags: bool) -> list[str]:
    """Distinct captions, most typical first: the highest mean overlap (Jaccard) with all the others."""
    distinct = sorted(set(captions))
    sets = {c: pieces_of(c, tags) for c in distinct}
    counts = Counter(captions)

    def typicality(caption: str) -> float:
        mine = sets[caption]
        total = sum(counts[other] * len(mine & sets[other]) / max(1, len(mine | sets[other]))
                    for other in distinct if other != caption)
        return total + (counts[caption] - 1)  # a caption used many times is typical by itself

    return sorted(distinct, key=lambda c: (-typicality(c), c))


def two_typical(captions: list[str], tags: bool) -> list[str]:
    """The most typical caption and the most typical one that says something else (another set of tags/words)."""
    ranked = typical_captions(captions, tags)
    if not ranked:
        return []
    first = ranked[0]
    second = next((c for c in ranked[1:] if pieces_of(c, tags) != pieces_of(first, tags)), None)
    return [first] + ([second] if second else [])


def without_trigger(caption: str, trigger: str | None, tags: bool) -> str | None:
    """The caption with the trigger taken out; None when it has no trigger to take out."""
    if not trigger or trigger not in caption:
        return None
    if tags:
        kept = [t for t in split_tags(caption) if t != trigger]
        return ", ".join(kept) if len(kept) < len(split_tags(caption)) and kept else None
    text = caption.replace(f"{trigger}, ", "").replace(f", {trigger}", "").replace(trigger, "")
    text = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s{2,}", " ", text)).strip(" ,;")
    return text[:1].upper() + text[1:] if text else None


def tag_category(tag: str) -> str:
    """'setting', 'clothing', 'pose' (pose, framing, expression) or, for anything else, 'identity'."""
    words = set(tag.lower().replace("_", " ").split())
    if words & IDENTITY_WORDS:
        return "identity"
    if words & SETTING_WORDS:
        return "setting"
    if words & CLOTHING_WORDS:
        return "clothing"
    if words & POSE_WORDS:
        return "pose"
    return "identity"  # 1girl, a character's name, a species, quality and style tags: kept as they were trained


def frequent_tags(captions: list[str], order: list[str]) -> list[str]:
    """Tags on more than half the images, in the order the most typical captions first use them."""
    frequency = Counter(tag for caption in captions for tag in set(split_tags(caption)))
    seen: list[str] = []
    for caption in order + captions:
        seen += [tag for tag in split_tags(caption) if tag not in seen]
    return [tag for tag in seen if frequency[tag] * 2 > len(captions)]


def familiarity(scene: Scene, captions: list[str]) -> int:
    """How many captions already mention one of the scene's tags (a novel scene should be new to the LoRA)."""
    lowered = [c.lower() for c in captions]
    return sum(any(re.search(rf"\b{re.escape(tag)}\b", c) for tag in scene.tags) for c in lowered)


def chosen_scenes(captions: list[str], count: int) -> list[Scene]:
    """count scenes: first one per change (the one the dataset shows least), then the stand-ins."""
    by_change = {change: sorted((s for s in SCENES if s.change == change),
                                key=lambda s: (familiarity(s, captions), SCENES.index(s))) for change in CHANGES}
    ordered = [by_change[c][0] for c in CHANGES] + [s for c in CHANGES for s in by_change[c][1:]]
    return ordered[:count]


def tag_scene_prompt(scene: Scene, subject: list[str], outfit: list[str]) -> str:
    """Subject tags, then the outfit unless the scene changes clothing, then the scene's own tags."""
    tags = subject + ([] if scene.change == "clothing" else outfit)
    return ", ".join(tags + [t for t in scene.tags if t not in tags])


def tag_subject(captions: list[str], order: list[str], trigger: str | None) -> tuple[list[str], list[str]]:
    """(subject tags, outfit tags): the trigger and identity tags on most images; their common clothing."""
    frequent = frequent_tags(captions, order)
    subject = [t for t in frequent if tag_category(t) == "identity" and t != trigger]
    outfit = [t for t in frequent if tag_category(t) == "clothing"]
    if not subject and order:  # nothing common besides the trigger: the typical caption's own identity tags
        subject = [t for t in split_tags(order[0]) if tag_category(t) == "identity" and t != trigger][:3]
    return ([trigger] if trigger else []) + subject, outfit


def sentence_subject(caption: str, trigger: str | None) -> str:
    """The opening noun phrase of a natural-language caption: its first clauses up to the first scene word.

    "A photo of @trig, a brown dog with a black muzzle, lying on a porch." -> "A photo of @trig, a brown
    dog with a black muzzle"; "@trig is a dog on grass" -> "@trig, a dog". Always holds the trigger.
    """
    first = re.split(r"(?<=[.!?])\s+", caption.strip())[0].rstrip(".!? ")
    first = re.sub(r"\b(is|was)\s+(an?|the)\b", r", \2", first)  # "X is a dog" names the subject twice
    kept = []
    for clause in (c.strip() for c in first.split(",")):
        marker = SCENE_MARKERS.search(clause)
        head = clause[: marker.start()].strip(" ;:-") if marker else clause
        head = re.sub(r"\s+(and|with)$", "", head)
        if head:
            kept.append(head)
        if marker and kept:
            break
    subject = ", ".join(kept)
    if trigger and trigger not in subject:
        subject = f"{trigger}, {subject}" if subject else trigger
    return subject or " ".join(first.split()[:6])


def novel_prompts(captions: list[str], typical: list[str], trigger: str | None, tags: bool,
                  count: int) -> list[Prompt]:
    scenes = chosen_scenes(captions, count)
    if tags:
        subject, outfit = tag_subject(captions, typical, trigger)
        texts = [tag_scene_prompt(scene, subject, outfit) for scene in scenes]
    else:
        subject = sentence_subject(typical[0], trigger) if typical else (trigger or "a person")
        texts = [f"{subject}, {scene.words}." for scene in scenes]
    return [Prompt(text, NOVEL, CHANGE_NOTES[scene.change]) for text, scene in zip(texts, scenes)]


def default_prompts(captions: list[str], trigger: str | None) -> list[Prompt]:
    """Given the dataset's captions and trigger, return the default preview prompts (6, labelled by kind).

    Two typical captions, the first without the trigger, three novel scenes; where a dataset has only
    one distinct caption or no trigger, more novel scenes fill the set to six.
    """
    captions = [" ".join(c.split()) for c in captions if c and c.strip()]
    if not captions:
        captions = [trigger] if trigger else []
    tags = captions_are_tags(captions)
    typical = two_typical(captions, tags)
    prompts = [Prompt(c, CAPTION, "most typical" if i == 0 else "typical, different") for i, c in enumerate(typical)]
    bare = without_trigger(typical[0], trigger, tags) if typical else None
    if bare:
        prompts.append(Prompt(bare, NO_TRIGGER))
    prompts += novel_prompts(captions, typical, trigger, tags, DEFAULT_COUNT - len(prompts))
    unique = list({p.text: p for p in reversed(prompts)}.values())[::-1]  # first wins on a repeated text
    return [p for p in unique if p.text.strip()] or [Prompt("1girl", NOVEL, "no caption to start from")]


def combine_prompts(defaults: list[Prompt], user: list[str], mode: str) -> list[Prompt]:
    """The preview set: the user's prompts added after the defaults ('add') or instead of them ('replace')."""
    if mode not in ("add", "replace"):
        raise ValueError(f"prompts_mode must be 'add' or 'replace' (got {mode!r})")
    mine = [Prompt(text, USER) for text in user if text.strip()]
    if mode == "replace" and mine:
        return mine
    known = {p.text for p in defaults}
    return defaults + [p for p in mine if p.text not in known]


FIRST_SEED = 1000  # prompts without a seed of their own get 1000, 1001, ...


def choose_prompts(job_prompts: list[Prompt], job_seeds: list[int], previous: dict, given: list[str],
                   given_seeds: list[int], mode: str) -> tuple[list[Prompt], list[int]]:
    """(prompts, one seed each): the given prompts added to the package's ('add') or as the whole set
    ('replace'); with nothing given, the job's own set (and seeds, or the given ones)."""
    if mode not in ("add", "replace"):
        raise UserError(f"--prompts-mode must be add or replace (got {mode!r})")
    if given and mode == "replace":
        prompt_set = [Prompt(text, USER) for text in dict.fromkeys(given) if text.strip()]
        if not prompt_set:
            raise UserError("--prompts-mode replace: every --prompt given is empty; give at least one prompt")
        return prompt_set, fill_seeds(given_seeds, len(prompt_set))
    if previous or given:
        prompt_set = previous.get("prompts") or job_prompts
        seeds = fill_seeds(previous.get("seeds") or job_seeds, len(prompt_set))
        return add_prompts(prompt_set, seeds, given, given_seeds)
    return job_prompts, fill_seeds(given_seeds or job_seeds, len(job_prompts))


def fill_seeds(seeds: list[int], count: int) -> list[int]:
    """One seed per prompt: the given ones (a single seed serves every prompt), then 1000 + index."""
    seeds = list(seeds)
    if len(seeds) == 1 and count > 1:
        seeds = seeds * count
    return (seeds + [FIRST_SEED + i for i in range(len(seeds), count)])[:count]


def add_prompts(prompt_set: list[Prompt], seeds: list[int], new: list[str], new_seeds: list[int]):
    """The set with the new user prompts appended (a text already there is not added twice)."""
    prompt_set, seeds = list(prompt_set), list(seeds)
    fresh = [text for text in dict.fromkeys(new) if text.strip() and text not in {p.text for p in prompt_set}]
    given = fill_seeds(new_seeds, len(fresh)) if new_seeds else []
    for index, text in enumerate(fresh):
        seeds.append(given[index] if given else FIRST_SEED + len(prompt_set))
        prompt_set.append(Prompt(text, USER))
    return prompt_set, seeds
