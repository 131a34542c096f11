"""WikiText-2 test perplexity, as lm-eval's `wikitext` task (tasks/wikitext, dataset wikitext_document_level).

- Documents: the file's lines are split before every level-1 heading line (" = Title = ", after collapsing
  "= = =" / "= =" so level-2/3 headings do not count), as EleutherAI/wikitext_document_level builds its `page`s;
  a document is its lines joined by "\\n".
- Each document is scored whole with rolling windows after lm-eval's `wikitext_detokenizer` (below).
- word_perplexity = exp(-sum ll / sum words), byte_perplexity = exp(-sum ll / sum bytes),
  bits_per_byte = -sum ll / sum bytes / ln 2, with words (re.split(r"\\s+")) and UTF-8 bytes counted on the document
  *before* detokenization, as lm-eval's process_results does.
The shared file is the tokenized WikiText-2 (rare words are "<unk>"), where lm-eval reads wikitext-2-raw-v1: the
splitting and detokenization are the same, the text differs in those <unk> tokens, so figures are close to but not
comparable with published wikitext-2-raw numbers.
"""
from __future__ import annotations

import re
from pathlib import Path

from gptjax.eval.tasks.base import LoadedTask, RollingItem, assemble, hub_rows, read_text, task_file

FILE = "wikitext2/test.txt"
HUB = ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test")  # lm-eval's wikitext dataset


def is_title_line(line: str) -> bool:
    collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
    return collapsed.startswith("= ") and collapsed.endswith(" =")


def documents(text: str) -> list[str]:
    """The file split into documents at level-1 headings (each starting with its heading line)."""
    pages, lines = [], []
    for line in text.split("\n"):
        if is_title_line(line):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


# lm-eval's wikitext_detokenizer as ordered steps: (True, pattern, replacement) is a regex, False a plain replace.
DETOKENIZE_STEPS = (
    (False, "s '", "s'"), (True, r"/' [0-9]/", r"/'[0-9]/"),
    (False, " @-@ ", "-"), (False, " @,@ ", ","), (False, " @.@ ", "."),
    (False, " : ", ": "), (False, " ; ", "; "), (False, " . ", ". "), (False, " ! ", "! "), (False, " ? ", "? "),
    (False, " , ", ", "),
    (True, r"\(\s*([^\)]*?)\s*\)", r"(\1)"), (True, r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (True, r"{\s*([^}]*?)\s*}", r"{\1}"), (True, r"\"\s*([^\"]*?)\s*\"", r'"\1"'), (True, r"'\s*([^']*?)\s*'", r"'\1'"),
    (False, "= = = =", "===="), (False, "= = =", "==="), (False, "= =", "=="), (False, " \u00b0 ", "\u00b0"),
    (False, " \n", "\n"), (False, "\n ", "\n"), (False, " N ", " 1 "), (False, " 's", "'s"),
)


def detokenize(text: str) -> str:
    """lm-eval's wikitext_detokenizer: undo WikiText's spacing of punctuation, number separators and brackets."""
    for is_regex, old, new in DETOKENIZE_STEPS:
        text = re.sub(old, new, text) if is_regex else text.replace(old, new)
    return text


def page_items(pages: list[str], paths: list[Path], limit: int | None) -> LoadedTask:
    """The task over WikiText pages: each detokenized, its words and bytes counted before, as lm-eval does."""
    items = [RollingItem(i, detokenize(page), len(re.split(r"\s+", page)), len(page.encode("utf-8")))
             for i, page in enumerate(pages)]
    return assemble("wikitext2", "loglikelihood_rolling", ("word_perplexity", "byte_perplexity", "bits_per_byte"),
                    items, paths, 0, limit)


def load(data_dir: Path, shots: int, limit: int | None) -> LoadedTask:
    path = task_file("wikitext2", data_dir, FILE)
    return page_items(documents(read_text("wikitext2", path)), [path], limit)


def load_hub(shots: int, limit: int | None) -> LoadedTask:
    rows, paths = hub_rows("wikitext2", *HUB)
    pages = [row["page"] for row in rows if isinstance(row.get("page"), str)]
    return page_items(pages, paths, limit)
