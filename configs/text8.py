"""MD4 on text8 (Shi et al. 2024): characters, length 256, batch 512, 1M steps.

Target: <= 1.37 bits per character on the test split (MD4's text8 result with
this model size; MD4's text8 config: linear schedule, time conditioning,
AdamW 3e-4 with 2,000 warmup steps and cosine decay, b2 0.999, EMA 0.9999,
no weight decay or clipping).

Prepare the data once (downloads text8.zip, about 31 MB):

  python -m diffusion_lm.prepare --config=configs/text8.py \
      --config.data.data_dir=$TFDS_DATA_DIR

Train on a TPU v5p-32 slice (16 chips; launch/README.md), created for the
run and deleted after it; the data dir must exist on every worker:

  launch/tpu_vm.sh --name=text8 --zone=us-east5-a --accelerator=v5p-32 \
      --spot --delete_after -- python -m diffusion_lm.main \
      --config=configs/text8.py --workdir=gs://BUCKET/runs/text8 \
      --config.data.data_dir=$TFDS_DATA_DIR

or on one SLURM node of 8 H100s (one process per GPU):

  sbatch --nodes=1 launch/gpu_slurm.sbatch python -m diffusion_lm.main \
      --config=configs/text8.py --workdir=/shared/runs/text8

Budget (`python -m diffusion_lm.budget --config=configs/text8.py`): 86.2M
parameters, 5.38e8 training FLOPs per token over 1.31e11 tokens = 7.05e19
FLOPs; at 40% MFU, 107 TPU v5p chip-hours (6.7 h on v5p-32) or 49.5 H100
hours (6.2 h on 8 GPUs).

`configs/text8.py:tiny` is the same recipe with a model and run small enough
for a CPU test.
"""

from diffusion_lm import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.model.update(config_base.SMALL_MODEL, time_conditioning=True)
  c.data.update(corpus="text8", tokenizer="char", seq_len=256, packing="wrap")
  c.diffusion.schedule = "linear"
  c.train.update(config_base.MD4_TRAIN, eval_every=5000)
  c.eval.update(batch_size=512, batches_during_training=16, split="test")
  return config_base.variant(c, variant)
