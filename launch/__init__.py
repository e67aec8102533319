"""Launch scripts: TPU VM / Slurm launchers and AOT compilation for TPU slices."""
