"""The deployable model: bundle (win + value models, calibrator, ICP, tier policy, cut-offs),
tier policy and explanations. Used by training (backtests) and by serving (requests)."""
