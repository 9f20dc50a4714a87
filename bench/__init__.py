"""`make bench`: this server against vLLM's own OpenAI server, driven by vLLM's benchmark client."""
