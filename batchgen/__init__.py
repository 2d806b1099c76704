"""batchgen: a YAML manifest of image prompts in, a folder of generated images out,
through Scenario's asynchronous generation API."""

__version__ = "0.1.0"
