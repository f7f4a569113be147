import pytest
from PIL import Image

from tests.reference_data import bucket_cases
from trainer.dataset.buckets import BucketChoice, BucketSettings, make_bucket_resolutions, select_bucket
from trainer.dataset.images import resize_and_crop
from trainer.errors import ConfigError

CASES = bucket_cases()


def settings_of(case) -> BucketSettings:
    s = case["settings"]
    return BucketSettings((s["resolution"], s["resolution"]), s["min_bucket_reso"], s["max_bucket_reso"],
                          s["bucket_reso_steps"], s["no_upscale"]).validated()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c["settings"].values()))
def test_matches_kohyas_own_buckets_and_assignments(case):
    settings = settings_of(case)
    if case["bucket_resolutions"]:
        assert [list(b) for b in settings.predefined] == case["bucket_resolutions"]
    mismatches = []
    for assignment in case["assignments"]:
        choice = select_bucket(settings, *assignment["image"])
        if [list(choice.bucket), list(choice.resized)] != [assignment["bucket"], assignment["resized"]]:
            mismatches.append((assignment, choice))
    assert not mismatches
    assert len(case["assignments"]) > 50


def test_every_reference_case_is_checked():
    assert len(CASES) == 8 and sum(len(c["assignments"]) for c in CASES) == 456


def test_documented_example_list():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64)[:4] == [(256, 832), (256, 896), (256, 960), (256, 1024)]


def test_resize_covers_bucket_then_centre_crops():
    image = Image.new("RGB", (1920, 1080))
    image.paste((255, 0, 0), (0, 0, 10, 1080))          # a red strip on the left edge gets cropped away
    choice = select_bucket(BucketSettings().validated(), 1920, 1080)
    assert choice == BucketChoice((640, 384), (683, 384), choice.ar_error)
    out = resize_and_crop(image, choice)
    assert out.size == (640, 384)
    assert out.getpixel((0, 200))[0] == 0                 # (683 - 640) // 2 = 21 px trimmed on the left


@pytest.mark.parametrize("kwargs, needle", [
    ({"bucket_reso_steps": 12}, "multiple of 8"),
    ({"min_bucket_reso": 768}, "min_bucket_reso"),
    ({"max_bucket_reso": 256}, "max_bucket_reso"),
])
def test_bad_settings_explain_themselves(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        BucketSettings(**kwargs).validated()


def test_image_too_small_for_no_upscale_is_named(tmp_path):
    from tests.helpers import make_kohya_folder
    from trainer.dataset import load_dataset_folder
    from trainer.errors import DatasetError
    from trainer.latent_cache import cache_latents

    root = make_kohya_folder(str(tmp_path / "set"), {"1_x": [(40, 600)]})
    with pytest.raises(DatasetError, match="0.png: 40x600 is smaller than one bucket step"):
        cache_latents(load_dataset_folder(root), encoder=None,
                      settings=BucketSettings((512, 512), 256, 1024, 64, no_upscale=True))


@pytest.mark.parametrize("size, resized", [((1920, 1080), (910, 512)), ((300, 800), (512, 1365)),
                                           ((512, 512), (512, 512)), ((256, 128), (1024, 512))])
def test_buckets_off_resize_every_image_to_cover_the_resolution(size, resized):
    settings = BucketSettings((512, 512), enabled=False).validated()
    choice = select_bucket(settings, *size)
    assert choice.bucket == (512, 512) and choice.resized == resized          # upscaling too, as kohya's cache
    image = resize_and_crop(Image.new("RGB", size), choice)
    assert image.size == (512, 512)
