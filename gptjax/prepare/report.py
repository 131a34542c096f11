"""What each stage of `gptjax prepare` took in, let through and dropped (by reason, with examples), and its time.

A `StageStats` is built per stage and per chunk of documents by pure functions; stats of the same stage merge by
addition, so per-worker results combine into one corpus-wide report in any order.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_EXAMPLES = 3
STAGE_ORDER = ("read", "normalize", "langid", "quality", "dedup_exact", "dedup_near", "boilerplate", "split",
               "tokenize", "shard")


@dataclass
class StageStats:
    """Counts of one stage: documents/bytes/tokens in and out, drops by reason with examples, busy seconds.

    `notes` holds stage-specific counters (repairs, clusters, languages seen) that are summed on merge.
    """

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)

    def drop(self, reason: str, example: str | None = None, count: int = 1) -> None:
        """Counts `count` documents dropped for `reason`, keeping the first few examples."""
        self.dropped[reason] += count
        if example is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < MAX_EXAMPLES:
                kept.append(example)

    def merge(self, other: "StageStats") -> "StageStats":
        """Adds `other` into this one (examples: first come, first kept) and returns self."""
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.tokens_out += other.tokens_out
        self.seconds += other.seconds
        self.dropped.update(other.dropped)
        self.notes.update(other.notes)
        for reason, examples in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(examples[: max(MAX_EXAMPLES - len(kept), 0)])
        return self

    def to_json(self) -> dict:
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "tokens_out": self.tokens_out, "seconds": round(self.seconds, 3),
                "dropped": dict(sorted(self.dropped.items())), "examples": dict(sorted(self.examples.items())),
                "notes": dict(sorted(self.notes.items()))}

    @classmethod
    def from_json(cls, data: dict) -> "StageStats":
        return cls(data["docs_in"], data["docs_out"], data["bytes_in"], data["bytes_out"], data["tokens_out"],
                   data["seconds"], Counter(data["dropped"]), {k: list(v) for k, v in data["examples"].items()},
                   Counter(data["notes"]))


def merge_stage_maps(maps: list[dict[str, StageStats]]) -> dict[str, StageStats]:
    """Stage-by-stage sum of several {stage: stats} maps."""
    total: dict[str, StageStats] = {}
    for stage_map in maps:
        for name, stats in stage_map.items():
            total.setdefault(name, StageStats()).merge(stats)
    return total


def stages_to_json(stages: dict[str, StageStats]) -> dict:
    return {name: stats.to_json() for name, stats in ordered(stages)}


def stages_from_json(data: dict) -> dict[str, StageStats]:
    return {name: StageStats.from_json(stats) for name, stats in data.items()}


def ordered(stages: dict[str, StageStats]) -> list[tuple[str, StageStats]]:
    """Stages in pipeline order (unknown names last, alphabetically)."""
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(stages.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.2f}"


def _top_reasons(stats: StageStats, limit: int = 3) -> str:
    reasons = stats.dropped.most_common()
    text = ", ".join(f"{reason} {count:,}" for reason, count in reasons[:limit])
    return text + (f", +{len(reasons) - limit} more" if len(reasons) > limit else "")


def render_table(stages: dict[str, StageStats], wall_seconds: dict[str, float] | None = None) -> str:
    """A fixed-width table: one row per stage with documents, MB and tokens in/out, top drop reasons, seconds."""
    header = ("stage", "docs in", "docs out", "MB in", "MB out", "tokens out", "seconds", "dropped (top reasons)")
    rows = [header]
    for name, stats in ordered(stages):
        rows.append((name, f"{stats.docs_in:,}", f"{stats.docs_out:,}", _megabytes(stats.bytes_in),
                     _megabytes(stats.bytes_out), f"{stats.tokens_out:,}" if stats.tokens_out else "",
                     f"{stats.seconds:.2f}", _top_reasons(stats)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i in (0, len(header) - 1) else cell.rjust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if wall_seconds:
        lines.append("wall seconds: " + ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in wall_seconds.items()))
    return "\n".join(lines)


def drop_summary(stages: dict[str, StageStats], limit: int = 6) -> str:
    """One line naming the most frequent drop reasons over all stages, with one example each."""
    reasons: Counter = Counter()
    example: dict[str, str] = {}
    for name, stats in ordered(stages):
        for reason, count in stats.dropped.items():
            key = f"{name}/{reason}"
            reasons[key] += count
            if stats.examples.get(reason):
                example.setdefault(key, stats.examples[reason][0])
    parts = [f"{key} {count:,}" + (f" (e.g. {example[key]})" if key in example else "")
             for key, count in reasons.most_common(limit)]
    return "; ".join(parts) if parts else "nothing was read"
