"""Data side: the data contract, loading and mapping a CRM export,
ICP fit, point-in-time features and the leakage audit. Imports nothing else of ours."""
