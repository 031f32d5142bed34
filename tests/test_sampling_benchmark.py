"""benchmarks/sampling.py's sweep, tolerance and frontiers on hand-made rows."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import sampling as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

FIRST_HITTING = {"sampler": "first_hitting"}


def row(options, calls, kl=0.0, kl_se=0.01, far_tv=0.01, nll=1.0, valid=1.0,
        kl_name="kl_bits"):
  """A row of the sweep: TVs 0.01 (at distance 6: far_tv), floor SDs 0.002
  (likelihood 0.01), 512 samples."""
  return {"options": options, "calls_per_token": calls, "num_samples": 512,
          "valid_fraction": valid, "ngram_tv": 0.01,
          "skipgram_tv": [0.01] * 5 + [far_tv] + [0.01] * 2,
          "chain_nll_bits_per_symbol": nll, "ngram_tv_floor_sd": 0.002,
          "skipgram_tv_floor_sd": [0.002] * 8,
          "chain_nll_bits_per_symbol_floor_sd": 0.01,
          kl_name: kl, "kl_se_bits": kl_se}


REF = row(FIRST_HITTING, 1.0, kl_se=0.0, kl_name="kl_upper_bits")


# Bugs caught: a measure left out of the tolerance (the distance-6 pairs, a
# likelihood below the chain's, invalid documents, the KL), or noise not
# scaled as stated (sqrt(2) floor SDs; the KLs' standard errors combined).
@pytest.mark.parametrize("changes,expected", [
    ({}, 0.0),
    ({"kl": 0.05, "kl_se": 0.02}, 2.5),
    ({"far_tv": 0.03}, 0.02 / (np.sqrt(2) * 0.002)),
    ({"nll": 0.95}, 0.05 / (np.sqrt(2) * 0.01)),
    ({"valid": 0.99}, 0.01 * 512 / np.sqrt(2)),
])
def test_excess_sd_is_the_worst_measure_in_sds_of_its_noise(changes, expected):
  r = row({"sampler": "threshold", "threshold": 0.5}, 0.2, **changes)
  assert bench.excess_sd(r, REF) == pytest.approx(expected)


def test_excess_sd_without_a_kl_judges_the_rest():
  # remdm has no replay KL: its distances still count.
  r = row({"sampler": "remdm"}, 0.9, far_tv=0.03)
  del r["kl_bits"]
  assert bench.excess_sd(r, REF) == pytest.approx(0.02 / (np.sqrt(2) * 0.002))


def spaced(threshold, spacing):
  return {"sampler": "threshold", "threshold": threshold, "spacing": spacing}


def test_frontier_is_the_fewest_calls_within_tolerance():
  # Bug caught: a frontier by adjacent-pair TV alone, which admits spacing 4
  # (its pairs at distance 1 are right, its KL is 1.7 bits) and spacing 6.
  rows = [REF, row(spaced(0.5, 4), 0.15, kl=1.7, kl_se=0.1),
          row(spaced(0.5, 6), 0.17, kl=0.08, kl_se=0.025),
          row(spaced(0.55, 6), 0.9), row(spaced(0.6, 6), 0.95)]
  result = bench.frontier(rows, tolerance_sd=3.0)
  assert result["frontier"]["threshold spaced"]["options"] == spaced(0.55, 6)
  assert result["frontier"]["first_hitting"]["calls_vs_reference"] == 1.0
  assert bench.frontier(rows, tolerance_sd=5.0)["frontier"][
      "threshold spaced"]["options"] == spaced(0.5, 6)


def test_worst_case_holds_on_every_chain():
  """The setting whose most calls over the chains is fewest, among those
  within tolerance on each chain; not the best point on one chain."""
  # Bugs caught: the best single-chain point reported (0.17 on chain a),
  # a setting that fails on one chain kept, or calls averaged over chains.
  by_chain = {
      "a": [REF, row(spaced(0.5, 6), 0.17), row(spaced(0.3, 8), 0.12),
            row({"sampler": "entropy_bounded", "gamma": 3.0, "spacing": 6}, 0.25)],
      "b": [REF, row(spaced(0.5, 6), 1.0), row(spaced(0.3, 8), 0.12, kl=1.0),
            row({"sampler": "entropy_bounded", "gamma": 3.0, "spacing": 6}, 0.26)],
  }
  worst = bench.worst_case(by_chain, tolerance_sd=3.0)
  assert worst["threshold spaced"]["options"] == spaced(0.5, 6)
  assert worst["threshold spaced"]["calls_per_token_worst"] == 1.0
  assert worst["threshold spaced"]["calls_per_token"] == {"a": 0.17, "b": 1.0}
  assert worst["entropy_bounded spaced"]["calls_per_token_worst"] == 0.26


def test_dense_sweep_covers_each_knob_finely_with_and_without_spacing():
  # Bugs caught: threshold steps wider than 0.05, a rule or spacing missing,
  # the reference not first (rows are judged against it as they come).
  settings = bench.sweep(64, dense=True)
  assert settings[0] == FIRST_HITTING
  thresholds = sorted({s["threshold"] for s in settings if "threshold" in s})
  assert max(np.diff(thresholds)) <= 0.05 + 1e-9 and thresholds[-1] == 1.0
  for rule in ("threshold", "factor", "entropy_bounded"):
    assert {s.get("spacing", 1) for s in settings
            if s["sampler"] == rule} == set(range(1, 9)), rule
  assert bench.sweep(64, dense=True, spacings=(1, 6)) == [
      s for s in settings if s.get("spacing", 1) in (1, 6)]


@pytest.mark.parametrize("argv,message", [
    (["--chains=0"], "--chains needs --oracle"),
    (["--oracle"], "give --workdir or (with --oracle) --chains"),
    (["--oracle", "--chains=x"], "--chains='x': expected SEED[:ORDER]"),
    (["--oracle", "--chains=0", "--spacings=0"], "--spacings='0': expected"),
    (["--oracle", "--chains=0:0"], "data.markov.order=0 must be at least 1"),
])
def test_bad_flags_are_one_line_before_any_sampling(argv, message, monkeypatch,
                                                    capsys):
  monkeypatch.setattr(sys, "argv", ["sampling.py", *argv])
  monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("sampled"))
  with pytest.raises(SystemExit):
    bench.main()
  assert message in capsys.readouterr().err.splitlines()[-1]


def test_timing_counts_the_calls_of_its_timed_seeds_only():
  # Catches: speed timed on one fixed seed (every run seed 0), calls per
  # token taken from another run than the timed ones, or the compiling run
  # counted among them.
  import timing  # pylint: disable=g-import-not-at-top
  seeds = []

  class Result:
    def __init__(self, seed):
      self.calls_B = np.array([seed + 1, seed + 1])
      self.length_B = np.array([4, 2])  # Row 1 stopped at EOS after 2.

  def generate(init, seed, **options):
    assert options == {"sampler": "x"}
    seeds.append(seed)
    return Result(seed)

  init = np.array([[9, 9, 9, 9], [1, 9, 9, 9]])  # 9 = [MASK].
  stats, first = timing.tokens_per_second(generate, init, {"sampler": "x"},
                                          runs=3, mask_id=9)
  assert seeds == [3, 0, 1, 2]  # The compiling run's seed is not timed.
  # 4 + 1 generated tokens per run; calls 2, 4, 6 over the timed runs.
  assert stats["timed_calls_per_token"] == pytest.approx(12 / 15)
  assert stats["timed_runs"] == 3 and first.calls_B[0] == 1
  assert stats["tokens_per_s"] > 0
