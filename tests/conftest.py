"""Test-wide setup: 8 virtual CPU devices, so sharded code is tested in the same process.

The flag must be set before JAX initialises its backend; single-device tests build a
mesh of size 1 explicitly.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
