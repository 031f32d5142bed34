"""evaluation.bounds: bits, perplexity and standard errors from per-row NELBOs."""

import math

import numpy as np
import pytest

from diffusion_lm import evaluation


def test_bounds_and_standard_errors_by_hand():
  # Two rows, two estimates each (nats): row means 2 and 4, within-row
  # sample variances 2 and 2, so var(total) = (2 + 2) / 2 = 2.
  # Bugs caught: bits and nats mixed up, the wrong count as denominator, a
  # standard error of the mean of one row instead of the total's.
  result = evaluation.bounds(np.array([[1.0, 3.0], [3.0, 5.0]]),
                             tokens_N=np.array([2.0, 2.0]),
                             bytes_N=np.array([1.0, 2.0]))
  bits = 6 / math.log(2)
  assert result["bits_per_token"] == pytest.approx(bits / 4)
  assert result["bits_per_byte"] == pytest.approx(bits / 3)
  assert result["bits_per_token_stderr"] == pytest.approx(math.sqrt(2) / math.log(2) / 4)
  assert result["bits_per_byte_stderr"] == pytest.approx(math.sqrt(2) / math.log(2) / 3)
  assert result["perplexity"] == pytest.approx(2 ** (bits / 4))


def test_one_estimate_per_row_uses_the_spread_between_rows():
  # Ratio residuals 2 - 6 * 1/4 and 4 - 6 * 3/4: -> var = (0.25 + 0.25) * 2.
  result = evaluation.bounds(np.array([[2.0, 4.0]]), tokens_N=np.array([1.0, 3.0]),
                             bytes_N=np.array([1.0, 3.0]), suffix="_given_length")
  assert set(result) == {"bits_per_token_given_length",
                         "bits_per_token_given_length_stderr",
                         "bits_per_byte_given_length",
                         "bits_per_byte_given_length_stderr",
                         "perplexity_given_length"}
  assert result["bits_per_token_given_length_stderr"] == pytest.approx(
      1.0 / math.log(2) / 4)
