"""The registered pyfunc model as code (MLflow's "models from code"): `register_model` logs this
file, not a pickled object, and MLflow runs it to load the model (`eelight` must be installed)."""

import mlflow

from eelight.mlflow_pyfunc import EelightModel

mlflow.models.set_model(EelightModel())
