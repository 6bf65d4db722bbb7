"""What runs the model: checkpoints, loading, generation, the Engine, settings and downloads.

`from backend import from_quantized` works as AutoGPTQ's users expect; it is imported on first use so
that importing a small module of this package does not pull in torch and transformers.
"""


def __getattr__(name: str):
    if name in ("from_quantized", "load_tokenizer"):
        from backend import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'backend' has no attribute {name!r}")
