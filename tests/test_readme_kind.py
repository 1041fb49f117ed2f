"""The README's example kind is real code: it imports, validates, and counts."""

import os
import re
import sys
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def wordcount():
    source = re.search(r"```python\n(# wordcount/kinds.py.*?)```", README.read_text(), re.S)[1]
    module = types.ModuleType("wordcount_kinds")
    exec(compile(source, "README.md", "exec"), module.__dict__)
    sys.modules["wordcount_kinds"] = module
    yield module
    del sys.modules["wordcount_kinds"]


class InlineFanOut:
    """Runs partitions here, one after another: the part the cluster does is tested elsewhere
    (tests/integration/test_fanout_live.py); this checks the README's own code."""

    def __init__(self, kinds):
        self.kinds = {kind.name: kind for kind in kinds}
        self.metrics = {}

    def fan_out(self, name, partitions):
        kind = self.kinds[name]
        return [kind.run(self, kind.params.model_validate(p)) for p in partitions]

    def metric(self, name, value, step=None):
        self.metrics[name] = value


def test_the_readme_kind_counts_words_across_its_partitions(wordcount):
    root = Path(os.environ["DATA_ROOT"]) / "books"
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("one two three\nfour\n", encoding="utf-8")
    (root / "b.txt").write_text("five six\n", encoding="utf-8")
    kinds = {kind.name: kind for kind in wordcount.KINDS}
    assert kinds["wordcount.book"].internal and not kinds["wordcount"].internal
    ctx = InlineFanOut(wordcount.KINDS)
    params = kinds["wordcount"].params.model_validate({"files": "books/*.txt"})
    assert kinds["wordcount"].run(ctx, params) == {"books": 2, "words": 6}
    assert ctx.metrics == {"words": 6}
    with pytest.raises(ValidationError):
        kinds["wordcount"].params.model_validate({"files": "../etc/*"})
