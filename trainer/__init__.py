"""The trainer process (installed as ``nessa.trainer``): models, epoch loop, checkpoints."""
