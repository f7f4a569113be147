"""Paths from settings (trainer/paths.py and where the engine uses it): each is checked before anything opens it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.helpers import make_kohya_folder
from trainer.errors import ConfigError, DatasetError, SaveError
from trainer.paths import (checked_caption_extension, checked_lora_name, checked_run_name, is_inside,
                           resolve_folder)


def test_lora_names_keep_sub_folders_and_never_leave_the_loras_folder(tmp_path):
    from trainer.lora_file import unused_path

    assert checked_lora_name(" people/anna.safetensors ") == "people/anna"
    assert checked_lora_name("people\\anna") == "people/anna"           # typed on Windows
    assert checked_lora_name("./people//anna") == "people/anna"
    assert unused_path(str(tmp_path), "people/anna") == str(tmp_path / "people" / "anna.safetensors")
    for bad, message in [("../escape", "climbs out"), ("a/../../b", "climbs out"), ("/tmp/x", "absolute path"),
                         ("C:\\x", "absolute path"), ("", "empty"), ("/", "absolute"), ("x\x00y", "NUL"),
                         ("con", "device name"), ("people/NUL.txt", "device name"), ("anna.", "ends in a dot"),
                         (".partial-x", "starts with '.'"), ("a" * 250, "bytes long"), ("ab:c", "':'")]:
        with pytest.raises(SaveError, match=message):
            unused_path(str(tmp_path), bad)


def test_a_lora_name_through_a_linked_sub_folder_is_refused_and_a_dangling_link_is_not_replaced(tmp_path):
    from trainer.lora_file import unused_path

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "linked").symlink_to(elsewhere)
    with pytest.raises(SaveError, match="resolves outside"):
        unused_path(str(loras), "linked/x")
    (loras / "gone.safetensors").symlink_to(tmp_path / "missing.safetensors")
    assert unused_path(str(loras), "gone") == str(loras / "gone_2.safetensors")


@pytest.mark.parametrize("bad, message", [
    ("../escape", "is a path"), ("people/anna", "is a path"), ("a\\b", "is a path"), ("..", "is a path"),
    ("/tmp/x", "is a path"), ("", "empty"), ("  ", "empty"), ("x\x00", "NUL"), ("lpt1", "device name"),
    ("cache", "taken by the trainer"), (".hidden", "starts with '.'"), ("b" * 201, "bytes long"),
])
def test_run_names_are_one_plain_name(bad, message):
    with pytest.raises(ConfigError, match=message):
        checked_run_name(bad)


def test_a_good_run_name_is_kept_as_typed():
    assert checked_run_name(" sks dog v2.safetensors ") == "sks dog v2"
    assert checked_run_name("café_été-1") == "café_été-1"


def test_caption_extensions_are_suffixes():
    assert checked_caption_extension("") == ".txt"
    assert checked_caption_extension("caption") == ".caption"
    assert checked_caption_extension(" .tags.txt ") == ".tags.txt"
    for bad in ("/../../x", ".txt/../../../etc/passwd", "..\\x", "..", ".t\x00", ".txt:stream", "." + "x" * 40):
        with pytest.raises(DatasetError, match="caption_extension"):
            checked_caption_extension(bad)


def test_a_caption_extension_cannot_read_a_file_outside_the_images_folder(tmp_path):
    """Before the check, `/../../secret.txt` read <dataset>/secret.txt as the caption of 10_x/a.png wherever a
    folder `a.` stood beside it (and on Windows, which resolves `..` by name, with no such folder at all)."""
    from trainer.dataset import load_dataset_folder

    root = make_kohya_folder(str(tmp_path / "set"), {"10_x": [(64, 64)]})
    os.makedirs(os.path.join(root, "10_x", "0."))
    with open(tmp_path / "set" / "secret.txt", "w", encoding="utf-8") as handle:
        handle.write("the secret\n")
    with pytest.raises(DatasetError, match="caption_extension '/../../secret.txt' holds a path"):
        load_dataset_folder(root, "/../../secret.txt")


def test_a_folder_relative_to_the_base_must_stay_inside_it(tmp_path):
    base = tmp_path / "input"
    make_kohya_folder(str(base / "set"), {"1_a": [(64, 64)]})
    make_kohya_folder(str(tmp_path / "outside"), {"1_a": [(64, 64)]})
    assert resolve_folder("set", str(base)) == str(base / "set")
    assert resolve_folder(' "sub/../set" ', str(base)) == str(base / "set")     # quotes and .. inside are fine
    assert resolve_folder(str(tmp_path / "outside"), str(base)) == str(tmp_path / "outside")   # absolute: any
    for climbing in ("../outside", "../../etc", "set/../../outside"):
        with pytest.raises(DatasetError, match="climbs out of the input folder .*type its absolute path"):
            resolve_folder(climbing, str(base))


def test_a_linked_folder_in_the_base_is_followed_to_where_it_points(tmp_path):
    base = tmp_path / "input"
    base.mkdir()
    make_kohya_folder(str(tmp_path / "disk2" / "set"), {"1_a": [(64, 64)]})
    (base / "linked").symlink_to(tmp_path / "disk2" / "set")
    assert resolve_folder("linked", str(base)) == str(tmp_path / "disk2" / "set")


@pytest.mark.parametrize("typed, message", [
    ("", "No dataset folder given"), ("missing", "does not exist .*typed as 'missing'"),
    ("file.txt", "is a file, not a folder"), ("a\x00b", "NUL character"), ("x" * 300, "longer than the 255 bytes"),
    ("/" + "d/" * 2100, "longer than 4096 bytes"),
])
def test_a_folder_that_cannot_be_used_says_why_and_where(tmp_path, typed, message):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match=message) as error:
        resolve_folder(typed, str(tmp_path))
    if typed in ("missing", ""):
        assert str(tmp_path) in str(error.value)                      # the folder relative paths are read from


def test_is_inside_follows_links_unless_told_not_to(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "link").symlink_to(tmp_path)
    assert is_inside(str(tmp_path / "folder" / "x"), str(tmp_path / "folder"))
    assert not is_inside(str(tmp_path / "folder" / ".." / "x"), str(tmp_path / "folder"))
    assert not is_inside(str(tmp_path / "folder" / "link" / "x"), str(tmp_path / "folder"))
    assert is_inside(str(tmp_path / "folder" / "link" / "x"), str(tmp_path / "folder"), follow_links=False)


def test_npz_files_stay_beside_their_image_or_in_the_fallback_folder(tmp_path):
    """kohya's npz name is built from the image's own file name, which the folder listing gave, so no name can
    reach another folder; the fallback folder's sub-folder is a digest."""
    from trainer.latent_disk import DiskLatentStore

    store = DiskLatentStore("vae", {}, fallback_folder=str(tmp_path / "cache"))
    folder = tmp_path / "set" / "10_x"
    for name in ("..png", "...png", "a..b.png", "x\\..\\..\\y.png", "-n.png"):
        beside, fallback = store.candidates(str(folder / name), (64, 64))
        assert os.path.dirname(beside) == str(folder), beside
        assert os.path.dirname(os.path.dirname(fallback)) == str(tmp_path / "cache"), fallback


def test_images_from_the_graph_leave_no_file_even_with_the_disk_cache(tmp_path, tiny_vae_encoder, monkeypatch):
    from trainer.dataset.buckets import BucketSettings
    from trainer.dataset.from_images import dataset_from_pixels
    from trainer.latent_cache import cache_latents

    monkeypatch.chdir(tmp_path)                   # the synthetic path is relative: it would land here
    pixels = [np.full((64, 64, 3), 128, np.uint8)]
    dataset = dataset_from_pixels(pixels, ["a red car"], "car", 2)
    cache = cache_latents(dataset, tiny_vae_encoder, BucketSettings((64, 64), 64, 64), cache_mode="disk",
                          fallback_folder=str(tmp_path / "cache"))
    assert len(cache.samples) == 1 and os.listdir(tmp_path) == []


def test_resume_from_must_name_a_run_folder_directly_in_the_runs_folder(tmp_path):
    from trainer.session import RunFolders, resumable_state

    folders = RunFolders(str(tmp_path / "loras"), str(tmp_path / "runs"))
    os.makedirs(folders.runs)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", os.path.join(folders.runs, "linked"))
    for bad, message in [("..", "resume_from '..' is a path"), ("../runs/x", "is a path"),
                         ("/tmp/x", "is a path"), ("cache", "taken by the trainer"),
                         ("linked", "not a run folder of this trainer .*a link to")]:
        with pytest.raises(ConfigError, match=message) as error:
            resumable_state(folders, bad)
        assert "Runs that can resume: none" in str(error.value)
