"""The BentoML service and batch scoring of the whole account list."""
