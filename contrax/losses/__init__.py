"""Contrastive losses: pure functions of embeddings returning a scalar.

InfoNCE family (SPEC §1), CURL (§2), Barlow Twins and the paper forms of Huang et al. (§3),
α-CL (§6). Submodules: `infonce`, `curl`, `barlow`, `alpha_cl`.
"""
from contrax.losses import alpha_cl, barlow, curl
from contrax.losses.alpha_cl import (PhiPsi, alpha_cl_direct, alpha_from_phi_psi,
                                     alpha_surrogate, entropy, infonce_alpha, infonce_family,
                                     inverse_power, lifted_family, mine_family, phi_psi_loss,
                                     sparsemax, triplet_family)
from contrax.losses.barlow import (alignment, barlow_twins, cross_correlation,
                                   cross_correlation_loss, paper_infonce_one_negative)
from contrax.losses.curl import (curl_block_scores, curl_loss, curl_scores, hinge_loss,
                                 logistic_loss, mean_classifier, supervised_multiway_loss)
from contrax.losses.infonce import infonce, ntxent, supervised_infonce

__all__ = [
    # InfoNCE family
    "infonce", "ntxent", "supervised_infonce",
    # CURL
    "curl_scores", "curl_block_scores", "logistic_loss", "hinge_loss", "curl_loss",
    "mean_classifier", "supervised_multiway_loss",
    # Barlow Twins and paper forms
    "barlow_twins", "cross_correlation", "paper_infonce_one_negative", "cross_correlation_loss",
    "alignment",
    # α-CL
    "PhiPsi", "infonce_family", "mine_family", "triplet_family", "lifted_family",
    "phi_psi_loss", "alpha_from_phi_psi", "alpha_surrogate", "alpha_cl_direct",
    "infonce_alpha", "entropy", "sparsemax", "inverse_power",
    # submodules
    "alpha_cl", "barlow", "curl",
]
