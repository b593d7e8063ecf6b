"""The MLflow pyfunc entry of a model bundle, logged as "models from code": MLflow stores this
file's source (not a pickle) and runs it at load time; the bundle itself travels as an artifact
folder of text/JSON files.

Input: account feature rows as ``features.build.build_features`` returns them (``account_id``,
``as_of`` and the feature columns). Output: one row per input row with the calibrated win
probability, the deal-value range, the expected value, ICP fit, priority and tier (against
the bundle's frozen reference cut-offs, as for any single online request), without reason texts.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from tiering.scoring import OUTPUT_COLUMNS

# The numbers and the tier; the texts (rule, cut-offs, reasons) are the service's to phrase.
PYFUNC_COLUMNS = [c for c in OUTPUT_COLUMNS if c not in ("evidence", "tier_rule", "cutoffs_used")]


class TieringModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from tiering.bundle import Bundle

        self.bundle = Bundle.load(context.artifacts["bundle"])

    # A DataFrame hint gives MLflow no schema of its own: the logged signature (inferred from
    # real feature rows) stays the schema.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from tiering.scoring import score

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        scored = score(self.bundle, frame, reasons=False, population=False)
        return scored[PYFUNC_COLUMNS].reset_index(drop=True)


mlflow.models.set_model(TieringModel())
