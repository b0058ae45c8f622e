"""Theory diagnostics: quantities from the analyses of contrastive learning, on samples.

One idea per module:

- `sampling`: latent-class vector data and CURL tuple samplers (`latent_class_points`,
  `to_sphere`, `sample_tuples`, `sample_bound_tuples`).
- `curl`: the k-negative CURL bound of Arora et al. 2019 / Merad et al. 2020
  (`collision_probability`, `mean_classifier`, `mean_classifier_loss`, `curl_bound`).
- `generalization`: the diagnostics of Huang, Yi & Zhao 2023 (augmented class centres,
  nearest-centre error, Theorem-1 threshold, alignment, R̂_ε, d̂_A, σ̂(δ)).
- `alpha_cl`: α-CL of Tian 2022 (`contrastive_covariance` C_α, `alpha_energy` E_α).
- `ntk`: the empirical neural tangent kernel and lazy-training diagnostics.

Every public name of the submodules except `ntk`'s is re-exported here.
"""
from contrax.evaluate import nearest_centre_classify
from contrax.theory import ntk
from contrax.theory.alpha_cl import alpha_energy, contrastive_covariance
from contrax.theory.curl import (collision_probability, curl_bound, mean_classifier,
                                 mean_classifier_loss)
from contrax.theory.generalization import (alignment_from_views, augmented_class_centres,
                                           augmented_distance, augmented_distance_matrix,
                                           centre_deficit, centre_gram, divergence_threshold,
                                           greedy_clique, max_cross_centre, nearest_centre_error,
                                           r_epsilon, rho_max, sample_views, sigma_hat,
                                           view_features)
from contrax.theory.sampling import (BoundTuples, Tuples, latent_class_points,
                                     sample_bound_tuples, sample_tuples, to_sphere)

__all__ = [
    "nearest_centre_classify", "ntk", "alpha_energy", "contrastive_covariance",
    "collision_probability", "curl_bound", "mean_classifier", "mean_classifier_loss",
    "alignment_from_views", "augmented_class_centres", "augmented_distance",
    "augmented_distance_matrix", "centre_deficit", "centre_gram", "divergence_threshold",
    "greedy_clique", "max_cross_centre", "nearest_centre_error", "r_epsilon", "rho_max",
    "sample_views", "sigma_hat", "view_features", "BoundTuples", "Tuples", "latent_class_points",
    "sample_bound_tuples", "sample_tuples", "to_sphere",
]
