"""A TFDS builder that copies a prepared dataset into TFDS's array_record format, one record per document.

Works without TensorFlow: the dataset is generated with `download_and_prepare` and read with
`tfds.data_source("gptjax_tokens", data_dir=...)` (random access, grain-compatible); `tfds.load`/`as_dataset` need
TensorFlow and are not used. Each record is {"tokens": int32 [n]} holding one document's ids (no
`<|endoftext|>`), in the prepared shards' order; splits are the prepared dir's splits.

    from gptjax.prepare.tfds_builder import build_tfds, open_tfds
    build_tfds("data/web", "data/web/tfds")        # or `gptjax prepare ... --tfds`
    source = open_tfds("data/web/tfds")["train"]   # source[i]["tokens"]
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from gptjax.data import store

NAME = "gptjax_tokens"


class GptjaxTokens(tfds.core.GeneratorBasedBuilder):
    """Documents of a gptjax prepared directory (`source_dir`) as TFDS records {"tokens": [n]}."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Documents of a gptjax prepared directory, one record each."}
    # No download checksums to look up beside the code. (tfds 4.9's lookup of them imports importlib_resources,
    # which it does not depend on, for packages installed in editable mode.)
    code_path = None

    def __init__(self, *, source_dir: str | Path | None = None, **kwargs):
        self._source_dir = Path(source_dir) if source_dir else None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Token ids of the documents of a gptjax prepared dataset (see its manifest.json).",
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32)}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        manifest = store.read_manifest(self._source_dir)
        return {split: self._generate_examples(split) for split, info in manifest["splits"].items()
                if info["n_documents"]}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        key = 0
        for tokens, (starts, lengths) in zip(map(store.read_tokens, store.split_shards(self._source_dir, split)),
                                             store.split_doc_spans(self._source_dir, split)):
            for start, length in zip(starts.tolist(), lengths.tolist()):
                yield key, {"tokens": np.asarray(tokens[start:start + length], dtype=np.int32)}
                key += 1


def build_tfds(prepared_dir: str | Path, tfds_dir: str | Path) -> Path:
    """Writes the TFDS array_record copy of `prepared_dir` under `tfds_dir`; returns the dataset's version dir."""
    builder = GptjaxTokens(source_dir=prepared_dir, data_dir=str(tfds_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return Path(builder.data_dir)


def open_tfds(tfds_dir: str | Path) -> dict:
    """{split: random-access data source} of a TFDS copy written by `build_tfds` (no TensorFlow needed)."""
    return tfds.data_source(NAME, data_dir=str(tfds_dir))
