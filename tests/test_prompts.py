"""The default preview set: six prompts in the guide's three kinds, coherent, each keeping the subject."""

from __future__ import annotations

import pytest

from animad.demo.synthetic import make_dataset
from animad.intake.dataset import split_tags
from animad.select.prompts import (CAPTION, NO_TRIGGER, NOVEL, USER, Prompt, captions_are_tags, combine_prompts,
                                   default_prompts, sentence_subject)

TAG_CAPTIONS = [
    "@miku, 1girl, solo, hatsune miku (vocaloid), twintails, long hair, aqua hair, aqua eyes, school uniform, "
    "white background, simple background, smile, upper body, looking at viewer",
    "@miku, 1girl, solo, hatsune miku (vocaloid), twintails, long hair, aqua hair, aqua eyes, school uniform, "
    "indoors, classroom, sitting, desk",
    "@miku, 1girl, solo, hatsune miku (vocaloid), twintails, long hair, aqua eyes, school uniform, outdoors, "
    "night sky, standing, from side",
    "@miku, 1girl, solo, hatsune miku (vocaloid), twintails, aqua hair, aqua eyes, detached sleeves, "
    "white background, smile, full body",
    "@miku, 1girl, hatsune miku (vocaloid), twintails, long hair, aqua hair, school uniform, beach, ocean, "
    "holding microphone",
]
SENTENCE_CAPTIONS = [
    "A photo of @boerboer, a large brown dog with a black muzzle, lying on a wooden porch in the afternoon sun.",
    "@boerboer is a large brown dog standing in a grassy field. The sky is cloudy.",
    "A photo of @boerboer, a brown dog with a black muzzle, looking at the camera indoors.",
    "In a snowy yard, @boerboer, a big brown dog, runs toward the camera.",
]
# Tags that cannot both be true of one picture.
EXCLUSIVE = [{"indoors", "outdoors"}, {"day", "night", "sunset"},
             {"sitting", "standing", "lying", "walking", "running"},
             {"upper body", "full body", "cowboy shot", "portrait", "close-up"}]
IDENTITY = ["1girl", "hatsune miku (vocaloid)", "twintails", "aqua eyes"]  # on most images: the subject


def kinds(prompts: list[Prompt]) -> list[str]:
    return [p.kind for p in prompts]


def test_tag_captions_give_six_coherent_prompts_that_keep_the_subject():
    prompts = default_prompts(TAG_CAPTIONS, "@miku")
    assert kinds(prompts) == [CAPTION, CAPTION, NO_TRIGGER, NOVEL, NOVEL, NOVEL]
    assert prompts[0].text in TAG_CAPTIONS and prompts[1].text in TAG_CAPTIONS and prompts[0] != prompts[1]
    assert prompts[2].text == prompts[0].text.replace("@miku, ", "")  # the same caption without the trigger
    assert len({p.text for p in prompts}) == 6
    for prompt in prompts:
        tags = split_tags(prompt.text)
        assert (prompt.kind == NO_TRIGGER) == ("@miku" not in tags), prompt
        assert all(t in tags for t in IDENTITY), prompt  # never a prompt without the subject
        assert len(tags) == len(set(tags)), prompt
        for group in EXCLUSIVE:
            assert len(group & set(tags)) <= 1, (prompt, group)
    novel = prompts[3:]
    assert sorted(p.note for p in novel) == ["new action", "new clothing", "new setting"]
    for prompt in novel:
        tags = set(split_tags(prompt.text))
        # the dataset's own settings, poses and expressions are replaced, not mixed in
        assert not tags & {"white background", "simple background", "classroom", "smile", "looking at viewer"}
        if prompt.note == "new clothing":
            assert "school uniform" not in tags  # the usual outfit gives way to the new one
        else:
            assert "school uniform" in tags  # ...and stays when the scene changes something else
    assert default_prompts(list(TAG_CAPTIONS), "@miku") == prompts  # deterministic


def test_sentence_captions_give_six_prompts_that_keep_the_subject_phrase():
    assert not captions_are_tags(SENTENCE_CAPTIONS) and captions_are_tags(TAG_CAPTIONS)
    prompts = default_prompts(SENTENCE_CAPTIONS, "@boerboer")
    assert kinds(prompts) == [CAPTION, CAPTION, NO_TRIGGER, NOVEL, NOVEL, NOVEL]
    assert prompts[0].text in SENTENCE_CAPTIONS and prompts[1].text in SENTENCE_CAPTIONS
    assert "@boerboer" not in prompts[2].text and "brown dog" in prompts[2].text
    for prompt in prompts[3:]:
        assert prompt.text.startswith("A photo of @boerboer, a") and "brown dog" in prompt.text, prompt
        assert prompt.text.endswith(".") and "porch" not in prompt.text and "indoors" not in prompt.text
    assert default_prompts(list(SENTENCE_CAPTIONS), "@boerboer") == prompts


@pytest.mark.parametrize("caption, subject", [
    ("A photo of @dog, a brown dog with a black muzzle, lying on a porch.", "A photo of @dog, a brown dog with a "
                                                                           "black muzzle"),
    ("@dog is a brown dog standing in a field.", "@dog, a brown dog"),
    ("In a snowy yard, @dog, a big brown dog, runs toward the camera.", "@dog, a big brown dog"),
    ("A brown dog sitting on grass.", "@dog, A brown dog"),  # the trigger is always there
])
def test_the_subject_phrase_of_a_sentence(caption, subject):
    assert sentence_subject(caption, "@dog") == subject


def test_the_demo_dataset_and_odd_datasets_still_get_six(tmp_path):
    folder = make_dataset(tmp_path / "demo", count=12)
    captions = [p.read_text().strip() for p in sorted(folder.glob("*.txt"))]
    prompts = default_prompts(captions, "@demo")
    assert kinds(prompts) == [CAPTION, CAPTION, NO_TRIGGER, NOVEL, NOVEL, NOVEL]
    assert all(p.text.startswith("@demo, ") for p in prompts if p.kind != NO_TRIGGER)
    # no trigger: nothing to leave out, a fourth novel scene instead; one caption: a fifth
    assert kinds(default_prompts(["1girl, red hair, smile", "1girl, red hair, sitting"], None)) == \
        [CAPTION, CAPTION] + [NOVEL] * 4
    same = default_prompts(["@x, 1girl, red hair"] * 5, "@x")
    assert kinds(same) == [CAPTION, NO_TRIGGER] + [NOVEL] * 4
    assert all("red hair" in p.text for p in same)
    assert default_prompts([], "@x")[0].text.startswith("@x")


def test_user_prompts_add_to_or_replace_the_defaults():
    defaults = default_prompts(TAG_CAPTIONS, "@miku")
    added = combine_prompts(defaults, ["@miku, swimsuit", defaults[0].text], "add")
    assert added[:6] == defaults and added[6:] == [Prompt("@miku, swimsuit", USER)]
    assert combine_prompts(defaults, ["@miku, swimsuit"], "replace") == [Prompt("@miku, swimsuit", USER)]
    assert combine_prompts(defaults, [], "replace") == defaults  # nothing to replace them with
    assert added[6].to_dict()["label"] == "your prompt" and defaults[3].to_dict()["label"].startswith("novel scene")
    with pytest.raises(ValueError, match="add or 'replace'|'add' or 'replace'"):
        combine_prompts(defaults, [], "merge")
