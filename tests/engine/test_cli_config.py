"""The command line's config: every bad key named with its line (exit 2, no traceback), kohya's dataset_config
and kohya_ss GUI configs mapped (what has no equivalent listed), config.toml read back as written, and
docs/cli.md's key reference generated from the same table the parser reads."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import make_kohya_folder
from trainer.cli.config import load_config, parse_config, read_toml
from trainer.cli.engine_settings import (bucket_settings, load_training_dataset, network_config, optimizer_config,
                                         train_settings)
from trainer.cli.main import main
from trainer.cli.options import KEYS, SECTIONS, reference_markdown
from trainer.cli.toml_lines import TomlLines
from trainer.cli.toml_writer import config_text

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def data(tmp_path):
    return make_kohya_folder(str(tmp_path / "data"), {"3_sks dog": [(64, 64), (128, 64)]},
                             {"3_sks dog/0": "a photo of sks dog, grass"})


def write(tmp_path, text: str, name: str = "run.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


BAD = [
    ("[dataset]\nfolder = '{data}'\n[network]\nrank = 4\nrnak = 5\n", "run.toml:5: [network] rnak: unknown key. "
                                                                      "Did you mean rank?"),
    ("[dataset]\nfolder = '{data}'\n\n[training]\nepochs = 'ten'\n", "run.toml:5: [training] epochs: expected an "
                                                                     "integer, got a string ('ten')"),
    ("[dataset]\nfolder = '{data}'\n[buckets]\ngradient_checkpointing = 1\n", "run.toml:4: [buckets] "
                                                                              "gradient_checkpointing: unknown key"),
    ("[[dataset]]\nfolder = '{data}'\n[[dataset]]\nfolder = 'nowhere'\n", "run.toml:4: [[dataset]] #2 folder: the "
                                                                          "folder"),
    ("[dataset]\nfolder = '{data}'\nregularization_folder = 'reg'\n", "run.toml:3: [dataset] regularization_folder"),
    ("[model]\npath = 'missing.safetensors'\n[dataset]\nfolder = '{data}'\n", "run.toml:2: [model] path: "),
    ("[dataset]\nfolder = '{data}'\n[optimizer]\noptimizer_type = 'Adamw'\n", "run.toml:4: [optimizer] "
                                                                              "optimizer_type: 'Adamw' is not one of"),
    ("[dataset]\nfolder = '{data}'\n[network]\nalgorithm = 'LoHa'\nrank_dropout = 0.1\n",
     "run.toml:5: [network] rank_dropout: LoHa takes module_dropout"),
    ("[dataset]\ncaption_extension = '.txt'\n", "run.toml:1: [dataset] folder: missing"),
    ("[trainig]\nepochs = 1\n", "run.toml:1: unknown section [trainig]. Did you mean training?"),
    ("[dataset]\nfolder = '{data}'\n[network]\nrank = 0\n", "run.toml:4: [network] rank: rank (network_dim) is 0"),
    ("[dataset\n", "is not valid TOML: "),
]


@pytest.mark.parametrize("text, message", BAD, ids=[f"case{index}" for index in range(len(BAD))])
def test_a_bad_config_stops_with_the_key_and_its_line(tmp_path, data, capsys, text, message):
    path = write(tmp_path, text.format(data=data))
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_toml_lines_follow_arrays_of_tables_and_skip_multiline_values():
    lines = TomlLines('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nprompts = """\nrank = 1\n"""\n'
                      '[[datasets.subsets]]\nimage_dir = "b"\n[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "c"\n'
                      '[network]\nlist = [\n 1,\n]\nrank = 2\n')
    assert lines.line_of(("datasets", 0, "subsets", 1, "image_dir")) == 8
    assert lines.line_of(("datasets", 1, "subsets", 0, "image_dir")) == 11
    assert lines.line_of(("network", "rank")) == 16
    assert lines.line_of(("network", "missing")) == 12


def test_every_key_has_a_known_kind_and_help_and_every_section_keys():
    sections = {section.name for section in SECTIONS}
    assert {key.section for key in KEYS} == sections
    assert all(key.help and key.kind in ("str", "int", "float", "bool", "path", "resolution") for key in KEYS)
    assert all(key.default in key.choices for key in KEYS if key.choices and key.default is not None)


def test_the_docs_key_reference_is_the_table_the_parser_reads():
    with open(os.path.join(REPO_ROOT, "docs", "cli.md"), encoding="utf-8") as handle:
        docs = handle.read()
    assert reference_markdown() in docs, "regenerate with `python -m trainer keys --markdown` (docs/cli.md)"


def test_settings_reach_the_engine_objects_and_config_toml_reads_back_the_same(tmp_path, data):
    path = write(tmp_path, f"""
[dataset]
folder = "{data}"
shuffle_caption = true
keep_tokens = 1
flip_aug = true
[buckets]
resolution = [64, 128]
min_bucket_reso = 64
[network]
algorithm = "LoCon"
conv_rank = 2
train = "both"
[optimizer]
optimizer_type = "AdamW"
beta2 = 0.99
weight_decay = 0.05
[training]
epochs = 2
seed = 7
[objective]
min_snr_gamma = 5
[validation]
validation_split = 0.5
[previews]
sample_prompts = \"\"\"a dog
a cat --n blurry\"\"\"
""")
    config = load_config(path)
    assert bucket_settings(config).resolution == (64, 128)
    assert network_config(config).train_on == "both" and network_config(config).conv_rank == 2
    optimizer = optimizer_config(config)
    assert optimizer.betas == (0.9, 0.99) and optimizer.weight_decay == 0.05 and optimizer.eps is None
    settings = train_settings(config)
    assert settings.seed == 7 and settings.objective.min_snr_gamma == 5.0 and settings.validation.split == 0.5
    subset = load_training_dataset(config).subsets[0]
    assert subset.flip_aug and subset.caption_options.shuffle_caption and subset.caption_options.keep_tokens == 1

    stored = tmp_path / "stored" / "config.toml"
    stored.parent.mkdir()
    stored.write_text(config_text(config, "a test"), encoding="utf-8")
    again = load_config(str(stored))
    assert again.values == config.values and again.datasets == config.datasets


def test_kohya_dataset_config_maps_its_subsets_and_run_wide_keys(tmp_path, data):
    reg = make_kohya_folder(str(tmp_path / "reg"), {"1_dog": [(64, 64)]})
    write(tmp_path, f"""
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1
enable_bucket = true
cache_info = false

[[datasets]]
resolution = 64
batch_size = 2
min_bucket_reso = 64
max_bucket_reso = 128

  [[datasets.subsets]]
  image_dir = "{data}/3_sks dog"
  num_repeats = 4
  class_tokens = "sks dog"
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "{reg}/1_dog"
  is_reg = true
  class_tokens = "dog"
  token_warmup_step = 0
""", "kohya.toml")
    config = load_config(write(tmp_path, "[dataset]\nkohya_config = 'kohya.toml'\n"))
    dataset = load_training_dataset(config)
    train, regularization = dataset.subsets
    assert (train.repeats, train.class_tokens, train.flip_aug, train.is_reg) == (4, "sks dog", True, False)
    assert train.caption_options.shuffle_caption and train.caption_options.keep_tokens == 1
    assert (regularization.repeats, regularization.is_reg, regularization.class_tokens) == (1, True, "dog")
    assert [image.caption for image in regularization.images] == ["dog"]
    assert bucket_settings(config).resolution == (64, 64) and train_settings(config).batch_size == 2
    assert any("cache_info ignored" in note for note in config.kohya.notes)
    assert any("token_warmup_step ignored (off" in note for note in config.kohya.notes)

    # the same folder as a [dataset] table: the same subset
    plain = load_config(write(tmp_path, f"[dataset]\nfolder = '{data}'\nshuffle_caption = true\nkeep_tokens = 1\n"
                                        f"flip_aug = true\nrepeats = '3_sks dog=4'\n", "plain.toml"))
    assert load_training_dataset(plain).subsets[0] == train


@pytest.mark.parametrize("line, message", [
    ("face_crop_aug_range = [2.0, 4.0]", "kohya.toml:6: [[datasets]] #1 subsets.#1.face_crop_aug_range: kohya's "
                                         "face_crop_aug_range has no equivalent here"),
    ("num_repeats = 'four'", "kohya.toml:6: [[datasets]] #1 subsets.#1.num_repeats: expected an integer"),
    ("colour_aug = true", "kohya.toml:6: [[datasets]] #1 subsets.#1.colour_aug: unknown key. Did you mean color_aug"),
])
def test_kohya_keys_without_an_equivalent_or_of_a_wrong_type_name_their_line(tmp_path, data, capsys, line, message):
    write(tmp_path, f"[[datasets]]\nresolution = 64\n\n  [[datasets.subsets]]\n  image_dir = '{data}/3_sks dog'\n"
                    f"  {line}\n", "kohya.toml")
    assert main(["train", write(tmp_path, "[dataset]\nkohya_config = 'kohya.toml'\n")]) == 2
    assert message in capsys.readouterr().err


def test_kohya_and_run_config_giving_one_key_two_values_is_refused(tmp_path, data):
    from trainer.cli.config import ConfigFileError

    with pytest.raises(ConfigFileError, match="sets resolution = .64, 64. but .buckets. resolution is .512, 512."):
        parse_config(read_toml(write(tmp_path, f"[buckets]\nresolution = 512\n[[datasets]]\nresolution = 64\n"
                                               f"[[datasets.subsets]]\nimage_dir = '{data}/3_sks dog'\n")))


GUI = {
    "LoRA_type": "LyCORIS/LoHa", "network_dim": 16, "network_alpha": 8, "max_resolution": "768,512",
    "learning_rate": 0.0002, "unet_lr": 0.0001, "text_encoder_lr": 0, "lr_warmup": 10, "lr_scheduler": "constant",
    "mixed_precision": "no", "save_precision": "float", "epoch": 4, "max_train_epochs": 0, "train_batch_size": 2,
    "optimizer": "AdamW", "optimizer_args": "weight_decay=0.1", "noise_offset_type": "Multires",
    "noise_offset": 0.05, "multires_noise_iterations": 6, "multires_noise_discount": 0.3, "cache_latents": True,
    "cache_latents_to_disk": True, "sample_sampler": "euler_a", "shuffle_caption": True, "keep_tokens": 1,
    "xformers": "xformers", "wandb_api_key": "", "sdxl": False, "output_name": "gui", "seed": 3,
    "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 1024, "bucket_reso_steps": 64,
    "module_dropout": 0.1, "block_dims": "", "debiased_estimation_loss": True, "clip_skip": 1,
}


def test_a_kohya_ss_gui_config_imports_with_what_has_no_equivalent_listed(tmp_path, data, capsys):
    gui = tmp_path / "gui.json"
    gui.write_text(json.dumps({**GUI, "train_data_dir": data, "pretrained_model_name_or_path": "builtin-tiny"},
                              indent=2), encoding="utf-8")
    out = str(tmp_path / "imported.toml")
    assert main(["import-kohya", str(gui), "-o", out]) == 0
    report = capsys.readouterr().out
    assert 'xformers = "xformers" (line' in report and "wandb_api_key" in report and "block_dims" in report
    config = load_config(out)
    assert network_config(config).algorithm == "LoHa" and network_config(config).train_on == "unet"
    assert (config["network"]["rank"], config["network"]["alpha"], config["network"]["module_dropout"]) == (16, 8, 0.1)
    assert bucket_settings(config).resolution == (768, 512) and config["buckets"]["cache"] == "disk"
    optimizer = optimizer_config(config)
    assert (optimizer.learning_rate, optimizer.warmup_ratio, optimizer.extra_args) == (1e-4, 0.1, "weight_decay=0.1")
    settings = train_settings(config)
    assert (settings.precision, settings.epochs, settings.batch_size, settings.seed) == ("fp32", 4, 2, 3)
    assert settings.objective.multires_noise_iterations == 6 and settings.objective.noise_offset == 0.0
    assert settings.objective.debiased_estimation and config["save"]["precision"] == "fp32"
    assert config["previews"]["sample_sampler"] == "euler_ancestral"
    with open(out, encoding="utf-8") as handle:
        assert "# Set in the GUI config but without an equivalent here (NOT used by this run):" in handle.read()
    assert main(["import-kohya", str(gui), "-o", out]) == 2           # never replaced without --force
