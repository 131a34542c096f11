"""`gptjax serve`: an OpenAI-compatible HTTP server (app, protocol) over a continuous-batching engine."""
