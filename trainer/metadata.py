"""kohya's ss_* training metadata for a finished (or interrupted) run; every value a string, as kohya writes."""

from __future__ import annotations

import datetime
import time

from .dataset.caption_processing import CaptionOptions
from .latent_cache import LatentCache, tag_frequency
from .lora_file import json_text, model_spec
from .loop import TrainProgress
from .families import family_by_key
from .networks import NetworkConfig
from .optim import OptimizerConfig
from .plan import TrainPlan, TrainSettings



def training_metadata(*, run_name: str, session_id: str, cache: LatentCache, network: NetworkConfig,
                      optimizer: OptimizerConfig, settings: TrainSettings, plan: TrainPlan,
                      progress: TrainProgress, base_model_version: str, prediction_type: str,
                      precision: str, clip_skip: int | None = None, fp8_base: bool = False) -> dict[str, str]:
    """Metadata as of now: interrupted and intermediate saves carry their own step, epoch and time."""
    resolution = cache.settings.resolution
    # kohya writes one dataset's caption settings; with several subsets, the first training subset's
    captions = next((s.caption_options for s in cache.dataset.subsets if not s.is_reg), CaptionOptions())
    cached = cache.images_per_subset()         # images that were cached, after any skipped files
    dataset_dirs = {s.name: {"n_repeats": s.repeats, "img_count": cached[s.name]}
                    for s in cache.dataset.subsets if not s.is_reg and cached[s.name]}
    reg_dirs = {s.name: {"n_repeats": s.repeats, "img_count": cached[s.name]}
                for s in cache.dataset.subsets if s.is_reg and cached[s.name]}
    values = {
        "ss_session_id": session_id,
        "ss_training_started_at": progress.started_at,
        "ss_training_finished_at": progress.finished_at or time.time(),
        "ss_output_name": run_name,
        "ss_learning_rate": optimizer.learning_rate,
        "ss_text_encoder_lr": optimizer.text_encoder_lr if network.train_text_encoder else None,
        "ss_unet_lr": optimizer.learning_rate,
        "ss_num_train_images": cache.num_train_images,
        "ss_num_validation_images": progress.validation_images,
        "ss_num_reg_images": cache.num_reg_images,
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_num_epochs": plan.epochs,
        "ss_gradient_checkpointing": settings.gradient_checkpointing,
        "ss_gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "ss_max_train_steps": plan.total_steps,
        "ss_lr_warmup_steps": optimizer.warmup_steps(plan.total_steps),
        "ss_lr_scheduler": optimizer.scheduler_string(),
        "ss_network_module": network.network_module,
        "ss_network_dim": network.rank,
        "ss_network_alpha": network.effective_alpha,
        "ss_network_dropout": network.network_dropout or None,
        "ss_mixed_precision": "no" if precision == "fp32" else precision,
        "ss_full_fp16": False,
        "ss_v2": family_by_key(base_model_version).v2,
        "ss_base_model_version": family_by_key(base_model_version).version,
        "ss_clip_skip": clip_skip,
        "ss_max_token_length": None if settings.max_token_length == 75 else settings.max_token_length,
        "ss_cache_latents": True,
        "ss_seed": settings.seed,
        "ss_lowram": False,
        "ss_noise_offset": None,
        "ss_multires_noise_iterations": None,
        "ss_multires_noise_discount": None,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False,
        "ss_training_comment": None,
        # the base checkpoint's file is known only to the graph: Save Safetensors fills these in where it is
        "ss_sd_model_name": "unknown",
        "ss_sd_model_hash": "unknown",
        "ss_new_sd_model_hash": "unknown",
        "ss_sd_scripts_commit_hash": "comfyui-lora-trainer",
        "ss_optimizer": optimizer.optimizer_string(),
        "ss_max_grad_norm": optimizer.max_grad_norm,
        "ss_caption_dropout_rate": captions.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": captions.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": captions.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": settings.prior_loss_weight,
        "ss_min_snr_gamma": None,
        "ss_scale_weight_norms": settings.scale_weight_norms or None,
        "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False,
        "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": "l2",
        "ss_huber_schedule": "snr",
        "ss_huber_scale": 1.0,
        "ss_huber_c": 0.1,
        "ss_fp8_base": fp8_base,             # the base weights were float8 (kohya's --fp8_base)
        "ss_fp8_base_unet": fp8_base,
        "ss_validation_seed": settings.validation.seed if settings.validation.seed >= 0 else None,
        "ss_validation_split": settings.validation.split,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": settings.validation.every_n_epochs or None,
        "ss_validate_every_n_steps": settings.validation.every_n_steps or None,
        "ss_resize_interpolation": None if cache.interpolation == "auto" else cache.interpolation,
        "ss_batch_size_per_device": settings.batch_size,
        "ss_total_batch_size": settings.batch_size * settings.gradient_accumulation_steps,
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_color_aug": False,
        "ss_flip_aug": cache.flip_aug,
        "ss_random_crop": False,
        "ss_shuffle_caption": captions.shuffle_caption,
        "ss_keep_tokens": captions.keep_tokens,
        "ss_enable_bucket": cache.settings.enabled,
        "ss_bucket_no_upscale": cache.settings.no_upscale,
        "ss_min_bucket_reso": cache.settings.min_bucket_reso,
        "ss_max_bucket_reso": cache.settings.max_bucket_reso,
        "ss_bucket_info": json_text(cache.bucket_info()),
        "ss_dataset_dirs": json_text(dataset_dirs),
        "ss_reg_dataset_dirs": json_text(reg_dirs),
        "ss_tag_frequency": json_text(tag_frequency(cache)),
        "ss_steps": progress.step,
        "ss_epoch": progress.epoch,
    }
    if progress.validation_losses:            # ours, not kohya's: the latest validation loss and its step
        values["ss_validation_loss"] = progress.validation_losses[-1][1]
        values["ss_validation_loss_step"] = progress.validation_losses[-1][0]
    values.update(settings.objective.metadata())          # loss type, min-SNR, noise offset... as kohya records
    if prediction_type == "flow":                          # timestep sampling, shift, guidance (resolved)
        values.update(settings.flow.metadata())
    metadata = {key: str(value) for key, value in values.items()}
    metadata.update(model_spec(base_model_version, run_name, resolution, prediction_type, datetime.datetime.now()))
    metadata.update(settings.objective.modelspec())
    if clip_skip:
        metadata["modelspec.encoder_layer"] = str(clip_skip)
    network_args = network.network_args()
    if optimizer.loraplus_lr_ratio:            # kohya takes LoRA+ as a network argument
        network_args["loraplus_lr_ratio"] = str(optimizer.loraplus_lr_ratio)
    if network_args:                          # kohya writes it only when --network_args were given
        metadata["ss_network_args"] = json_text(network_args)
    return metadata

