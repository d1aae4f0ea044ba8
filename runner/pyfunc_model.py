"""The MLflow model a run logs (mlflow.log_model=true): y = w . x + b with its final
parameters, for `mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(frame)`.

Logged as code (MLflow's "models from code"): the parameters travel as the model's config,
so loading it needs MLflow, pandas and numpy, not torch, and unpickles nothing. This file
is run by MLflow when the model is loaded; the runner never imports it.
"""

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class LinearModel(PythonModel):
    def load_context(self, context) -> None:
        self.weights: dict[str, float] = context.model_config["weights"]  # column -> weight
        self.bias: float = context.model_config["bias"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        y = np.full(len(model_input), self.bias, dtype=np.float64)
        for column, weight in self.weights.items():
            y += weight * model_input[column].to_numpy(dtype=np.float64)
        return y


set_model(LinearModel())
