"""Semi-supervised segmentation methods, one module each, registered by name."""
from methods.base import Batch, Method, MethodConfig
from methods.registry import UnknownMethodError, get_method, list_methods, register

__all__ = ["Batch", "Method", "MethodConfig", "UnknownMethodError", "get_method", "list_methods", "register"]
