"""Every config field with its default; recipes in configs/ override a few.

Groups: model, data, diffusion, train, eval, sample, mesh. Config files are
loaded with `config_flags.DEFINE_config_file(lock_config=True)`, so a
misspelt override (`--config.train.stpes=1`) fails and names the field.
"""

import dataclasses

import ml_collections

from diffusion_lm.diffusion import sampler_options


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = dict(
      # 'diffusion': the bidirectional denoiser trained with the NELBO;
      # 'block_diffusion': the row in blocks of block_size, each denoised
      # given the clean blocks before it (BD3-LM; transformer.block_attention);
      # 'autoregressive': the same transformer, causal, trained on next tokens.
      objective="diffusion",
      block_size=0,  # block_diffusion: positions per block (divides data.seq_len).
      num_layers=4,
      num_heads=4,
      head_dim=32,
      embed_dim=128,
      mlp_dim=512,
      time_conditioning=False,  # Read the masking rate (MDLM: not needed).
      dtype="float32",  # Compute dtype: bfloat16 on accelerators.
      rope_base=10_000.0,
      attention_impl="",  # '' lets XLA choose; or 'xla', 'cudnn'.
      # > 0: the input layer mixes each token's embedding with the k on either
      # side (before it only, causal); see transformer.LocalMixing.
      local_width=0,
      # The model runs its rows in this many independent slices (the same
      # numbers): on a CPU 4 is 1.2-1.4x faster to train and sample
      # (batching.in_slices). Must divide train.batch_size.
      batch_slices=1,
      # Recompute each block's activations in the backward pass: 'none',
      # 'full' (keep only each block's input) or 'dots' (keep the weight
      # matmuls' outputs); transformer.REMAT_POLICIES.
      remat="none",
      # Stack the blocks and run them with one lax.scan: compile time stays
      # flat in depth. A checkpoint resumes only with its own setting.
      scan_layers=False,
  )

  c.data = dict(
      # 'stdlib' | 'text_files' | 'markov' | 'text8' | 'lm1b' | 'openwebtext'
      corpus="stdlib",
      files="",  # A glob, for corpus='text_files'.
      # text_files: read files that the glob reaches through a symlink leading
      # out of its directory (off: such a file is an error naming it).
      follow_symlinks=False,
      # text_files: the largest file read (each is one document, read whole).
      max_file_bytes=64 * 2**20,
      data_dir="",  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
      tokenizer="byte",  # 'byte' | 'char' (text8's 27 symbols) | 'sentencepiece'
      # sentencepiece: a .model file, absolute or relative to the corpus's
      # prepared data directory (where diffusion_lm.train_tokenizer puts it).
      tokenizer_model="",
      # vocab_size > 0: when data.tokenizer_model does not exist yet, the
      # main job first trains it on the train split (tokenizer_training);
      # max_documents: on the first N training documents (0: all).
      tokenizer_train=dict(vocab_size=0, model_type="unigram", max_documents=0),
      seq_len=128,
      packing="wrap",  # 'wrap': concatenate with EOS and cut | 'pad': one document per row
      # True: each position is told its document's extent (segment ids;
      # padding out of loss and attention), so the bound is on
      # -log p(x | length) and metric names end in '_given_length'.
      condition_on_length=False,
      # corpus='openwebtext': the last documents held out for validation (MDLM).
      validation_documents=100_000,
      # corpus='markov': a random order-k chain with a known entropy rate.
      # min_document_length > 0: lengths uniform on min .. document_length.
      markov=dict(alphabet_size=8, order=2, concentration=0.3,
                  num_documents=2000, document_length=256,
                  min_document_length=0, seed=0),
  )

  c.diffusion = dict(
      schedule="linear",  # 'linear' | 'cosine' | 'polynomial' | 'loglinear'
      power=2.0,  # polynomial: alpha(t) = 1 - t^power
      eps=1e-3,  # loglinear: alpha(1) = eps
      times="stratified",  # Training's t: 'stratified' | 'uniform' (iid).
      # True: each step scores half the batch's rows twice, with
      # complementary masks (objective.train_loss).
      complementary_masks=False,
  )

  c.train = dict(
      steps=1000,
      batch_size=32,  # Global, over all processes.
      learning_rate=1e-3,
      warmup_steps=100,
      final_lr_fraction=0.1,  # Cosine decay to this fraction of the peak (1 = constant).
      weight_decay=0.01,
      b1=0.9,
      b2=0.99,
      grad_clip=1.0,  # Global-norm clipping; 0 = off.
      ema_decay=0.0,  # 0 = no EMA; evaluation and sampling use EMA when on.
      seed=0,
      log_every=50,
      eval_every=500,  # On eval.batches_during_training validation batches.
      checkpoint_every=500,
      max_checkpoints=2,
      # True: resume (and --mode=eval) only from checkpoints verified against
      # their checksums; one without them is passed over like a damaged one.
      require_checksums=False,
      # A step whose loss or gradient is not finite (NaN, inf) stops the run
      # (no such state is saved); True: the step keeps the old parameters
      # and optimizer state instead, counted in train/skipped_steps.
      skip_nonfinite_steps=False,
      # Gradient accumulation: each step runs the batch in this many equal
      # microbatches, one after another (the activations of one at a time).
      microbatches=1,
      # (first, last): steps first..last are traced by jax.profiler into
      # <workdir>/profile (TensorBoard's profile tab); () = off.
      profile_steps=(),
      # Another run's workdir: a new run starts from the parameters of its
      # newest intact checkpoint (the same transformer and tokenizer; any
      # objective), with a fresh optimizer at step 0. "" = random init.
      init_from="",
  )

  c.eval = dict(
      batch_size=32,
      # Any-order NELBO estimates per sequence (stratified across the batch);
      # >= 2 gives the standard errors from each sequence's own spread.
      num_t_samples=1,
      batches_during_training=8,  # 0 = the whole validation split.
      split="test",  # Split of the final evaluation and of --mode=eval.
      seed=0,
  )

  c.sample = dict(
      num_samples=4,  # Printed at the end of training (0 = none).
      length=0,  # 0 = data.seq_len.
      seed=0,
      # The sampler and its options, with their defaults: see
      # sampler_options.SamplerOptions and sampler_options.SAMPLER_OPTIONS.
      **dataclasses.asdict(sampler_options.SamplerOptions()),
  )

  c.mesh = dict(
      data=-1,  # -1: all devices not used by the other axes.
      fsdp=1,  # Data parallel with parameters and optimizer state sharded.
      tensor=1,  # Heads, MLP units and vocabulary split (within a process).
      # Logical axis name -> mesh axes; names not listed stay replicated.
      rules=(
          ("embed", "fsdp"),
          ("mlp", "tensor"),
          ("heads", "tensor"),
          ("head_dim", None),
          ("vocab", "tensor"),
      ),
  )
  return c


# The published recipes' denoiser (MD4 and MDLM "small", about GPT-2 small):
# 12 layers of width 768, 12 heads of 64; SwiGLU width 2048 matches the
# parameters of a 3072-wide plain MLP.
SMALL_MODEL = dict(num_layers=12, num_heads=12, head_dim=64, embed_dim=768,
                   mlp_dim=2048, dtype="bfloat16")


# MD4's optimisation for text8 and OpenWebText (Shi et al. 2024): AdamW 3e-4,
# 2,000 warmup steps and cosine decay to 0, b2 0.999, EMA 0.9999, no weight
# decay or clipping; batch 512 for 1M steps.
MD4_TRAIN = dict(steps=1_000_000, batch_size=512, learning_rate=3e-4,
                 warmup_steps=2000, final_lr_fraction=0.0, weight_decay=0.0,
                 b2=0.999, grad_clip=0.0, ema_decay=0.9999, log_every=500,
                 checkpoint_every=5000)


def _tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The recipe's data, tokenizer and objective with a model and a run small
  enough for a CPU test."""
  c.model.update(num_layers=2, num_heads=2, head_dim=16, embed_dim=32,
                 mlp_dim=64, dtype="float32")
  c.data.seq_len = min(c.data.seq_len, 32)
  c.train.update(steps=4, batch_size=8, warmup_steps=2, log_every=2,
                 eval_every=4, checkpoint_every=4)
  c.eval.update(batch_size=8, batches_during_training=1)
  c.sample.update(num_samples=2, steps=4)
  return c


def _autoregressive(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The autoregressive twin: the same model, data and token budget."""
  c.model.update(objective="autoregressive", time_conditioning=False)
  return c


def _block_diffusion(size: int):
  def variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Block diffusion with blocks of `size`: the same model, data and steps."""
    c.model.update(objective="block_diffusion", block_size=size,
                   time_conditioning=False)
    c.sample.update(block_length=0)  # The model's own blocks.
    return c
  return variant


VARIANTS = {"tiny": _tiny, "ar": _autoregressive, "bd3": _block_diffusion(8),
            **{f"bd3_{size}": _block_diffusion(size) for size in (4, 16)}}


def variant(c: ml_collections.ConfigDict, names: str) -> ml_collections.ConfigDict:
  """A recipe as named after its path: `configs/text8.py:tiny,ar` applies
  'tiny' then 'ar' ('' = the recipe itself)."""
  for name in filter(None, names.split(",")):
    if name not in VARIANTS:
      raise ValueError(
          f"unknown config variant {name!r}; one of {sorted(VARIANTS)}")
    c = VARIANTS[name](c)
  return c
