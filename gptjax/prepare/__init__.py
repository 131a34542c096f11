"""Corpus preparation (`gptjax prepare`): what runs once, before training, to turn raw text into token shards.

Per-document stages (`readers`, `normalize`, `langid`, `quality`, `dedup`, composed in `stages`, counted in
`report`), the settings they run with (`settings`), the resumable multi-phase run over a work directory
(`pipeline/`), the optional TFDS copy (`tfds_builder`), and `resolve`: the prepared directory a config names,
prepared on first use. What a training run reads from the result lives in `gptjax.data`.
"""
