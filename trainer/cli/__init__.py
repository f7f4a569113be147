"""The command-line trainer (`python -m trainer`): a TOML of every node option, kohya's configs, the demo,
resume and inspect, on the same engine path as the nodes (load_dataset_folder -> cache_latents ->
trainer.session.run_session). docs/cli.md describes it; options.py is the table of keys."""
