"""Shared hypothesis strategies for the property and fuzz tests."""
import numpy as np
from hypothesis import strategies as st


@st.composite
def embeddings(draw, rows: int, cols: int, min_exponent: int = -30, max_exponent: int = 38):
  """`[rows, cols]` float32: rows of magnitude 10^e for e in [min, max] (entries spanning many
  magnitudes up to near the float32 limit), some rows zero and some duplicated (so that pairs
  coincide)."""
  mantissa = draw(st.lists(st.floats(-1.0, 1.0, width=32), min_size=rows * cols,
                           max_size=rows * cols))
  exponent = draw(st.lists(st.integers(min_exponent, max_exponent), min_size=rows,
                           max_size=rows))
  z = np.array(mantissa, np.float32).reshape(rows, cols)
  z *= np.float32(10.0) ** np.array(exponent, np.float32)[:, None] / np.float32(3.4)
  for r in draw(st.lists(st.integers(0, rows - 1), max_size=2)):
    z[r] = 0.0
  for src, dst in draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, rows - 1)),
                                max_size=2)):
    z[dst] = z[src]
  assert np.all(np.isfinite(z))
  return z
