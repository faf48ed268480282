"""vLLM integration: the only code in specforge that imports vllm.

Importing this package does not import vllm; the modules below do, when they run.
"""
