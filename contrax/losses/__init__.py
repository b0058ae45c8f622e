"""Contrastive losses: pure functions of embeddings returning a scalar.

InfoNCE family (`infonce`, dense, and `tiled`, memory-linear), CURL (`curl`), Barlow Twins and
the paper forms of Huang et al. (`barlow`), VICReg (`vicreg`), α-CL (`alpha_cl`), the
objectives of the methods with a predictor: BYOL, SimSiam, MoCo v3 (`predictive`), and the
query-key InfoNCE of MoCo and NNCLR with queue negatives (`query_key`). Pairwise losses read
the batch geometry `contrax.pairs.Pairs` (`infonce_pairs`, `alpha_surrogate_pairs`, ...); the
`(z1, z2, ...)` functions build it for you. Negative weightings are in `contrax.weights`.
"""
from contrax.losses import alpha_cl, barlow, curl, predictive, query_key, tiled, vicreg
from contrax.losses.alpha_cl import (PhiPsi, alpha_cl_direct, alpha_from_phi_psi,
                                     alpha_from_phi_psi_pairs, alpha_surrogate,
                                     alpha_surrogate_pairs, infonce_alpha, infonce_family,
                                     lifted_family, mine_family, phi_psi_loss,
                                     phi_psi_loss_pairs, triplet_family)
from contrax.losses.barlow import (alignment, barlow_twins, cross_correlation,
                                   cross_correlation_loss, paper_infonce_one_negative)
from contrax.losses.curl import (curl_block_scores, curl_loss, curl_scores, hinge_loss,
                                 logistic_loss, mean_classifier, supervised_multiway_loss)
from contrax.losses.infonce import (infonce, infonce_pairs, ntxent,
                                    supervised_infonce)
from contrax.losses.predictive import byol_loss, moco_v3_loss, simsiam_loss
from contrax.losses.query_key import query_key_infonce
from contrax.losses.tiled import tiled_infonce
from contrax.losses.vicreg import VICRegTerms, vicreg_loss, vicreg_terms

__all__ = [
    # InfoNCE family
    "infonce", "infonce_pairs", "ntxent", "supervised_infonce", "tiled_infonce",
    # with a predictor: BYOL, SimSiam, MoCo v3
    "byol_loss", "simsiam_loss", "moco_v3_loss",
    # CURL
    "curl_scores", "curl_block_scores", "logistic_loss", "hinge_loss", "curl_loss",
    "mean_classifier", "supervised_multiway_loss",
    # Barlow Twins and paper forms
    "barlow_twins", "cross_correlation", "paper_infonce_one_negative", "cross_correlation_loss",
    "alignment",
    # VICReg
    "vicreg_loss", "vicreg_terms", "VICRegTerms",
    # query-key InfoNCE (MoCo, NNCLR)
    "query_key_infonce",
    # α-CL
    "PhiPsi", "infonce_family", "mine_family", "triplet_family", "lifted_family",
    "phi_psi_loss", "phi_psi_loss_pairs", "alpha_from_phi_psi", "alpha_from_phi_psi_pairs",
    "alpha_surrogate", "alpha_surrogate_pairs", "alpha_cl_direct", "infonce_alpha",
    # submodules
    "alpha_cl", "barlow", "curl", "predictive", "query_key", "tiled", "vicreg",
]
