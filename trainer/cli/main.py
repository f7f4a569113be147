"""`python -m trainer`: demo | train | resume | inspect | import-kohya | keys.

Exit status: 0 done, 2 a setting or file to fix (the message names it, with its line in a config), 130
cancelled with Ctrl-C (the message says how to resume), 1 anything else (with its traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager

from ..errors import TrainerError
from .config import RunConfig, load_config, parse_config, read_toml, source_from_text
from .models import is_checkpoint_file

EXIT_SETTINGS, EXIT_CANCELLED = 2, 130


def say(text: str) -> None:
    print(text, flush=True)


def quiet_session_log() -> None:
    """The run layer logs its own lines for ComfyUI's console ("type the name into Train's resume_from"); here the
    progress bar and the stop message say it, so those records are left out. Other warnings still show."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: not (record.name == "root" and str(record.msg).startswith("lora-trainer ")))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(levelname)s: %(message)s")


@contextmanager
def tiny_threads(config: RunConfig):
    """One torch thread while the built-in tiny model trains (tiny convolutions: ~100x faster than two on small
    CPUs), and the caller's count back afterwards (a test may call the command line in its own process)."""
    import torch

    previous = torch.get_num_threads()
    if config["model"]["path"] == "builtin-tiny":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def with_comfyui(config: RunConfig, argv: list[str]) -> int | None:
    """A checkpoint file trains inside the pack with ComfyUI started (comfy_backend); None: train here."""
    from .comfy_backend import inside_pack, run_inside_pack

    if is_checkpoint_file(config["model"]["path"]) and not inside_pack():
        return run_inside_pack(argv, config["model"]["device"])
    return None


def print_files(files) -> None:
    if files is None:                       # another process of a torchrun run: rank 0 reports
        return
    say(f"\n{files.summary_text}\n\nrun {files.run_name}: LoRA {files.lora}\n  loss graph {files.loss_graph}\n"
        f"  summary {files.summary}")


def command_demo(args, argv) -> int:
    from .demo import run_demo

    run_demo(args.output)
    return 0


def gui_config(path: str) -> RunConfig:
    from .kohya_gui import import_gui_config

    imported = import_gui_config(path)
    say(imported.report())
    text = imported.toml_text(path)
    return parse_config(source_from_text(text, path + " (as TOML)", os.path.dirname(os.path.abspath(path))))


def command_train(args, argv) -> int:
    from .run import train

    if bool(args.config) == bool(args.kohya_gui_json):
        raise TrainerError("train takes a config TOML, or --kohya-gui-json FILE (a kohya_ss GUI config), not both.")
    config = load_config(args.config) if args.config else gui_config(args.kohya_gui_json)
    handed_over = with_comfyui(config, argv)
    if handed_over is not None:
        return handed_over
    with tiny_threads(config):
        print_files(train(config, say=say))
    return 0


def command_resume(args, argv) -> int:
    from .run import CONFIG_FILE, located_run, train

    runs_folder, run_name = located_run(args.target, args.runs_folder)
    config = load_config(os.path.join(runs_folder, run_name, CONFIG_FILE))
    config.values["output"]["runs_folder"] = runs_folder        # the folder it is in now, if it moved
    handed_over = with_comfyui(config, argv)
    if handed_over is not None:
        return handed_over
    say(f"resuming run {run_name} from {os.path.join(runs_folder, run_name)}")
    with tiny_threads(config):
        print_files(train(config, resume_from=run_name, say=say))
    return 0


def command_inspect(args, argv) -> int:
    from .comfy_backend import comfy_lora_key_map, comfyui_checkout
    from .inspect_file import inspect_lora

    key_map = comfy_lora_key_map if comfyui_checkout() and not args.no_comfyui else None
    result = inspect_lora(args.file, key_map)
    say("\n".join(result.lines))
    if key_map is None:
        say("ComfyUI key map: not checked (no ComfyUI found; set COMFYUI_PATH)" if not args.no_comfyui else
            "ComfyUI key map: not checked (--no-comfyui)")
    return 0 if result.all_kohya is not False and result.comfy_takes_all is not False else 1


def command_import(args, argv) -> int:
    from .kohya_gui import import_gui_config

    imported = import_gui_config(args.file)
    text = imported.toml_text(args.file)
    if os.path.exists(args.output) and not args.force:
        raise TrainerError(f"{args.output} exists; choose another name or pass --force to replace it.")
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    say(imported.report())
    parse_config(read_toml(args.output))             # the written file reads back, or says what to fix
    say(f"wrote {args.output}; train with: python -m trainer train {args.output}")
    return 0


def command_keys(args, argv) -> int:
    from .options import example_toml, reference_markdown

    say(reference_markdown() if args.markdown else example_toml())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train kohya-compatible LoRAs without "
                                     "ComfyUI's interface, on the same engine as the nodes (docs/cli.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a LoRA on the built-in tiny model and sample dataset (a minute "
                                            "on a CPU): shows the pipeline, not image quality")
    demo.add_argument("--output", default="demo-output", help="output folder (default: ./demo-output)")
    demo.set_defaults(handler=command_demo)
    train = commands.add_parser("train", help="train from a config TOML (or a kohya_ss GUI config JSON)")
    train.add_argument("config", nargs="?", help="the run's TOML (docs/cli.md; `keys --toml` prints every key)")
    train.add_argument("--kohya-gui-json", metavar="FILE", help="a kohya_ss GUI config JSON instead of a TOML")
    train.set_defaults(handler=command_train)
    resume = commands.add_parser("resume", help="continue a stopped run from its newest state, same settings")
    resume.add_argument("target", help="the run folder (as the stop message names it), one of its state-* folders, "
                                       "or a run name in --runs-folder")
    resume.add_argument("--runs-folder", default="output/lora-trainer", help="where to look for a run name")
    resume.set_defaults(handler=command_resume)
    inspect = commands.add_parser("inspect", help="what a LoRA file holds, and whether its keys are kohya's")
    inspect.add_argument("file")
    inspect.add_argument("--no-comfyui", action="store_true", help="skip the check against ComfyUI's key map")
    inspect.set_defaults(handler=command_inspect)
    importer = commands.add_parser("import-kohya", help="a kohya_ss GUI config JSON as this trainer's TOML")
    importer.add_argument("file")
    importer.add_argument("-o", "--output", required=True, help="the TOML to write")
    importer.add_argument("--force", action="store_true", help="replace an existing output file")
    importer.set_defaults(handler=command_import)
    keys = commands.add_parser("keys", help="every config key with its default (TOML), or --markdown (docs)")
    keys.add_argument("--markdown", action="store_true")
    keys.set_defaults(handler=command_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .run import RunStopped

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    quiet_session_log()
    try:
        return args.handler(args, argv)
    except RunStopped as exc:
        print(f"\n{exc}", file=sys.stderr, flush=True)
        return EXIT_CANCELLED if exc.cancelled else EXIT_SETTINGS
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_SETTINGS
    except KeyboardInterrupt:
        print("\nCancelled before training started; nothing was written.", file=sys.stderr, flush=True)
        return EXIT_CANCELLED
