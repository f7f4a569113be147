"""Image decoding and kohya's resizing: exact area average against OpenCV, LANCZOS to enlarge."""

import numpy as np
import pytest
from PIL import Image

from trainer.dataset.buckets import BucketSettings, select_bucket
from trainer.dataset.images import (RESIZE_INTERPOLATIONS, UnreadableImage, area_resize, open_rgb, read_header,
                                    resize, resize_and_crop)

cv2 = pytest.importorskip("cv2", reason="OpenCV is the test oracle for INTER_AREA; `pip install .[test]`")

SHRINKS = [((1000, 700), (584, 409)), ((1920, 1080), (683, 384)), ((777, 555), (300, 201)), ((513, 1025), (512, 1024)),
           ((4000, 3000), (1024, 768)), ((100, 100), (99, 57)), ((640, 480), (320, 240)), ((1711, 1000), (1000, 584)),
           ((3, 3), (2, 2)), ((1025, 64), (1024, 63))]


@pytest.mark.parametrize("source, target", SHRINKS, ids=lambda s: "x".join(map(str, s)))
def test_shrinking_equals_opencv_inter_area_within_one_level(source, target):
    pixels = np.random.default_rng(sum(source)).integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    ours = area_resize(pixels, target)
    theirs = cv2.resize(pixels, target, interpolation=cv2.INTER_AREA)
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_pil_box_is_not_good_enough_at_fractional_factors():
    """Why the area average is our own: PIL's BOX misses INTER_AREA by far on noisy images at 1.71x."""
    pixels = np.random.default_rng(0).integers(0, 256, (1000, 1711, 3), dtype=np.uint8)
    box = np.asarray(Image.fromarray(pixels).resize((1000, 584), Image.Resampling.BOX))
    theirs = cv2.resize(pixels, (1000, 584), interpolation=cv2.INTER_AREA)
    assert np.abs(box.astype(int) - theirs.astype(int)).max() > 20


@pytest.mark.parametrize("source, target", [((64, 64), (100, 100)), ((300, 200), (451, 301)), ((65, 33), (640, 320))])
def test_enlarging_is_pil_lanczos(source, target):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (source[1], source[0], 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(resize(image, target)), np.asarray(image.resize(target, Image.Resampling.LANCZOS)))


def test_every_kohya_interpolation_is_offered_and_runs():
    assert set(RESIZE_INTERPOLATIONS) == {"auto", "area", "lanczos", "bicubic", "bilinear", "nearest", "box"}
    image = Image.new("RGB", (200, 100), (1, 2, 3))
    choice = select_bucket(BucketSettings((64, 64), 64, 128).validated(), 200, 100)
    for name in RESIZE_INTERPOLATIONS:
        assert resize_and_crop(image, choice, name).size == choice.bucket


def test_decoding_converts_every_mode_and_keeps_the_first_frame(tmp_path):
    from tests.helpers import make_messy_folder

    make_messy_folder(str(tmp_path))
    folder = tmp_path / "4_sks dog"
    assert open_rgb(str(folder / "transparent.png")).getpixel((5, 5)) == (255, 255, 255)    # on white
    assert open_rgb(str(folder / "transparent.png"), transparent_on_white=False).getpixel((5, 5)) == (255, 0, 0)
    assert open_rgb(str(folder / "gray.png")).getpixel((0, 0)) == (128, 128, 128)
    assert open_rgb(str(folder / "sixteen.png")).getpixel((0, 0)) == (156, 156, 156)        # 40000/65535*255
    assert open_rgb(str(folder / "cmyk.jpg")).mode == "RGB"
    assert open_rgb(str(folder / "animated.png")).getpixel((0, 0)) == (0, 0, 255)           # first frame
    assert open_rgb(str(folder / "rotated.jpg")).size == (64, 96)                           # EXIF applied
    with pytest.raises(UnreadableImage, match="truncated or corrupt"):
        open_rgb(str(folder / "truncated.png"))


def test_a_huge_image_is_read_without_a_decompression_bomb_error(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (12000, 12000), 200).save(path)             # 144 megapixels: PIL warns past 89
    assert read_header(str(path)).size == (12000, 12000)
    choice = select_bucket(BucketSettings((512, 512)).validated(), 12000, 12000)
    out = resize_and_crop(open_rgb(str(path)), choice)
    assert out.size == (512, 512) and out.getpixel((0, 0)) == (200, 200, 200)
