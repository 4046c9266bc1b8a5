"""The asyncio runtime of the AutoChain agent: config, supervisor, services per role."""
