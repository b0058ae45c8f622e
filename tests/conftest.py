"""Test-wide setup: 8 virtual CPU devices, so sharded code is tested in the same process.

The flag must be set before JAX initialises its backend; single-device tests build a
mesh of size 1 explicitly.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags += " --xla_force_host_platform_device_count=8"
# XLA's CPU backend at LLVM optimisation level 0: the tests' programs are tiny and each is
# compiled for a few calls, so LLVM's optimisation passes cost more than they save (measured:
# tests/test_methods_queue.py + tests/test_objectives.py, no compilation cache, 150-156 s ->
# 115 s). The HLO the tests check (collectives, matmuls) is built before this stage, and every
# numeric check compares with an independent float64 oracle at a tolerance, so the tests test
# the same programs; users' runs keep XLA's default (level 3). Subprocesses inherit the flag.
if "xla_backend_optimization_level" not in flags:
  flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()

# JAX's persistent compilation cache: tests (and the processes they spawn, which inherit the
# environment) compile many identical programs (the same tiny step for several seeds, methods
# or runs), and XLA's CPU compile dominates their time. A cached executable is the one XLA
# would compile again for the same program, flags and JAX version (the cache key), so results
# are unchanged; `.ci/run` points every stage at one fresh folder.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "contrax-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
