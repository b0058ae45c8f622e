"""Mutual information (Lee et al. 2024): estimators, critics, known-MI tasks, critic training.

- `estimators`: the bounds (InfoNCE, NWJ, DV, MINE, JS, SMILE) as pure functions of a critic
  score matrix, and `objective(name, scores)`.
- `critics`: Flax critics (separable, bilinear, concat) scoring all K² pairs.
- `tasks`: known-MI tasks (correlated Gaussians, linear features, the label channel).
- `training`: `estimate_mi` (start here to estimate MI), critic and encoder training, the
  chunked `lax.scan` loop they run in, linear probes of label-channel bits.

Every public name of the submodules is re-exported here.
"""
from contrax.mi.critics import (CRITICS, BilinearCritic, ConcatCritic, SeparableCritic,
                                make_critic)
from contrax.mi.estimators import (ESTIMATORS, MINE_DECAY, MineState, dv, infonce, js, js_fgan,
                                   mine, mine_init, nwj, objective, smile, smile_estimate,
                                   smile_tau)
from contrax.mi.tasks import (LOG2, LabelChannel, binary_entropy_bits, correlated_gaussian,
                              gaussian_correlation, gaussian_log_density_ratio, gaussian_mi,
                              gaussian_mi_from_covariance, label_channel, label_channel_mi,
                              flatten_views, label_channel_views, linear_features_mi,
                              sample_label_channel)
from contrax.mi.training import (PAIR_CRITICS, SMILE_TAUS, MIEstimate, bit_probe_accuracies,
                                 chunked_scan, critic_training, estimate_mi,
                                 fresh_critic_estimate, infonce_step, masked_infonce,
                                 pair_scores, probe_features, readout_head, readouts)

__all__ = [
    "CRITICS", "BilinearCritic", "ConcatCritic", "SeparableCritic", "make_critic", "ESTIMATORS",
    "MINE_DECAY", "MineState", "dv", "infonce", "js", "js_fgan", "mine", "mine_init", "nwj",
    "objective", "smile", "smile_estimate", "smile_tau", "LOG2", "LabelChannel",
    "binary_entropy_bits", "correlated_gaussian", "gaussian_correlation",
    "gaussian_log_density_ratio", "gaussian_mi", "gaussian_mi_from_covariance", "label_channel",
    "label_channel_mi", "linear_features_mi", "sample_label_channel", "flatten_views",
    "label_channel_views", "PAIR_CRITICS", "SMILE_TAUS", "MIEstimate", "critic_training",
    "estimate_mi", "fresh_critic_estimate", "infonce_step", "masked_infonce", "pair_scores",
    "readout_head", "readouts", "chunked_scan", "probe_features", "bit_probe_accuracies",
]
