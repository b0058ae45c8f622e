"""Contrastive losses: pure functions of embeddings returning a scalar."""
from contrax.losses.infonce import infonce, ntxent, supervised_infonce

__all__ = ["infonce", "ntxent", "supervised_infonce"]
