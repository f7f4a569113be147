"""kohya's caption processing, option by option, and its seeding per (seed, epoch, draw)."""

import random

import pytest

from trainer.dataset.caption_processing import CaptionOptions, process_caption, sample_random

CAPTION = "sks dog, red collar, grass, sunny day, park"


def run(caption=CAPTION, epoch=1, draw=0, seed=1, **options):
    return process_caption(caption, CaptionOptions(**options), sample_random(seed, epoch, draw), epoch)


def tags(text):
    return [t.strip() for t in text.split(",")]


def test_without_options_the_caption_is_untouched():
    assert run() == CAPTION and not CaptionOptions().is_random


def test_prefix_and_suffix_are_joined_with_a_space():
    assert run("dog", caption_prefix="photo of", caption_suffix="best quality") == "photo of dog best quality"


def test_shuffle_keeps_the_first_keep_tokens_tags_in_front():
    seen = {run(draw=draw, shuffle_caption=True, keep_tokens=1) for draw in range(30)}
    assert len(seen) > 5
    for text in seen:
        assert tags(text)[0] == "sks dog" and sorted(tags(text)) == sorted(tags(CAPTION))


def test_keep_tokens_separator_fixes_a_front_and_a_back_part():
    caption = "sks dog, red collar ||| grass, sunny day, park ||| masterpiece"
    for draw in range(20):
        out = tags(run(caption, draw=draw, shuffle_caption=True, keep_tokens_separator="|||"))
        assert out[:2] == ["sks dog", "red collar"] and out[-1] == "masterpiece"
        assert sorted(out[2:-1]) == ["grass", "park", "sunny day"]
    # kohya splits twice: a third separator stays inside the fixed end
    assert run("a ||| b, c ||| d ||| e", shuffle_caption=True, keep_tokens_separator="|||").endswith("d ||| e")
    # with nothing to shuffle, the separator itself never reaches the text encoder (kohya leaves it in)
    assert run(caption, keep_tokens_separator="|||") == "sks dog, red collar, grass, sunny day, park, masterpiece"


def test_tag_dropout_drops_only_flexible_tags_at_about_its_rate():
    kept = [len(tags(run(draw=draw, caption_tag_dropout_rate=0.5, keep_tokens=1))) - 1 for draw in range(400)]
    assert 0.4 < sum(kept) / (400 * 4) < 0.6
    assert all(run(draw=draw, caption_tag_dropout_rate=0.5, keep_tokens=1).startswith("sks dog")
               for draw in range(50))


def test_caption_dropout_by_rate_and_every_n_epochs():
    dropped = sum(run(draw=draw, caption_dropout_rate=0.25, caption_prefix="x") == "" for draw in range(800))
    assert 150 < dropped < 250                                  # prefix and suffix are dropped too
    assert [run(epoch=epoch, caption_dropout_every_n_epochs=3) == "" for epoch in range(1, 7)] == [
        False, False, True, False, False, True]                 # 1-based epochs, as kohya counts


def test_a_custom_separator_is_kept_when_rejoining_unlike_kohya_1304():
    out = run("a; b; c; d", draw=3, shuffle_caption=True, caption_separator=";")
    assert ", " not in out and sorted(out.split("; ")) == ["a", "b", "c", "d"]


def test_secondary_separator_groups_move_as_one_tag():
    for draw in range(20):
        out = run("dog, sky;;;cloud, tree", draw=draw, shuffle_caption=True, secondary_separator=";;;")
        assert "sky,cloud" in out                               # kohya: the group becomes the separator


def test_every_choice_depends_only_on_seed_epoch_and_draw():
    options = dict(shuffle_caption=True, caption_tag_dropout_rate=0.3, caption_dropout_rate=0.1)
    first = [run(seed=5, epoch=e, draw=d, **options) for e in (1, 2) for d in range(10)]
    random.seed(123)                                            # the global generator plays no part
    again = [run(seed=5, epoch=e, draw=d, **options) for e in (1, 2) for d in reversed(range(10))]
    assert first == [again[e * 10 + 9 - d] for e in range(2) for d in range(10)]
    assert first != [run(seed=6, epoch=e, draw=d, **options) for e in (1, 2) for d in range(10)]


@pytest.mark.parametrize("options, needle", [({"caption_dropout_rate": 1.5}, "between 0 and 1"),
                                             ({"keep_tokens": -1}, "0 or more"),
                                             ({"caption_separator": ""}, "separator is empty")])
def test_bad_options_are_named(options, needle):
    assert any(needle in problem for problem in CaptionOptions(**options).problems())
