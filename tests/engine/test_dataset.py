import os

import pytest

from tests.helpers import make_kohya_folder, write_image
from trainer.dataset import load_dataset_folder, parse_repeat_folder_name
from trainer.errors import DatasetError


def test_reads_kohya_layout_with_captions_and_folder_name_fallback(tmp_path):
    root = make_kohya_folder(str(tmp_path / "set"), {"10_sks dog": [(64, 64), (64, 64)], "3_style": [(32, 32)]},
                             {"10_sks dog/1": "a photo, of sks dog"})
    write_image(str(tmp_path / "set" / "3_style" / "UPPER.JPG"), (16, 16))
    (tmp_path / "set" / "notes").mkdir()                 # no N_ prefix: ignored, like kohya
    (tmp_path / "set" / "readme.txt").write_text("root files are ignored")
    dataset = load_dataset_folder(root)
    by_name = {s.name: s for s in dataset.subsets}
    assert set(by_name) == {"10_sks dog", "3_style"} and dataset.skipped_folders == ("notes",)
    dog = by_name["10_sks dog"]
    assert dog.repeats == 10 and [e.caption for e in dog.images] == ["sks dog", "a photo, of sks dog"]
    assert [os.path.basename(e.path) for e in by_name["3_style"].images] == ["0.png", "UPPER.JPG"]
    assert dataset.num_train_images == 2 * 10 + 2 * 3


def test_caption_extension_and_first_line_only(tmp_path):
    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(8, 8)]})
    (tmp_path / "set" / "1_x" / "0.caption").write_text("first line\nsecond line\n", encoding="utf-8")
    assert load_dataset_folder(root, "caption").subsets[0].images[0].caption == "first line"
    assert load_dataset_folder(root, ".txt").subsets[0].images[0].caption == "x"


def test_repeat_folder_names():
    assert parse_repeat_folder_name("10_sks dog") == (10, "sks dog")
    assert parse_repeat_folder_name("5_a_b") == (5, "a_b")
    assert parse_repeat_folder_name("dog") is None


def assert_layout_error(root, *needles, named=None):
    with pytest.raises(DatasetError) as info:
        load_dataset_folder(str(root))
    message = str(info.value)
    assert str(named or root) in message and "Expected layout" in message and "10_sks dog" in message, message
    for needle in needles:
        assert needle in message, message


def test_empty_folder_names_folder_and_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_layout_error(tmp_path / "empty", "is empty")


def test_folder_without_repeat_subfolder(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    write_image(str(root / "a.png"), (8, 8))
    (root / "dogs").mkdir()
    assert_layout_error(root, "no 'N_name' sub-folder", "a.png")


def test_subfolder_without_images(tmp_path):
    root = tmp_path / "set"
    (root / "5_cats").mkdir(parents=True)
    (root / "5_cats" / "cat.txt").write_text("a cat")
    assert_layout_error(root, "no usable images", named=root / "5_cats")


def test_missing_folder(tmp_path):
    assert_layout_error(tmp_path / "nowhere", "does not exist")


def messy_dataset(tmp_path):
    from tests.helpers import make_messy_folder

    expected = make_messy_folder(str(tmp_path / "messy"))
    return load_dataset_folder(str(tmp_path / "messy")), expected


def test_a_real_world_folder_keeps_every_good_image_and_names_every_skip(tmp_path):
    dataset, expected = messy_dataset(tmp_path)
    names = sorted(os.path.basename(e.path) for s in dataset.subsets for e in s.images)
    assert names == sorted(expected["good"])
    skipped = {os.path.basename(item.path): item.reason for item in dataset.skipped}
    assert set(skipped) == set(expected["skipped_at_scan"])
    assert skipped["zero.png"] == "empty file (0 bytes)"
    assert "not an image" in skipped["fake.jpg"] and "gone" in skipped["broken link.png"]
    assert "sub-folders" in skipped["nested"] and "1 or more" in skipped["0_zero repeats"]
    assert "no usable images" in skipped["3_only bad"]
    assert dataset.skipped_folders == ("notes",)
    text = dataset.describe()
    for name in expected["skipped_at_scan"]:
        assert name in text, text
    assert "ignored folder (no N_ repeat prefix, e.g. '10_notes')" in text


def test_captions_tolerate_bom_crlf_legacy_encodings_and_empty_files(tmp_path):
    dataset, _ = messy_dataset(tmp_path)
    dog = next(s for s in dataset.subsets if s.class_tokens == "sks dog")
    captions = {os.path.basename(e.path): e.caption for e in dog.images}
    assert captions["a.png"] == "a photo of sks dog"                 # BOM stripped, first line, CRLF
    assert captions["latin.png"] == "sks dog in a caf\u00e9"          # read as cp1252, with a warning
    assert captions["empty caption.png"] == "" and dog.empty_captions == 1
    assert captions["gray.png"] == "sks dog"                         # no caption file: the class tokens
    assert [w for w in dataset.warnings if "latin.txt is not UTF-8; read it as cp1252" in w]
    text = dataset.describe()
    assert "1 empty caption file(s)" in text and "captioned 'sks dog' (no caption file)" in text
    assert "2_café chien" in text


def test_image_sizes_come_from_headers_with_exif_rotation(tmp_path):
    dataset, _ = messy_dataset(tmp_path)
    sizes = {os.path.basename(e.path): e.size for s in dataset.subsets for e in s.images}
    assert sizes["rotated.jpg"] == (64, 96) and sizes["B.JPG"] == (64, 96) and sizes["a.png"] == (64, 64)


def test_a_folder_with_nothing_trainable_lists_why(tmp_path):
    root = tmp_path / "set"
    (root / "5_cats").mkdir(parents=True)
    (root / "5_cats" / "broken.png").write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        load_dataset_folder(str(root))
    assert "nothing to train on" in str(info.value) and "broken.png: empty file (0 bytes)" in str(info.value)


def test_scanning_decodes_no_pixels(tmp_path, monkeypatch):
    """Scanning reads headers only: any decode while listing the folder is a failure here."""
    from PIL import ImageFile

    from tests.helpers import make_messy_folder

    expected = make_messy_folder(str(tmp_path / "messy"))

    def no_decoding(self, *args, **kwargs):
        raise AssertionError(f"{self.filename} was decoded while scanning")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    dataset = load_dataset_folder(str(tmp_path / "messy"))
    assert dataset.num_images == len(expected["good"])


def test_regularization_is_balanced_as_kohya_does():
    from trainer.dataset.regularization import balanced_reg_repeats

    # enough reg images: registered in order until they reach the 20 training samples; the rest unused
    assert balanced_reg_repeats(20, [("a", 8), ("b", 8), ("c", 8), ("d", 8)]) == {"a": 8, "b": 8, "c": 8}
    # too few: one more repeat per image, in order, until they match
    assert balanced_reg_repeats(7, [("a", 1), ("b", 1)]) == {"a": 4, "b": 3}
    assert balanced_reg_repeats(0, [("a", 1)]) == {} and balanced_reg_repeats(5, []) == {}


def test_a_regularization_folder_is_read_balanced_and_described(tmp_path):
    root = make_kohya_folder(str(tmp_path / "train"), {"10_sks dog": [(64, 64)] * 3})
    reg = make_kohya_folder(str(tmp_path / "reg"), {"1_dog": [(64, 64)] * 4})
    dataset = load_dataset_folder(root, ".txt", reg)
    assert [(s.name, s.is_reg) for s in dataset.subsets] == [("10_sks dog", False), ("1_dog", True)]
    assert dataset.num_train_images == 30 and dataset.num_reg_images == 4
    assert sorted(dataset.reg_balance().values()) == [7, 7, 8, 8]               # 4 images brought to 30
    assert "regularization: 4 image(s), 4 with repeats, balanced to 30 sample(s)" in dataset.describe()
    with pytest.raises(DatasetError, match="Regularization folder .*does not exist"):
        load_dataset_folder(root, ".txt", str(tmp_path / "nowhere"))
    make_kohya_folder(str(tmp_path / "reg2"), {"10_sks dog": [(64, 64)]})
    with pytest.raises(DatasetError, match="have a sub-folder named 10_sks dog"):
        load_dataset_folder(root, ".txt", str(tmp_path / "reg2"))


def test_repeats_can_be_overridden_per_folder_and_admit_unprefixed_folders(tmp_path):
    root = make_kohya_folder(str(tmp_path / "set"), {"10_sks dog": [(64, 64)], "3_style": [(64, 64)],
                                                     "dogs": [(64, 64)]})
    dataset = load_dataset_folder(root, ".txt", repeats="sks dog=2\n3_style = 7, dogs=4")
    assert {s.name: (s.repeats, s.class_tokens) for s in dataset.subsets} == {
        "10_sks dog": (2, "sks dog"), "3_style": (7, "style"), "dogs": (4, "dogs")}
    assert dataset.skipped_folders == ()
    with pytest.raises(DatasetError, match="repeats names cats, which is no sub-folder here"):
        load_dataset_folder(root, ".txt", repeats="cats=3")
    with pytest.raises(DatasetError, match="write 'folder=N'"):
        load_dataset_folder(root, ".txt", repeats="sks dog=0")


def test_two_datasets_train_together_each_with_its_own_captions(tmp_path):
    character = make_kohya_folder(str(tmp_path / "character"), {"10_sks": [(64, 64)]})
    style = make_kohya_folder(str(tmp_path / "style"), {"2_watercolor": [(64, 64)]})
    (tmp_path / "style" / "2_watercolor" / "0.caption").write_text("a watercolor painting", encoding="utf-8")
    combined = load_dataset_folder(character, ".txt").combined_with(load_dataset_folder(style, ".caption"))
    assert [(s.name, s.repeats, s.caption_extension) for s in combined.subsets] == [
        ("10_sks", 10, ".txt"), ("2_watercolor", 2, ".caption")]
    assert [e.caption for s in combined.subsets for e in s.images] == ["sks", "a watercolor painting"]
    assert combined.num_train_images == 12 and str(tmp_path / "style") in combined.describe()
    with pytest.raises(DatasetError, match="sub-folder named 10_sks"):
        combined.combined_with(load_dataset_folder(character, ".txt"))


def test_images_from_the_graph_become_a_subset_with_their_captions():
    import numpy as np

    from trainer.dataset.from_images import dataset_from_pixels, split_captions

    assert split_captions(["a\n\nc"], 3) == ["a", "", "c"]                  # an empty line: the name
    assert split_captions(["a\r\nb\n"], 2) == ["a", "b"]                    # the editor's last newline
    assert split_captions(["a red car\n"], 2) == ["a red car"] * 2
    assert split_captions(["one for all"], 3) == ["one for all"] * 3
    assert split_captions(["x", "y"], 2) == ["x", "y"]
    with pytest.raises(DatasetError, match="3 image\\(s\\) but 2 caption"):
        split_captions(["x", "y"], 3)
    pixels = [np.zeros((64, 96, 3), np.uint8), np.full((64, 64, 3), 7, np.uint8)]
    dataset = dataset_from_pixels(pixels, ["a red car\n"], "sks car", 5)
    subset = dataset.subsets[0]
    assert (subset.name, subset.repeats, subset.class_tokens) == ("5_sks car", 5, "sks car")
    assert [(e.caption, e.size, e.caption_from_file) for e in subset.images] == [
        ("a red car", (96, 64), True), ("a red car", (64, 64), True)]
    assert [e.caption for e in dataset_from_pixels(pixels, ["\n"], "sks car", 1).subsets[0].images] == [
        "sks car", "sks car"]                                               # no caption: the name
    assert subset.images[0].path != subset.images[1].path and dataset.num_train_images == 10
    with pytest.raises(DatasetError, match="no images"):
        dataset_from_pixels([], [], "x", 1)


def test_an_unreadable_sub_folder_is_skipped_not_fatal(tmp_path, monkeypatch):
    from trainer.dataset import folders

    root = make_kohya_folder(str(tmp_path / "set"), {"2_good": [(64, 64)], "3_locked": [(64, 64)]})
    scandir = os.scandir

    def refusing(path):                               # what a folder without read permission answers
        if str(path).endswith("3_locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(folders.os, "scandir", refusing)
    dataset = load_dataset_folder(root)
    assert [s.name for s in dataset.subsets] == ["2_good"]
    assert any("3_locked" in item.path and "cannot be read (Permission denied)" in item.reason
               for item in dataset.skipped)


def test_mask_files_are_images_unless_alpha_mask_is_on(tmp_path):
    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(64, 64)]})
    write_image(str(tmp_path / "set" / "1_x" / "0_MASK.png"), (64, 64))
    assert len(load_dataset_folder(root).subsets[0].images) == 2
    assert [os.path.basename(e.path) for e in load_dataset_folder(root, alpha_mask=True).subsets[0].images] == [
        "0.png"]
