from .omnet import MCNet, OMNet, SingleTaskNet, TaskOutputs, positive_probability
from .presets import Preset

__all__ = ["MCNet", "OMNet", "SingleTaskNet", "TaskOutputs", "positive_probability", "Preset"]
