"""DAG pipelines (``pipeline_config_list``): models and Python custom nodes composed into one servable."""
from ovms.pipelines.pipeline import Pipeline

__all__ = ["Pipeline"]
