"""Output capture stays bounded in memory whatever a command prints (issue 14 item 11)."""

from __future__ import annotations

import sys

from projecthub.project.execution.capture import OutputBudget, StreamCapture, cost

EMOJI = "\U0001F600"


def test_emoji_are_capped_by_bytes_not_just_characters() -> None:
    cap = StreamCapture(16 * 2**20, cap_bytes=1 << 20, budget=OutputBudget(64 << 20))
    chunk = (EMOJI * 16384).encode()            # 64 KiB per read, as the pipe delivers
    for _ in range(200):                         # 12.8 MB printed
        cap.feed(chunk)
    cap.close()
    text = cap.text()
    assert cap.truncated and cap.memory_truncated
    assert cap.total_bytes == 200 * len(chunk)
    assert sys.getsizeof(text) <= (1 << 20) + 100
    assert set(text) == {EMOJI}                  # the cut falls between characters


def test_one_wide_character_makes_the_whole_text_wide() -> None:
    """An ASCII flood with one emoji: the joined str is 4 bytes a character."""
    cap = StreamCapture(16 * 2**20, cap_bytes=1 << 20, budget=OutputBudget(64 << 20))
    cap.feed(EMOJI.encode())
    for _ in range(100):
        cap.feed(b"a" * 65536)
    assert sys.getsizeof(cap.text()) <= (1 << 20) + 100


def test_a_character_split_across_reads_and_at_the_cap_is_never_broken() -> None:
    data = ("é" + EMOJI) * 1000
    raw = data.encode()
    cap = StreamCapture(len(data), budget=OutputBudget())
    for i in range(0, len(raw), 3):              # every multi-byte character is split
        cap.feed(raw[i:i + 3])
    cap.close()
    assert cap.text() == data and not cap.truncated


def test_control_characters_count_with_their_json_escapes() -> None:
    cap = StreamCapture(10**9, cap_bytes=60_000, budget=OutputBudget())
    cap.feed(b"\x00" * 65536)
    assert cap.memory_truncated
    assert cost(len(cap.text()), len(cap.text()), 1) <= 60_000


def test_concurrent_captures_share_one_daemon_budget_and_give_it_back() -> None:
    budget = OutputBudget(4 << 20)
    caps = [StreamCapture(10**9, cap_bytes=8 << 20, budget=budget) for _ in range(10)]
    for _ in range(64):
        for cap in caps:
            cap.feed(b"x" * 65536)                # 10 x 4 MiB printed against a 4 MiB budget
    guaranteed = 256 << 10   # every stream keeps its first 256 KiB whatever the budget says
    assert budget.used <= (4 << 20) + 10 * guaranteed
    assert sum(cap.kept_chars for cap in caps) <= (4 << 20) + 10 * guaranteed
    assert all(cap.total_bytes == 4 << 20 for cap in caps)
    for cap in caps:
        cap.settle()
    assert budget.used == 0
    fresh = StreamCapture(10**9, cap_bytes=8 << 20, budget=budget)
    fresh.feed(b"y" * 1000)
    assert fresh.text() == "y" * 1000 and not fresh.truncated


def test_a_spent_budget_still_leaves_every_stream_its_first_256_kib() -> None:
    budget = OutputBudget(1 << 20)
    hog = StreamCapture(10**9, cap_bytes=8 << 20, budget=budget)
    for _ in range(32):
        hog.feed(b"h" * 65536)
    assert budget.available() == 0
    quick = StreamCapture(10**9, cap_bytes=8 << 20, budget=budget)
    quick.feed(b"q" * 100_000)
    assert quick.text() == "q" * 100_000 and not quick.truncated


def test_cocalc_character_cap_is_unchanged() -> None:
    cap = StreamCapture(3, budget=OutputBudget())
    cap.feed(b"xyz abc")
    assert cap.text() == "xyz" and cap.truncated and not cap.memory_truncated


def test_a_spill_that_hits_a_full_disk_says_so_and_keeps_counting() -> None:
    """An async job's output file on a full project disk: the capture records why and
    where it stopped (the job's record shows it as stdout_error) instead of raising in
    the reader callback or ending short in silence.  /dev/full answers ENOSPC for real."""
    import os
    cap = StreamCapture(1024, budget=OutputBudget(64 << 20))
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        cap.start_spill(fd)
        cap.feed(b"x" * 5000)
        cap.feed(b"y" * 5000)
    finally:
        os.close(fd)
    assert cap.total_bytes == 10000
    assert cap.spill_error is not None and "disk is full" in cap.spill_error
    assert cap.spilled_bytes == 0 and "after byte 0" in cap.spill_error
