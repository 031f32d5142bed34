"""MD4 / MDLM on OpenWebText: length 1024, documents wrapped, batch 512, 1M steps.

Target: perplexity <= 23.05 on the 100k held-out documents (masked diffusion
at this model size in MDLM, Sahoo et al. 2024, and MD4, Shi et al. 2024).
That perplexity is per GPT-2 token; this recipe's is per token of its own
50k BPE sentencepiece model, so the two compare through total bits: the
papers' number is 2 ** (total bits / GPT-2 tokens of the held-out split).
MD4's recipe: linear schedule, time conditioning, AdamW 3e-4 with 2,000
warmup steps and cosine decay, b2 0.999, EMA 0.9999, no weight decay or
clipping.

Prepare the data and the tokenizer once (downloads about 12 GB, or put the
archive or its .txt files in --manual_dir):

  python -m diffusion_lm.prepare --config=configs/owt.py \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m diffusion_lm.train_tokenizer --config=configs/owt.py \
      --config.data.data_dir=$TFDS_DATA_DIR --vocab_size=50257 \
      --model_type=bpe --max_documents=100000

Train on a TPU v5p-128 slice (launch/README.md), queued until the capacity
is there and deleted after the run; the data dir must exist on every worker:

  launch/tpu_vm.sh --name=owt --zone=us-east5-a --accelerator=v5p-128 \
      --queued --spot --delete_after -- python -m diffusion_lm.main \
      --config=configs/owt.py --workdir=gs://BUCKET/runs/owt \
      --config.data.data_dir=$TFDS_DATA_DIR

or on 8 SLURM nodes of 8 H100s (one process per GPU; the workdir on storage
every node sees):

  sbatch --nodes=8 launch/gpu_slurm.sbatch python -m diffusion_lm.main \
      --config=configs/owt.py --workdir=/shared/runs/owt

Budget (`python -m diffusion_lm.budget --config=configs/owt.py
--vocab_size=50257`): 163.3M parameters, 8.54e8 training FLOPs per token over
5.24e11 tokens = 4.48e20 FLOPs; at 40% MFU, 678 TPU v5p chip-hours (10.6 h on
v5p-128) or 315 H100 hours (39 h on one node of 8, 4.9 h on 8 nodes).

`configs/owt.py:tiny` is the same recipe with a model and run small enough for
a CPU test.
"""

from diffusion_lm import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.model.update(config_base.SMALL_MODEL, time_conditioning=True)
  c.data.update(corpus="openwebtext", tokenizer="sentencepiece",
                tokenizer_model="spm_bpe_50257.model", seq_len=1024,
                packing="wrap")
  c.data.tokenizer_train.update(vocab_size=50257, model_type="bpe",
                                max_documents=100_000)
  c.diffusion.schedule = "linear"
  c.train.update(config_base.MD4_TRAIN, eval_every=10_000)
  # OpenWebText has no test split: the held-out documents are "validation".
  c.eval.update(batch_size=512, batches_during_training=16, split="validation")
  return config_base.variant(c, variant)
