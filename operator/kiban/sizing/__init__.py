"""Pure sizing: how many GPUs one replica of a model needs, from its size and the GPU's memory."""

from kiban.sizing.gpu import GpuSizing, SizingReason, bytes_per_parameter, resolve_sizing, size_gpus

__all__ = ["GpuSizing", "SizingReason", "bytes_per_parameter", "resolve_sizing", "size_gpus"]
