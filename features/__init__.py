"""Data side: the data contract, loading and mapping a CRM export, the demo CRM generator,
ICP fit, point-in-time features and the leakage audit. Imports nothing else of ours."""
