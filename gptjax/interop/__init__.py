"""Other formats and tools: Hugging Face transformers both ways (`hf`), and lm-evaluation-harness's model
interface (`lm_eval`). gptjax's own export format is `gptjax.export`; the `export` / `import` verbs are in `gptjax.cli`.
"""
