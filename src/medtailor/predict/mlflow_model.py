"""The MLflow model file (MLflow's "models from code"): the wrapper is imported, not
unpickled, when a logged medtailor model loads."""

from mlflow.models import set_model

from medtailor.predict.serving import BundleModel

set_model(BundleModel())
