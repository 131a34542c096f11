"""The small typed results the phases hand to each other and to the report."""
from __future__ import annotations

from dataclasses import dataclass

from gptjax.prepare.report import StageStats, stages_from_json, stages_to_json


@dataclass(frozen=True)
class ResumeCounts:
    """How many units of a phase a run found finished (reused) and how many it computed."""

    reused: int = 0
    computed: int = 0

    def to_json(self) -> dict:
        return {"reused": self.reused, "computed": self.computed}


@dataclass(frozen=True)
class CleanResult:
    n_chunks: int
    stats: dict[str, StageStats]
    counts: ResumeCounts


@dataclass(frozen=True)
class DedupResult:
    """What corpus-wide dedup decided, beyond the keep mask it saves: its report entries and the split sizes.

    `char_cut`: a hash split left train or val empty, so the survivors are joined and cut by characters."""

    stats: dict[str, StageStats]
    n_train: int
    n_val: int
    char_cut: bool

    def to_json(self) -> dict:
        return {"stats": stages_to_json(self.stats), "n_train": self.n_train, "n_val": self.n_val,
                "char_cut": self.char_cut}

    @classmethod
    def from_json(cls, data: dict) -> "DedupResult":
        return cls(stages_from_json(data["stats"]), data["n_train"], data["n_val"], data["char_cut"])


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer the run used, as the report and manifest describe it."""

    kind: str
    vocab_size: int
    eot_id: int
    fingerprint: str
    sample_docs: int = 0
    sample_bytes: int = 0
    seconds: float = 0.0
    model_type: str | None = None  # sentencepiece only
    byte_fallback: bool | None = None  # sentencepiece only

    def to_json(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if value is not None}

    @classmethod
    def from_json(cls, data: dict) -> "TokenizerInfo":
        return cls(**data)


@dataclass(frozen=True)
class TokenizeResult:
    n_parts: int
    counts: ResumeCounts


@dataclass(frozen=True)
class ShardResult:
    splits: dict  # the manifest's "splits" entry
    stats: StageStats
    counts: ResumeCounts
