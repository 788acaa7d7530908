"""Model loading (hub id, directory, .gguf, embedded default) and architecture adapters."""
