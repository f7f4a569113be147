"""One process of a data-parallel test run (tests/engine/test_distributed.py); also the single-process reference.

    python -m torch.distributed.run --nproc_per_node 2 tests/engine/distributed_worker.py OUT

In OUT, on every process: a tiny dataset (rank 0 writes it, so all read the same paths), the tiny diffusers
UNet, VAE and text encoder of the engine tests, built from fixed seeds, so every process has the same model and
latents. Then two runs of the same settings: `whole/` trains to the end; `resumed/` is cancelled at STOP_AT
(every process asks Cancel alike) and resumed from its state. Both take a validation loss and "render" previews
(a file named by the rank that wrote it). Rank 0 writes each run's final LoRA (fp32, as the host does) and
`result.json` (run name, losses, validation losses) into the run's folder. Last, every process asks to resume a
run that does not exist and writes the error it got into `refused-rank<r>.txt`.
"""

from __future__ import annotations

import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:           # torchrun runs this file as a script: its folder is sys.path[0]
    sys.path.insert(0, REPO_ROOT)

from tests.helpers import make_kohya_folder  # noqa: E402
from trainer.dataset import load_dataset_folder  # noqa: E402
from trainer.dataset.buckets import BucketSettings  # noqa: E402
from trainer.dataset.caption_processing import CaptionOptions  # noqa: E402
from trainer.latent_cache import cache_latents  # noqa: E402
from trainer.lora_file import save_lora  # noqa: E402
from trainer.networks import NetworkConfig  # noqa: E402
from trainer.optim import OptimizerConfig  # noqa: E402
from trainer.plan import TrainSettings  # noqa: E402
from trainer.session import RunFolders, run_session  # noqa: E402
from trainer.validation import ValidationSettings  # noqa: E402

# batch 3 over 2 processes: the 64x64 bucket (2 images x 2 repeats) gives batches of 3 (shares 2 + 1) and 1
# (rank 1 has none), the 128x64 bucket a batch of 2 (1 + 1); 3 batches per epoch, 9 steps
SETTINGS = TrainSettings(output_name="parallel", epochs=3, batch_size=3, seed=11, precision="fp32",
                         save_every_n_steps=4, sample_every_n_steps=3,
                         validation=ValidationSettings(every_n_steps=3, every_n_epochs=0))
NETWORK = NetworkConfig(rank=2, alpha=1)
OPTIMIZER = OptimizerConfig(optimizer_type="AdamW", learning_rate=2e-3, warmup_ratio=0.2)
# shuffled and dropped tags: caption randomness must follow the sample, not the process
CAPTIONS = CaptionOptions(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.3)
STOP_AT = 5                                # Cancel at the start of step 5: 4 steps done, mid-epoch 2


class Stopped(Exception):
    pass


def write_dataset(root: str) -> str:
    return make_kohya_folder(root, {"2_sks dog": [(64, 64), (64, 64), (128, 64)]},
                             {"2_sks dog/0": "sks dog, grass, red collar, sunny",
                              "2_sks dog/1": "sks dog, sofa, sleeping",
                              "2_sks dog/2": "sks dog, beach, running, waves"})


def tiny_cache(root: str):
    """The dataset's latents through the engine tests' tiny VAE (fixed seed): the same on every process."""
    from tests.engine.conftest import tiny_vae
    from trainer.diffusers_adapter import DiffusersVAEEncoder

    dataset = load_dataset_folder(root, caption_options=CAPTIONS, flip_aug=True)
    return cache_latents(dataset, DiffusersVAEEncoder(tiny_vae()), BucketSettings((128, 64), 64, 128, 64))


def fresh_model():
    """The engine tests' tiny UNet and text encoder (fixed seeds), new for each run."""
    from tests.engine.conftest import HashedWordEncoder, tiny_unet
    from trainer.diffusers_adapter import FunctionCaptionEncoder, diffusers_sd1_trainable

    return diffusers_sd1_trainable(tiny_unet(), FunctionCaptionEncoder(HashedWordEncoder()))


def folders_in(out: str) -> RunFolders:
    folders = RunFolders(os.path.join(out, "loras"), os.path.join(out, "runs"))
    os.makedirs(folders.loras, exist_ok=True)
    return folders


def keep_result(out: str, session) -> None:
    """What the host does at the end of a run (on rank 0 only): the final LoRA, and the losses for the test."""
    save_lora(session.lora, os.path.join(out, "loras"), session.run_name, precision="fp32")
    progress = session.result.progress
    with open(os.path.join(out, "result.json"), "w", encoding="utf-8") as handle:
        json.dump({"run_name": session.run_name, "losses": progress.losses,
                   "validation_losses": progress.validation_losses}, handle)


def preview_writer(distributed):
    """A stand-in for the host's previews: a file per preview, named by the rank that rendered it."""
    rank = distributed.rank if distributed else 0

    def on_sample(progress, run_folder: str) -> None:
        os.makedirs(os.path.join(run_folder, "samples"), exist_ok=True)
        with open(os.path.join(run_folder, "samples", f"step{progress.step}-rank{rank}.txt"), "w") as handle:
            handle.write("preview\n")

    return on_sample


def session_for(out: str, cache, distributed, **options):
    return run_session(fresh_model(), cache, NETWORK, OPTIMIZER, SETTINGS, folders_in(out), validation_latents=cache,
                       on_sample=preview_writer(distributed), distributed=distributed, **options)


def train_whole(out: str, cache, distributed=None) -> None:
    session = session_for(out, cache, distributed)
    if distributed is None or distributed.is_main:
        keep_result(out, session)


def train_stopped_and_resumed(out: str, cache, distributed=None) -> None:
    checks = {"n": 0}

    # under torchrun only the last process sees the Cancel: every process must stop at that same check
    cancelled_here = distributed is None or distributed.rank == distributed.world_size - 1

    def check_cancel() -> None:
        checks["n"] += 1
        if checks["n"] == STOP_AT and cancelled_here:
            raise Stopped()

    from trainer.session import OtherProcessStopped

    try:
        session_for(out, cache, distributed, check_cancel=check_cancel, is_cancel=lambda exc: isinstance(exc, Stopped))
    except (Stopped, OtherProcessStopped):
        pass
    session = session_for(out, cache, distributed, resume_from=SETTINGS.output_name)
    if distributed is None or distributed.is_main:
        keep_result(out, session)


def refuse_a_missing_run(out: str, cache, distributed) -> None:
    """Rank 0 looks for the run; every process must get its error (none may wait for the others)."""
    from trainer.errors import TrainerError

    rank = distributed.rank if distributed else 0
    try:
        session_for(os.path.join(out, "whole"), cache, distributed, resume_from="no_such_run")
        refused = "nothing"
    except TrainerError as exc:
        refused = f"{type(exc).__name__}: {exc}"
    with open(os.path.join(out, f"refused-rank{rank}.txt"), "w", encoding="utf-8") as handle:
        handle.write(refused)


def main(out: str) -> None:
    from trainer.distributed import context_from_environment

    distributed = context_from_environment()
    data = os.path.join(out, "data")
    if distributed is None or distributed.is_main:
        write_dataset(data)
    if distributed is not None:
        distributed.barrier()               # the dataset is written before any process reads it
    cache = tiny_cache(data)
    try:
        train_whole(os.path.join(out, "whole"), cache, distributed)
        train_stopped_and_resumed(os.path.join(out, "resumed"), cache, distributed)
        refuse_a_missing_run(out, cache, distributed)
    finally:
        if distributed is not None:
            distributed.close()


if __name__ == "__main__":
    main(sys.argv[1])
