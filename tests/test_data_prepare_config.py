"""`data.prepare`: an experiment names a filtered, deduplicated corpus; `resolve_data` prepares it on first use
into the cache (keyed by those settings) and reuses it after; without prepare settings the raw behaviour stays."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptjax import config as config_lib
from gptjax.config import DataConfig, PrepareConfig
from gptjax.data import store
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.prepare import resolve as prepare_lib

FIXTURES = Path(__file__).parent / "fixtures"
PARAGRAPHS = [json.loads(line)["text"] for line in
              (FIXTURES / "data" / "dedup" / "inaugural_paragraphs.jsonl").read_text().splitlines()]
FRENCH = " ".join(line.split("\t", 1)[1].strip() for line in
                  (FIXTURES / "data" / "langid" / "lingua_first10.tsv").read_text().splitlines()
                  if line.startswith("fr\t"))


def all_documents(data_dir: Path) -> list[str]:
    tok = tokenizers.load(data_dir / "tokenizer")
    texts = []
    for split in ("train", "val"):
        for shard in store.split_shards(data_dir, split):
            tokens = store.read_tokens(shard)
            starts, lengths = store.doc_spans(store.read_doc_index(store.index_path(shard))[0], len(tokens))
            texts += [tok.decode(tokens[s:s + n].tolist()) for s, n in zip(starts, lengths)]
    return texts


@pytest.fixture()
def web_corpus(tmp_path) -> Path:
    copies = [PARAGRAPHS[3], "  " + PARAGRAPHS[4] + "  "]
    texts = PARAGRAPHS[:30] + copies + [FRENCH, "This is a short note about the meeting."]
    path = tmp_path / "web.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def experiment_config(corpus: Path, cache: Path, overrides: list[str]) -> config_lib.Config:
    """What `gptjax train --config X --config.a.b=v ...` builds: base config, experiment fields, overrides."""
    cd = config_lib.base_config()
    cd.data.dataset = ""
    cd.data.inputs = (str(corpus),)
    cd.data.cache_dir = str(cache)
    config_lib.apply_overrides(cd, overrides)
    return config_lib.to_config(cd)


def test_overrides_reach_the_prepare_section(web_corpus, tmp_path):
    cfg = experiment_config(web_corpus, tmp_path, ["data.prepare.dedup=near", "data.prepare.languages=en,de",
                                                   "data.prepare.quality=true", "data.prepare.jaccard=0.7"])
    assert cfg.data.prepare == PrepareConfig(dedup="near", languages=("en", "de"), quality=True, jaccard=0.7)
    assert config_lib.base_config().data.prepare.dedup == "none", "a config's default is raw"
    with pytest.raises(GptjaxError, match="data.prepare.dedupe"):
        experiment_config(web_corpus, tmp_path, ["data.prepare.dedupe=near"])


def test_experiment_prepares_a_filtered_deduplicated_corpus_once(web_corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = experiment_config(web_corpus, cache, ["data.prepare.normalize=true", "data.prepare.quality=true",
                                                "data.prepare.dedup=near", "data.prepare.languages=en"])
    data_dir = prepare_lib.resolve_data(cfg.data)
    stages = store.read_manifest(data_dir)["stages"]
    assert stages["langid"]["dropped"] == {"wrong_language": 1}
    assert stages["quality"]["dropped"] == {"too_few_words": 1}
    assert stages["dedup_exact"]["dropped"] == {"exact_duplicate": 2}
    assert sorted(all_documents(data_dir)) == sorted(PARAGRAPHS[:30])

    def no_second_run(*args, **kwargs):
        raise AssertionError("the cached corpus must be reused")

    monkeypatch.setattr(prepare_lib, "run_pipeline", no_second_run)
    assert prepare_lib.resolve_data(cfg.data) == data_dir
    monkeypatch.undo()

    raw_dir = prepare_lib.resolve_data(DataConfig(dataset="", inputs=(str(web_corpus),), cache_dir=str(cache)))
    assert raw_dir != data_dir and len(all_documents(raw_dir)) == 34, "raw: every document, as before"
    assert prepare_lib.resolve_data(
        DataConfig(dataset="", inputs=(str(web_corpus),), cache_dir=str(cache),
                   prepare=PrepareConfig(workers=2))) == raw_dir, "the worker count is not part of the cache key"


def test_bad_prepare_settings_are_one_clear_error(web_corpus, tmp_path):
    bad = DataConfig(dataset="", inputs=(str(web_corpus),), cache_dir=str(tmp_path),
                     prepare=PrepareConfig(dedup="fuzzy"))
    with pytest.raises(GptjaxError, match=r"data.prepare.dedup='fuzzy' \(--dedup\) is not one of none, exact, near"):
        prepare_lib.resolve_data(bad)
    with pytest.raises(GptjaxError, match="language filter: py3langid does not know the codes xx"):
        prepare_lib.resolve_data(DataConfig(dataset="", inputs=(str(web_corpus),), cache_dir=str(tmp_path),
                                            prepare=PrepareConfig(languages=("xx",))))
