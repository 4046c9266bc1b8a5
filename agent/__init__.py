"""The asyncio runtime of the AutoChain agent: config, supervisor, services per role."""

__version__ = "0.1.0"
