"""Pure compute for GPTQ layers: the torch reference and the fast kernels beside it."""
