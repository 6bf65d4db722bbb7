"""Our GPTQ and round-to-nearest quantizer (offline): builds checkpoints in AutoGPTQ's layout."""
