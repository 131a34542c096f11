"""What a training run reads: self-describing token files (`store`), the grain pipeline (`loader`, `packing`,
`hashing`), and the tokenizers (`tokenizer`, `gpt2_bpe`). Corpus preparation lives in `gptjax.prepare`."""
