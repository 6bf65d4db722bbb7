"""StarCoder WebUI backend: GPTQ loading, generation, settings, downloads and the HTTP API."""
