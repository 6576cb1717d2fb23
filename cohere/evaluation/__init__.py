"""The paper's evaluation: one definition of each metric, baselines, and the experiments.

:mod:`cohere.evaluation.metrics` holds every number the reports print (R^2 variants, output
variance, energy score and distance, k-NN precision/recall, distance to closest record,
classification scores, Harrell's C-index); :mod:`cohere.evaluation.baselines` the point
imputers and the random-neighbour floor that the generated modalities are compared with.
"""

from .baselines import (
    IterativeImputer,
    KNNRegressorImputer,
    MeanImputer,
    MOFAImputer,
    RandomNeighbourSampler,
    RidgeImputer,
)
from .metrics import (
    DCRResult,
    PrecisionRecall,
    R2Runs,
    balanced_accuracy,
    calibrated_single_draw_r2,
    concordance_index,
    distance_to_closest_record,
    energy_distance,
    energy_score,
    f1,
    macro_f1,
    output_variance_pct,
    precision_recall,
    r2,
    r2_runs,
    surv_array,
)

__all__ = [
    "DCRResult", "IterativeImputer", "KNNRegressorImputer", "MeanImputer", "MOFAImputer", "PrecisionRecall",
    "R2Runs", "RandomNeighbourSampler", "RidgeImputer", "balanced_accuracy",
    "calibrated_single_draw_r2", "concordance_index", "distance_to_closest_record",
    "energy_distance", "energy_score", "f1", "macro_f1", "output_variance_pct",
    "precision_recall", "r2", "r2_runs", "surv_array",
]
