"""The trainer's parts, one concern each; the loop and the `train`/`resume` entry points are in
tinyscale/train.py.

- `run_folder.py`: a run's folder while one process writes into it (hidden until its first
  checkpoint, locked, resumed from its newest good checkpoint); also used by `incentivize`.
- `allocator.py`: glibc settings that keep a step's freed activations for the next step.
- `checkpoints.py`: one checkpoint's files (save, load) and which checkpoints are kept.
- `distributed.py`: rank, world size and device under `torchrun` (DDP), or of a single process.
- `head_loss.py`: the output head's cross-entropy without materialising the logits, and its kernels.
- `periodic_eval.py`: the validation loss measured during training.
- `provenance.py`: the code and machine a run was trained with (run.json).
"""
