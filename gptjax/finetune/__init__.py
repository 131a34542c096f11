"""Finetuning (classification, SFT, DPO, LoRA) on the shared trainer: `records` read and split from files,
`templates` turn a record into text pieces, `batches` serve fixed-width rows, `freeze` says which params train,
`setup` is what a finetuning run adds to the trainer (base tokenizer, trainable mask, DPO reference log-probs),
and `evaluate` scores a finetuned run's held-out split with its own objective. LoRA itself is a model switch
(`gptjax.model.lora`)."""
