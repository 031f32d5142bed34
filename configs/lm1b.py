"""MDLM on LM1B (Sahoo et al. 2024): sentences one per row, length 128.

Target: perplexity <= 27.04 on the test split after 33B tokens (MDLM, Table 1).
That perplexity is per token of bert-base-uncased on lowercased text; this
recipe's is per token of its own 32k sentencepiece model on the original
text, so the two are not the same number (matching it needs MDLM's tokenizer
and lowercasing, which this codebase does not ship). MDLM's recipe: unpacked
sequences padded to 128, log-linear schedule, no time conditioning, AdamW
3e-4 with 2,500 warmup steps then constant, EMA 0.9999, batch 512.

Prepare the data and the tokenizer once (downloads about 1.7 GB):

  python -m diffusion_lm.prepare --config=configs/lm1b.py \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m diffusion_lm.train_tokenizer --config=configs/lm1b.py \
      --config.data.data_dir=$TFDS_DATA_DIR --vocab_size=32000 \
      --model_type=unigram --max_documents=2000000

Train on a TPU v5p-32 slice (launch/README.md), created for the run and
deleted after it; the data dir must exist on every worker:

  launch/tpu_vm.sh --name=lm1b --zone=us-east5-a --accelerator=v5p-32 \
      --spot --delete_after -- python -m diffusion_lm.main \
      --config=configs/lm1b.py --workdir=gs://BUCKET/runs/lm1b \
      --config.data.data_dir=$TFDS_DATA_DIR

or on one SLURM node of 8 H100s (one process per GPU):

  sbatch --nodes=1 launch/gpu_slurm.sbatch python -m diffusion_lm.main \
      --config=configs/lm1b.py --workdir=/shared/runs/lm1b

Budget (`python -m diffusion_lm.budget --config=configs/lm1b.py
--vocab_size=32000`): 134.1M parameters, 6.71e8 training FLOPs per token over
3.28e10 tokens = 2.20e19 FLOPs; at 40% MFU, 33 TPU v5p chip-hours (2.1 h on
v5p-32) or 15.4 H100 hours (1.9 h on 8 GPUs).

`configs/lm1b.py:tiny` is the same recipe with a model and run small enough
for a CPU test.
"""

from diffusion_lm import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.model.update(config_base.SMALL_MODEL, time_conditioning=False)
  c.data.update(corpus="lm1b", tokenizer="sentencepiece",
                tokenizer_model="spm_unigram_32000.model", seq_len=128,
                packing="pad")
  c.data.tokenizer_train.update(vocab_size=32000, model_type="unigram",
                                max_documents=2_000_000)
  c.diffusion.update(schedule="loglinear", eps=1e-3)
  # 500k steps x 512 x 128 = 33B tokens.
  c.train.update(steps=500_000, batch_size=512, learning_rate=3e-4,
                 warmup_steps=2500, final_lr_fraction=1.0, weight_decay=0.0,
                 b2=0.999, grad_clip=1.0, ema_decay=0.9999, log_every=500,
                 eval_every=10_000, checkpoint_every=5000)
  c.eval.update(batch_size=512, batches_during_training=16, split="test")
  return config_base.variant(c, variant)
