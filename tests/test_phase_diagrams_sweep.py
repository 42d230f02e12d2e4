"""Sweeps end to end (SPEC §4): grid specs, the SQLite store, resume after SIGKILL, concurrent
runners, the serial / joblib / dask backends, figures from a store, export round trips and the
measured-vs-simulated comparison."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from nets import TrainConfig, train
from phase_diagrams import jobs
from phase_diagrams.cli import main
from phase_diagrams.comparison import compare, measured_cells, spearman
from phase_diagrams.runner import run_sweep, work_units
from phase_diagrams.simulated import simulate_for_spec
from phase_diagrams.spec import (
    SPEC_PRESETS,
    AxisSpec,
    SimSpec,
    SpecError,
    load_spec,
    preset_spec,
    spec_from_dict,
    spec_to_toml,
    task_key,
)
from phase_diagrams.store import Store

# A sweep of tiny networks on a Gaussian mixture: ~0.1 s per task.
TINY = {
    "name": "tiny",
    "seeds": [1],
    "ensemble_size": 1,
    "train": {"dataset": "gaussian", "n_train": 128, "image_size": 3, "depth": 2, "width": 8, "epochs": 40,
              "probe_every": 10},
    "rows": {"field": "alpha", "values": [0.0, 0.5, 1.0]},
    "columns": {"field": "label_noise", "values": [0.0, 0.2, 0.4, 0.6]},
    "simulator": {"n_chains": 8, "n_steps": 400, "record_every": 100},
}


def _toml(tmp_path, d=TINY, name="spec.toml"):
    path = tmp_path / name
    path.write_text(spec_to_toml(spec_from_dict(d)))
    return path


# ------------------------------------------------------------------------------------------
# specs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"bogus": 1}, r"unknown key 'bogus'"),
    ({"train": {"epochz": 3}}, r"unknown key train\.'epochz'"),
    ({"train": {"epochs": "ten"}}, r"train\.epochs: expected int, got str"),
    ({"train": {"lr": True}}, r"train\.lr: expected float, got bool"),
    ({"columns": {"field": "label_noise", "values": []}}, r"columns\.values=\[\]: empty label_noise axis"),
    ({"columns": {"field": "label_noise", "values": [0.1, 1.5]}}, r"columns\.values\[1\]=1\.5: .*label_noise=1\.5"),
    ({"rows": {"field": "alpha", "values": [0.0], "step": 1}}, r"unknown key rows\.'step'"),
    ({"rows": {"field": "alfa", "values": [0.0]}}, r"rows\.field: 'alfa' is not a TrainConfig field"),
    ({"seeds": []}, r"seeds=\[\]: empty"),
    ({"seeds": [1, 1]}, r"seeds=\[1, 1\]: repeated"),
    ({"ensemble_size": 0}, r"ensemble_size=0: must be an integer >= 1"),
    ({"preset": "labell-noise"}, r"preset: unknown preset 'labell-noise'"),
    ({"simulator": {"presets": ["scale-all"]}}, r"simulator\.presets\[0\]='scale-all': unknown friction preset"),
    ({"simulator": {"eps_map": "explicit", "eps": [0.1]}}, r"simulator\.eps: 1 values for 4 columns"),
    ({"simulator": {"eps_map": "cubic"}}, r"simulator\.eps_map='cubic': unknown"),
    ({"simulator": {"n_chains": 2.5}}, r"simulator\.n_chains: expected int, got float"),
])
def test_spec_errors_name_the_offending_entry(change, match):
    d = json.loads(json.dumps(TINY))
    for k, v in change.items():
        if isinstance(v, dict) and k in d and k not in ("rows", "columns"):
            d[k].update(v)
        else:
            d[k] = v
    with pytest.raises(SpecError, match=match):
        spec_from_dict(d)


@pytest.mark.parametrize("build, match", [
    (lambda g: dataclasses.replace(g, name=""), r"name='': must be a non-empty string"),
    (lambda g: dataclasses.replace(g, seeds=()), r"seeds=\[\]: empty"),
    (lambda g: dataclasses.replace(g, seeds=(2**64,)), r"seeds\[0\]=18446744073709551616: must be an integer"),
    (lambda g: dataclasses.replace(g, ensemble_size=0), r"ensemble_size=0"),
    (lambda g: dataclasses.replace(g, simulator=SimSpec(eps_map="bogus")), r"simulator\.eps_map='bogus'"),
    (lambda g: dataclasses.replace(g, simulator=SimSpec(n_chains=-3)), r"simulator\.n_chains=-3"),
    (lambda g: dataclasses.replace(g, simulator=SimSpec(mu_max=float("nan"))), r"simulator\.mu_max=nan"),
    (lambda g: dataclasses.replace(g, simulator=SimSpec(ratio=float("inf"))), r"simulator\.ratio=inf"),
    (lambda g: dataclasses.replace(g, simulator=SimSpec(eps_min=1e301, eps_max=1e300)), r"simulator\.eps_max"),
    (lambda g: dataclasses.replace(g, columns=AxisSpec("label_noise", (0.0, 2.0))), r"columns\.values\[1\]=2\.0"),
    (lambda g: dataclasses.replace(g, rows=AxisSpec("alpha", (0.0, 1.5))), r"rows\.values\[1\]=1\.5"),
    (lambda g: AxisSpec("alpha", ()), r"values=\[\]: empty alpha axis"),
    (lambda g: AxisSpec("seed", (1,)), r"field='seed': not a TrainConfig field that can be an axis"),
])
def test_spec_objects_validate_in_their_constructors(build, match):
    # GridSpec, SimSpec and AxisSpec check every entry themselves, not only when read from TOML
    with pytest.raises(SpecError, match=match):
        build(spec_from_dict(TINY))


def test_spec_files_presets_and_task_keys(tmp_path):
    spec = load_spec(_toml(tmp_path))
    assert spec == spec_from_dict(TINY) and spec.shape == (3, 4)
    for name in SPEC_PRESETS:  # every preset loads, round-trips through TOML, and has unique keys
        p = preset_spec(name)
        assert load_spec(_toml(tmp_path, p.to_dict(), f"{name}.toml")) == p
        keys = [t["key"] for t in p.tasks()]
        assert len(set(keys)) == len(keys) == p.shape[0] * p.shape[1] * len(p.seeds)
    lab = preset_spec("label-noise")
    assert lab.shape == (6, 8) and lab.train.epochs == 100 and lab.train.n_train == 2560
    assert preset_spec("learning-rate").train.epochs == 200
    # task keys: a stored result is found again only if its key never changes. Pinned value for the
    # original-protocol config (a change here orphans every stored result: bump it on purpose only)
    cfg = TrainConfig(alpha=0.2, label_noise=0.4, seed=3)
    assert task_key(cfg) == "8eea99988aae1d02894e"
    # the same config built another way (other field order, via replace) has the same key ...
    assert task_key(TrainConfig(seed=3, label_noise=0.4, alpha=0.2)) == task_key(TrainConfig().replace(
        alpha=0.2, seed=3, label_noise=0.4)) == task_key(cfg)
    # ... and every field that changes the training changes it (the subset included)
    for change in (dict(seed=4), dict(alpha=0.4), dict(subset="numpy"), dict(epochs=99), dict(lr=2e-3)):
        assert task_key(cfg.replace(**change)) != task_key(cfg), change
    # a file overriding a preset
    (tmp_path / "o.toml").write_text('preset = "label-noise"\nname = "mine"\n[columns]\nvalues = [0.0, 0.6]\n')
    o = load_spec(tmp_path / "o.toml")
    assert o.name == "mine" and o.columns.values == (0.0, 0.6) and o.columns.field == "label_noise"
    (tmp_path / "bad.toml").write_text("name = [\n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(SpecError, match="neither a spec file nor a preset"):
        load_spec(tmp_path / "missing.toml")


def test_noise_to_eps_mapping():
    spec = spec_from_dict(TINY)  # label noise 0 .. 0.6, rank map onto geomspace(0.01, 0.3)
    assert np.allclose(spec.column_eps(), np.geomspace(0.01, 0.3, 4))
    bs = preset_spec("batch-size")  # smaller batches are noisier: batch 5 gets eps_max
    eps = bs.column_eps()
    assert eps[0] == pytest.approx(0.3) and eps[-1] == pytest.approx(0.01) and np.all(np.diff(eps) < 0)
    assert list(bs.noise_rank()) == list(range(7, -1, -1))
    lin = spec_from_dict({**TINY, "simulator": {"eps_map": "linear", "eps_min": 0.0, "eps_max": 0.3}})
    assert np.allclose(lin.column_eps(), [0.0, 0.1, 0.2, 0.3])
    lr = preset_spec("learning-rate", simulator={"eps_map": "log"})
    e = lr.column_eps()  # log-linear in lr: lr 1e-3 sits at log(10)/log(5000) of the way
    assert e[0] == pytest.approx(0.01) and e[-1] == pytest.approx(0.3)
    assert e[2] == pytest.approx(0.01 + 0.29 * np.log(10) / np.log(5000))
    ex = spec_from_dict({**TINY, "simulator": {"eps_map": "explicit", "eps": [0.0, 0.1, 0.2, 0.25]}})
    assert list(ex.column_eps()) == [0.0, 0.1, 0.2, 0.25]


def test_work_units_batch_one_column():
    spec = preset_spec("label-noise")
    units = work_units(spec.tasks(), spec.ensemble_size)
    assert len(units) == 8 and all(len(u) == 6 for u in units)
    assert all(len({t["col"] for t in u}) == 1 for u in units)  # one column's six alphas
    bs = preset_spec("batch-size", ensemble_size=12)  # batch size cannot vary inside an ensemble
    assert all(len({t["config"].batch_size for t in u}) == 1 for u in work_units(bs.tasks(), 12))


# ------------------------------------------------------------------------------------------
# runner and store
# ------------------------------------------------------------------------------------------
def test_serial_sweep_resumes_and_keeps_stored_rows(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    r1 = run_sweep(store, TINY, backend="serial", progress=False, max_units=5)
    assert (r1.ran, r1.done, r1.already_done) == (5, 5, 0)
    first = store.runs("tiny").set_index("key")
    r2 = run_sweep(store, TINY, backend="serial", progress=False)
    assert (r2.already_done, r2.ran) == (5, 7)
    runs = store.runs("tiny").set_index("key")
    assert len(runs) == 12 and set(runs["status"]) == {"done"}
    assert (runs.loc[first.index, "finished_at"] == first["finished_at"]).all()  # untouched
    assert run_sweep(store, TINY, backend="serial", progress=False).ran == 0
    assert store.progress("tiny") == {"total": 12, "done": 12, "diverged": 0, "failed": 0, "running": 0,
                                      "pending": 0}
    # the stored numbers are those of training the task's config on its own, bit for bit (on the
    # worker's one thread: torch's reductions, and so SGD's chaotic amplification, depend on the
    # thread count — 0.6 % in log D at 2 threads here), probes every 10 epochs
    r = runs.iloc[0]
    cfg = {t["key"]: t["config"] for t in spec_from_dict(TINY).tasks()}[r.name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep worker ran it
    try:
        h = train(cfg)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(r["curve"], h.trajectory[-1])
    np.testing.assert_array_equal(r["loads"], -np.diff(h.trajectory[-1]))
    assert r["test_accuracy"] == h.test_accuracy
    assert r["probe_epochs"] == [0, 10, 20, 30, 40] and np.allclose(r["trajectory"][-1], r["curve"])
    with pytest.raises(ValueError, match="different sweep named 'tiny'"):
        run_sweep(store, {**TINY, "seeds": [2]}, backend="serial", progress=False)
    # a spec stored by an older version (a field added since is missing, default value) still resumes
    import sqlite3

    with sqlite3.connect(store.path) as con:
        text = con.execute("SELECT spec_toml FROM sweeps WHERE name = 'tiny'").fetchone()[0]
        assert "record_every = 100\n" in text
        con.execute("UPDATE sweeps SET spec_toml = ? WHERE name = 'tiny'", (text.replace("record_every = 100\n", ""),))
    assert run_sweep(store, TINY, backend="serial", progress=False).ran == 0
    # ... and one with a key renamed since (simulator.pin, now pin_fraction) reads as the same spec
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE sweeps SET spec_toml = ? WHERE name = 'tiny'",
                    (text.replace("pin_fraction = 0.5\n", "pin = 0.5\n"),))
    assert store.sweep_spec("tiny") == spec_from_dict(TINY)
    assert run_sweep(store, TINY, backend="serial", progress=False).ran == 0


def test_failed_and_diverged_tasks_are_recorded(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    bad = {**TINY, "name": "bad", "train": {**TINY["train"], "dataset": "npz",
                                               "data_root": str(tmp_path / "nope.npz")}}
    rep = run_sweep(store, bad, backend="serial", progress=False)
    assert rep.failed == 12 and rep.done == 0
    runs = store.runs("bad")
    assert set(runs["status"]) == {"failed"} and runs["error"].str.contains("nope.npz").all()
    assert run_sweep(store, bad, backend="serial", progress=False).ran == 12  # failed tasks run again
    with pytest.raises(RuntimeError, match=r"(?s)every one of the 12 tasks failed.*nope\.npz"):
        jobs.run_main(store, bad, tmp_path / "fig", backend="serial", progress=False, simulate=False)
    boom = {**TINY, "name": "boom", "columns": {"field": "lr", "values": [1e-3, 1e9]},
            "train": {**TINY["train"], "optimizer": "sgd", "loss": "mse"}}
    rep = run_sweep(store, boom, backend="serial", progress=False)
    runs = store.runs("boom")
    assert rep.diverged == 3 and set(runs.loc[runs["col"] == 1, "status"]) == {"diverged"}
    assert set(runs.loc[runs["col"] == 0, "status"]) == {"done"}
    assert run_sweep(store, boom, backend="serial", progress=False).ran == 0  # diverged is final
    cells = measured_cells(runs, load_spec(boom))
    assert set(cells.loc[cells["col"] == 1, "regime"]) == {"diverged"}


def _sweep_cmd(spec_path, store_path, *extra):
    return [sys.executable, "-m", "phase_diagrams", "sweep", str(spec_path), "--store", str(store_path),
            "--backend", "serial", "--no-simulate", "--no-progress", *extra]


def test_sigkilled_sweep_resumes_without_loss(tmp_path):
    # A deterministic kill point, whatever the machine's speed: the second column reads its data
    # from a FIFO, so the serial runner (column by column) commits the first column's 3 tasks and
    # then blocks opening the FIFO until it is killed.
    from nets.data import gaussian_mixture

    good, fifo = tmp_path / "good.npz", tmp_path / "late.npz"
    np.savez(good, **gaussian_mixture(128, 100, dim=9, seed=0))
    os.mkfifo(fifo)
    spec = {**TINY, "train": {**TINY["train"], "dataset": "npz", "image_size": "none"},
            "rows": {"field": "alpha", "values": [0.0, 0.5, 1.0]},
            "columns": {"field": "data_root", "values": [str(good), str(fifo)]},
            "simulator": {**TINY["simulator"], "presets": []}}
    path, db = _toml(tmp_path, spec), tmp_path / "k.sqlite"
    store = Store(db)
    proc = subprocess.Popen(_sweep_cmd(path, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a safety net only: the runner blocks on the FIFO
    while time.monotonic() < deadline and proc.poll() is None:
        if "tiny" in store.sweeps() and store.progress("tiny")["done"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # blocked on the FIFO, not finished or dead
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store.integrity_check() == "ok"
    before = store.runs("tiny")
    assert len(before) == 3 and set(before["data_root"]) == {str(good)}
    assert store.live_claims() == set()  # the dead runner's claim is stale
    fifo.unlink()
    shutil.copy(good, fifo)  # the second column's data, now readable
    rep = run_sweep(store, load_spec(path), backend="serial", progress=False)
    assert rep.already_done == 3 and rep.ran == 3
    after = store.runs("tiny")
    assert len(after) == 6 and after["key"].is_unique and set(after["status"]) == {"done"}
    merged = before.merge(after, on="key", suffixes=("_a", "_b"))
    assert (merged["finished_at_a"] == merged["finished_at_b"]).all()


def test_two_runners_share_a_store_without_duplicates(tmp_path):
    spec = {**TINY, "train": {**TINY["train"], "epochs": 100}}
    path, db = _toml(tmp_path, spec), tmp_path / "two.sqlite"
    Store(db).register_sweep(load_spec(path))
    procs = [subprocess.Popen(_sweep_cmd(path, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = [int(o[0].split(" ran ")[1].split()[0]) for o in outs]
    # nothing trained twice, nothing lost; how the 12 tasks split between the two runners depends
    # on their start-up times (one may take them all), so it is not asserted
    assert sum(ran) == 12, outs
    store = Store(db)
    runs = store.runs("tiny")
    assert len(runs) == 12 and runs["key"].is_unique and store.integrity_check() == "ok"


@pytest.mark.parametrize("backend", ["joblib", "dask"])
def test_parallel_backends_equal_serial(tmp_path, backend):
    spec = load_spec({**TINY, "ensemble_size": 3})
    ref = Store(tmp_path / "serial.sqlite")
    run_sweep(ref, spec, backend="serial", progress=False)
    other = Store(tmp_path / f"{backend}.sqlite")
    rep = run_sweep(other, spec, backend=backend, workers=2, progress=False)
    assert rep.ran == 12 and rep.done == 12
    a, b = ref.runs("tiny").set_index("key"), other.runs("tiny").set_index("key")
    b = b.loc[a.index]
    assert (a["test_accuracy"] == b["test_accuracy"]).all()
    np.testing.assert_allclose(np.stack(a["curve"]), np.stack(b["curve"]), rtol=1e-9)


# ------------------------------------------------------------------------------------------
# figures, export, comparison, CLI
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    d = tmp_path_factory.mktemp("stored")
    store = Store(d / "runs.sqlite")
    spec = load_spec({**TINY, "seeds": [1, 2], "ensemble_size": 6})
    run_sweep(store, spec, backend="serial", progress=False)
    simulate_for_spec(store, spec, presets=("scale-both", "vary-forward"))
    return store, spec, d


def test_measured_cells_average_the_seeds(stored):
    store, spec, _ = stored
    runs = store.runs("tiny")
    cells = measured_cells(runs, spec)
    assert len(cells) == 12 and (cells["n_runs"] == 2).all()
    c = cells.iloc[5]
    sub = runs[(runs["row"] == c["row"]) & (runs["col"] == c["col"])]
    np.testing.assert_allclose(c["curve"], np.mean(np.stack(sub["curve"]), axis=0), rtol=1e-12)
    assert c["accuracy"] == pytest.approx(sub["test_accuracy"].mean())
    # known curves: seed s has log D_l = 5 - s * l^2 (L = 3 hidden layers), loads d_l = s (2l - 1),
    # so the mean curve has loads 1.5 (2l - 1), c = d_1 - d_L = 1.5 (2 - 2L) = -6, Σd = 1.5 L^2 = 13.5
    # and c/Σd = -4/9 < -0.1: concave (deep layers learn more; SPEC §1)
    known = runs.copy()
    known["curve"] = [list(5.0 - s * np.arange(4.0) ** 2) for s in known["seed"]]
    k = measured_cells(known, spec).iloc[0]
    assert k["curvature"] == pytest.approx(-6.0, rel=1e-12)
    assert k["normalized_curvature"] == pytest.approx(-6.0 / 13.5, rel=1e-12)
    assert k["regime"] == "concave"


def test_plots_from_a_stored_sweep(stored, tmp_path):
    store, _, _ = stored
    paths = jobs.plot_all(store, "tiny", tmp_path / "fig")
    names = {p.name for p in paths}
    for stem in ("tiny_measured", "tiny_measured_curvature", "tiny_accuracy_vs_linearity",
                 "tiny_side_by_side_vary-forward", "tiny_simulated_scale-both", "tiny_comparison",
                 "tiny_trajectories"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    with pytest.raises(ValueError, match=r"cell \(9, 9\)"):
        jobs.plot_all(store, "tiny", tmp_path / "fig", cell=(9, 9))
    # a saved figure is an image of the size asked for (figure inches x 130 dpi)
    import matplotlib.image

    from phase_diagrams.plots import plot_measured_grid

    cells = measured_cells(store.runs("tiny"), spec_from_dict(TINY))
    w, h = plot_measured_grid(cells).get_size_inches()
    img = matplotlib.image.imread(tmp_path / "fig" / "tiny_measured.png")
    assert img.shape[:2] == (round(h * 130), round(w * 130)) and img[..., :3].std() > 0.05


def test_grid_figures_draw_the_table(stored):
    # plots only read tables: every cell draws the normalised mean curve of its row in the table,
    # shaded by its accuracy (darker = more accurate), with rows alpha-ascending top to bottom and
    # the noisiest column on the left; the comparison's titles carry the summary's numbers
    from phase_diagrams.comparison import simulated_cells
    from phase_diagrams.plots import plot_comparison, plot_measured_grid
    from springblock.observables import normalized_curve

    store, spec, _ = stored
    cells = measured_cells(store.runs("tiny"), spec)
    fig = plot_measured_grid(cells)
    grid_axes = [ax for ax in fig.axes if ax.lines]
    assert len(grid_axes) == len(cells)
    order = cells.sort_values(["row_value", "noise_rank"], ascending=[True, False])
    n_cols = spec.shape[1]
    lum = []
    for k, (_, c) in enumerate(order.iterrows()):
        ax = grid_axes[k]
        line = ax.lines[-1]
        np.testing.assert_allclose(line.get_ydata(), normalized_curve(np.asarray(c["curve"])), rtol=1e-12)
        assert ax.get_subplotspec().rowspan.start == k // n_cols and ax.get_subplotspec().colspan.start == k % n_cols
        lum.append((c["accuracy"], np.mean(ax.get_facecolor()[:3])))
    acc, shade = np.array(lum).T
    assert spearman(acc, -shade) > 0.99  # more accurate = darker background
    sim = store.simulated("tiny")
    per_cell, summary = compare(cells, sim, spec)
    cfig = plot_comparison(per_cell, summary)
    for ax, (_, s) in zip(cfig.axes, summary.iterrows(), strict=False):
        assert f"agree {s['regime_agreement']:.0%}" in ax.get_title()
    assert simulated_cells(sim, spec, "scale-both")["eps"].notna().all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_export_round_trip(stored, tmp_path, suffix):
    store, _, _ = stored
    ref = store.runs("tiny")
    back = jobs.read_export(jobs.export(store, tmp_path / f"runs{suffix}", sweep="tiny"))
    assert list(back["key"]) == list(ref["key"]) and list(back["status"]) == list(ref["status"])
    np.testing.assert_allclose(np.stack(back["curve"]), np.stack(ref["curve"]), rtol=1e-15)
    np.testing.assert_allclose(np.stack(back["trajectory"].map(np.asarray)),
                               np.stack(ref["trajectory"].map(np.asarray)))
    np.testing.assert_allclose(back["test_accuracy"], ref["test_accuracy"])
    sim = jobs.read_export(jobs.export(store, tmp_path / f"sim{suffix}", simulated=True))
    assert len(sim) == 2 * 12 and np.allclose(np.stack(sim["curve"]), np.stack(store.simulated()["curve"]))


def test_comparison_counts_agreement_and_rank_correlation(stored):
    _, spec, _ = stored
    # hand-made tables: 12 cells; the simulated c is a monotone map of the measured one except
    # in one pair of cells, and the regimes agree in 9 cells of 12
    rng = np.random.default_rng(0)
    mc = rng.normal(size=12)
    sc = 3 * mc + 1
    sc[[0, 1]] = sc[[1, 0]]
    labels = np.where(mc < -0.3, "concave", np.where(mc > 0.3, "convex", "linear"))
    sim_labels = labels.copy()
    sim_labels[:3] = "undefined"
    cells = [dict(row=i, col=j, row_value=r, col_value=c) for i, j, r, c in spec.cells()]
    measured = pd.DataFrame([dict(cell, noise_rank=cell["col"], curvature=mc[n], normalized_curvature=mc[n],
                                  regime=labels[n]) for n, cell in enumerate(cells)])
    sim = pd.DataFrame([dict(cell, preset="p", alpha=cell["row_value"], eps=0.1, curvature=sc[n],
                             normalized_curvature=sc[n], regime=sim_labels[n]) for n, cell in enumerate(cells)])
    per_cell, summary = compare(measured, sim, spec)
    s = summary.iloc[0]
    assert s["regime_agreement"] == pytest.approx(9 / 12)
    from scipy import stats

    assert s["spearman_c"] == pytest.approx(stats.spearmanr(mc, sc).statistic)
    assert per_cell["agree"].sum() == 9
    assert spearman([1, 2, np.nan, 4], [2, 4, 5, 8]) == pytest.approx(1.0)


def test_cli_commands(stored, tmp_path, capsys):
    store, _, d = stored
    db = str(store.path)
    assert main(["status", "--store", db]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and " 24 " in out
    assert main(["compare", "--store", db, "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "vary-forward" in out and "regime_agreement" in out
    assert len(pd.read_csv(tmp_path / "c.csv")) == 24
    assert main(["export", "--store", db, "--out", str(tmp_path / "e.csv")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "e.csv")
    assert main(["spec", "label-noise"]) == 0
    assert load_spec(spec_from_dict(__import__("tomllib").loads(capsys.readouterr().out))) == \
        preset_spec("label-noise")
    assert main(["sweep", "nope-preset", "--store", db]) == 2
    assert "neither a spec file nor a preset" in capsys.readouterr().err
    assert main(["compare", "--store", db, "--sweep", "other"]) == 2
    assert "no sweep 'other'" in capsys.readouterr().err
    assert main(["export", "--store", db, "--out", str(tmp_path / "e.xlsx")]) == 2


def test_a_store_of_the_old_subset_never_mixes_with_the_original_subset(tmp_path):
    # a sweep registered before `subset` existed was trained on the NumPy subset: its stored spec
    # lacks the field. Resuming it with today's default (the original subset) must not add tasks of
    # another subset to it; naming subset = "numpy" resumes it.
    import sqlite3

    spec = preset_spec("smoke")
    store = Store(tmp_path / "s.sqlite")
    old = spec_from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "subset": "numpy"}})
    store.register_sweep(old)
    text = spec_to_toml(old).replace('subset = "numpy"\n', "")
    assert "subset =" not in text
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE sweeps SET spec_toml = ? WHERE name = ?", (text, old.name))
    assert store.sweep_spec(old.name).train.subset == "numpy"
    with pytest.raises(ValueError, match="'numpy' training subset.*subset = 'numpy'"):
        store.register_sweep(spec)
    store.register_sweep(old)  # the old subset, named: resumes
    assert {task_key(t["config"]) for t in old.tasks()} & {task_key(t["config"]) for t in spec.tasks()} == set()


def test_seed_ceiling_counts_each_seed_against_the_others_mean():
    from phase_diagrams.comparison import seed_ceiling

    def curve(nc_target):  # 3 loads d = (1 + x, 1, 1 - x): c / sum(d) = 2x / 3
        x = 1.5 * nc_target
        return np.concatenate([[0.0], -np.cumsum([1 + x, 1.0, 1 - x])]).tolist()

    # cell 0: every seed convex; cell 1: seed 3 concave, seeds 1-2 linear; cell 2: all concave
    ncs = {0: (0.3, 0.35, 0.4), 1: (0.0, 0.02, -0.5), 2: (-0.3, -0.3, -0.3)}
    runs = pd.DataFrame([dict(row=0, col=c, row_value=0.0, col_value=c, seed=s + 1, curve=curve(v[s]))
                         for c, v in ncs.items() for s in range(3)])
    per_cell, per_seed = seed_ceiling(runs)
    # seed 3 vs mean of seeds 1-2 in cell 1: linear (nc 0.01) vs concave -> 2 of 3 cells agree;
    # seeds 1 and 2 vs the others' mean in cell 1: nc -0.25 / -0.24 (concave) vs linear -> 2 of 3
    assert per_seed["regime_agreement"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert per_cell["seeds_agree"].tolist() == [True, False, True]
    assert per_cell["nc_sd"].iloc[2] == pytest.approx(0.0, abs=1e-12)
    assert per_cell["near_threshold"].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="needs >= 2 seeds"):
        seed_ceiling(runs[runs["seed"] == 1])
