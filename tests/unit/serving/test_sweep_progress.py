"""The sweep's progress lines: written by the vLLM child, read by the caller while it runs."""

from __future__ import annotations

from serving.vllm_plugin.harness.progress import PROGRESS_ENV, ProgressReader, SweepProgress


def test_progress_lines_reach_the_reader_once_each_and_only_whole(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"stale": true}\n')  # a former run's file is not read
    reader = ProgressReader(path)
    assert not path.exists() and reader.new() == []
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    progress = SweepProgress(total=3)
    progress.measured(batch_size=1, arm="k2", repeat=-1)
    progress.measured(batch_size=4, arm="k2", repeat=0, tokens_per_s=71.5)
    assert reader.new() == [
        {"done": 1, "total": 3, "batch_size": 1, "arm": "k2", "repeat": -1},
        {"done": 2, "total": 3, "batch_size": 4, "arm": "k2", "repeat": 0, "tokens_per_s": 71.5},
    ]
    with path.open("a") as f:
        f.write('{"done": 3, "tot')  # the child is still writing this line
    assert reader.new() == []
    with path.open("a") as f:
        f.write('al": 3}\n')
    assert reader.new() == [{"done": 3, "total": 3}]


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    progress = SweepProgress(total=2)
    progress.measured(batch_size=1)
    assert progress.done == 1 and list(tmp_path.iterdir()) == []


def test_a_progress_line_is_described_with_its_arm_or_the_one_given():
    from serving.vllm_plugin.harness.progress import describe

    warm = {"done": 1, "total": 12, "batch_size": 4, "arm": "k2", "repeat": -1}
    timed = {"done": 7, "total": 12, "batch_size": 1, "tokens_per_s": 20.5}
    assert describe(warm) == "[1/12] b=4 k2 (warm-up)"
    assert describe(timed) == "[7/12] b=1: 20.5 tok/s"  # a burst line names no arm
    assert describe(timed, "k=3") == "[7/12] b=1 k=3: 20.5 tok/s"
