"""Progress by phase (vrcurve.progress): the phases of a run come in order, each counts up to its total, and
following a run changes nothing in what it writes."""

import threading

import numpy as np
import pytest
from artifacts import estimate_with
from safetensors.numpy import load_file

from vrcurve.progress import Counter, Update, within
from vrcurve.readers import open_source
from vrcurve.samples import load_samples
from vrcurve.schedulers import get_scheduler

Image = pytest.importorskip("PIL.Image")


def phases(updates):
    """The run's phases in order, [(phase, where, unit, [done...], [total...])], one per change of phase or part."""
    out = []
    for u in updates:
        if not out or out[-1][:3] != (u.phase, u.where, u.unit):
            out.append((u.phase, u.where, u.unit, [], []))
        out[-1][3].append(u.done)
        out[-1][4].append(u.total)
    return out


def check_counts(runs):
    """Every phase starts at 0, never goes back, and ends with all its work done."""
    for phase, where, _unit, done, totals in runs:
        assert done[0] == 0, (phase, where)
        assert all(b >= a for a, b in zip(done, done[1:])), (phase, where, done)
        assert all(b >= a for a, b in zip(totals, totals[1:])), (phase, where, totals)
        assert done[-1] == totals[-1], (phase, where, done[-1], totals[-1])


def _images(folder, sizes, seed=0):
    """RGB PNGs of the given (height, width), in file order."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


KW = dict(noise=4, timesteps=20, seed=1, precision="float32")


# --- the interface -----------------------------------------------------------------------------------------


def test_a_counter_without_reporter_counts_nothing():
    c = Counter(None, "reading", 10, "samples")
    c.add(3, more=2)
    assert c.steps == 0 and c.total == 10


def test_a_counter_reports_its_phase_at_zero_and_whole_units_at_the_end():
    updates = []
    c = Counter(updates.append, "estimating", 7, "timesteps", where="bucket 1/2 3x8x8", per=3)
    for _ in range(7 * 3):
        c.add()
    assert updates[0] == Update("estimating", 0, 7, "timesteps", "bucket 1/2 3x8x8")
    assert updates[-1].done == 7  # exact: the raw steps are counted, and divided once
    assert len(updates) == 1 + 21


def test_device_threads_sharing_a_counter_report_in_order():
    updates = []
    c = Counter(updates.append, "estimating", 8, "timesteps", per=250)
    threads = [threading.Thread(target=lambda: [c.add(1) for _ in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [u.done for u in updates]
    assert done == sorted(done) and done[-1] == 8 and len(done) == 1 + 2000


def test_within_names_the_part_and_can_rename_the_phase():
    updates = []
    inner = within(within(updates.append, "50 of 200 samples", phase="convergence"), "bucket 2/3 4x64x64")
    inner(Update("estimating", 3, 10, "timesteps"))
    assert updates == [Update("convergence", 3, 10, "timesteps", "50 of 200 samples, bucket 2/3 4x64x64")]
    assert within(None, "bucket 1/2 3x8x8") is None


# --- whole runs ----------------------------------------------------------------------------------------------


def test_an_array_run_reads_estimates_bootstraps_and_checks_convergence_in_order(tiny_npy, tmp_path):
    updates = []
    result = estimate_with(str(tiny_npy), tmp_path / "a.safetensors", get_scheduler("linear"), samples=16,
                          bootstrap=10, check_convergence=True, progress=updates.append, **KW)
    runs = phases(updates)
    sizes = [r.samples for r in result.convergence.rows[:-1]]
    assert sizes == [4, 8]
    assert [r[:3] for r in runs] == [
        ("reading", "", "samples"), ("estimating", "", "timesteps"), ("bootstrap", "", "replicates"),
        ("convergence", "4 of 16 samples", "timesteps"), ("convergence", "8 of 16 samples", "timesteps"),
    ]
    assert [r[4][-1] for r in runs] == [16, 20, 10, 20, 20]
    check_counts(runs)


def test_following_a_run_changes_nothing_it_writes(tiny_npy, tmp_path):
    common = dict(samples=16, bootstrap=10, check_convergence=True, **KW)
    estimate_with(str(tiny_npy), tmp_path / "quiet.safetensors", get_scheduler("linear"), **common)
    estimate_with(str(tiny_npy), tmp_path / "followed.safetensors", get_scheduler("linear"),
                 progress=lambda update: None, **common)
    quiet, followed = load_file(tmp_path / "quiet.safetensors"), load_file(tmp_path / "followed.safetensors")
    assert sorted(quiet) == sorted(followed)
    for name in quiet:
        np.testing.assert_array_equal(quiet[name], followed[name], err_msg=name)


def test_an_array_read_in_parts_gives_the_samples_of_one_read(tiny_npy, monkeypatch):
    from vrcurve.readers import base

    whole = load_samples(open_source(str(tiny_npy)), 16, 2)
    monkeypatch.setattr(base, "READ_BATCH_BYTES", 5 * 4 * 3 * 4 * 4)  # five samples of 3 x 4 x 4 float32
    updates = []
    parts = load_samples(open_source(str(tiny_npy)), 16, 2, progress=updates.append)
    assert [u.done for u in updates] == [0, 5, 10, 15, 16]
    np.testing.assert_array_equal(parts.x, whole.x)
    assert parts.fingerprint == whole.fingerprint


def test_an_image_folder_counts_images_and_the_replacements_of_skipped_files(tmp_path):
    folder = _images(tmp_path / "imgs", [(8, 8)] * 14)
    for name in ("002.png", "009.png"):
        (folder / name).write_bytes(b"not a png")
    updates = []
    chosen = load_samples(open_source(str(folder), skip_bad=True), 12, 0, progress=updates.append)
    runs = phases(updates)
    assert [r[:3] for r in runs] == [("reading", "", "images")]
    check_counts(runs)
    # one more image read for every image skipped: the total grows from M as replacements are drawn
    assert len(chosen.skipped) > 0 and runs[0][4][0] == 12 and runs[0][4][-1] == 12 + len(chosen.skipped)
    # one count per image read (the replacements are announced before they are read)
    assert list(dict.fromkeys(runs[0][3])) == list(range(0, 12 + len(chosen.skipped) + 1))


def test_buckets_are_named_in_every_phase(tmp_path):
    folder = _images(tmp_path / "two_sizes", [(8, 8) if i % 2 else (8, 12) for i in range(22)])
    updates = []
    result = estimate_with(str(folder), tmp_path / "b.safetensors", get_scheduler("linear"), samples=None,
                          bootstrap=5, check_convergence=True, min_bucket=8, progress=updates.append, **KW)
    runs = phases(updates)
    names = [f"bucket {b + 1}/2 {'x'.join(map(str, r.shape))}" for b, r in enumerate(result.buckets)]
    assert names == ["bucket 1/2 3x8x8", "bucket 2/2 3x8x12"]  # 11 each: the smaller shape first
    subsets = [f"{r.samples} of 22 samples" for r in result.convergence.rows[:-1]]
    assert [r[:3] for r in runs] == [
        ("reading", "", "images"),
        ("estimating", names[0], "timesteps"), ("bootstrap", names[0], "replicates"),
        ("estimating", names[1], "timesteps"), ("bootstrap", names[1], "replicates"),
        ("bootstrap", "all buckets", "replicates"),
        *[("convergence", f"{s}, {n}", "timesteps") for s in subsets for n in names],
    ]
    assert runs[0][4][-1] == 22
    assert all(r[4][-1] == (5 if r[0] == "bootstrap" else 20) for r in runs[1:])
    check_counts(runs)


def test_images_through_a_vae_are_counted_as_encoding_a_batch_at_a_time(tmp_path):
    pytest.importorskip("diffusers")
    from test_vae import tiny_autoencoder

    vae = tmp_path / "tiny-vae"
    tiny_autoencoder().save_pretrained(vae)
    folder = _images(tmp_path / "imgs", [(10, 12)] * 12)
    updates = []
    estimate_with(str(folder), tmp_path / "v.safetensors", get_scheduler("linear"), samples=10, bootstrap=0,
                 vae=str(vae), vae_batch_size=4, resolution=8, normalization="none", progress=updates.append, **KW)
    runs = phases(updates)
    assert [r[:3] for r in runs] == [("encoding", "", "images"), ("estimating", "", "timesteps")]
    assert runs[0][3] == [0, 4, 8, 10] and runs[0][4][-1] == 10
    check_counts(runs)


# --- the CLI's bar -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update, text", [
    (Update("reading", 3, 200, "images"), "reading"),
    (Update("estimating", 2.5, 1000, "timesteps", "bucket 2/3 4x64x64"), "estimating bucket 2/3 4x64x64"),
    (Update("convergence", 0, 1000, "timesteps", "50 of 200 samples"), "convergence 50 of 200 samples"),
])
def test_the_bar_says_the_phase_and_the_part(update, text):
    from vrcurve.cli import _progress_description

    assert _progress_description(update) == text


def test_the_bar_starts_afresh_for_each_phase(monkeypatch):
    import io
    import sys

    from rich.console import Console

    from vrcurve import cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(cli, "err", Console(file=stream, force_terminal=True, width=160))
    bar, report = cli._progress_reporter(True)
    shown = []
    with bar:
        for update in (Update("encoding", 4, 12, "images"),
                       Update("estimating", 250.0, 1000, "timesteps", "bucket 1/2 4x64x64"),
                       Update("bootstrap", 20, 200, "replicates")):
            start = len(stream.getvalue())
            report(update)
            bar.refresh()
            shown.append(stream.getvalue()[start:])
    assert "encoding" in shown[0] and "4/12 images" in shown[0]
    assert "estimating bucket 1/2 4x64x64" in shown[1] and "250/1,000 timesteps" in shown[1]
    assert "bootstrap" in shown[2] and "20/200 replicates" in shown[2] and "eta" in shown[2]
